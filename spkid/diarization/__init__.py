"""Diarization (who spoke when): ``spkid.diarize(path)`` and ``spkid diarize``; scoring in ``evaluate``."""
from spkid.diarization.batch import diarize
from spkid.diarization.pipeline import DiarizeConfig
from spkid.diarization.rttm import Segment

__all__ = ["DiarizeConfig", "Segment", "diarize"]
