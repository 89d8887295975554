"""Model parts and their registries. Importing this package registers every encoder, attention, pooling and head.

``ENCODERS``, ``ATTENTION``, ``POOLING``, ``HEADS``: name -> builder (``spkid.models.registry``);
``build_model(cfg, n_speakers)`` assembles a ``SpeakerNet``.
"""
from spkid.models import attention, conformer, ecapa, heads, pooling, tdnn, transformer  # noqa: F401  (registration)
from spkid.models.registry import ATTENTION, ENCODERS, HEADS, POOLING
from spkid.models.speaker_net import SpeakerNet, build_model

__all__ = ["ATTENTION", "ENCODERS", "HEADS", "POOLING", "SpeakerNet", "build_model"]
