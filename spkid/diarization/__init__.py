"""Diarization (who spoke when): ``spkid.diarize(path)`` and ``spkid diarize``; scoring in ``evaluate``."""
from spkid.diarization.pipeline import DiarizeConfig, diarize
from spkid.diarization.rttm import Segment

__all__ = ["DiarizeConfig", "Segment", "diarize"]
