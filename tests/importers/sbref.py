"""SpeechBrain as a test-only reference: its ``torchaudio`` import is stood in for by an empty module (no wheel for
this torch; the ECAPA-TDNN, Fbank and InputNormalization code paths never call it)."""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest


def speechbrain():
    """Import SpeechBrain's reference classes, or skip the test when the ``import-test`` extra is absent."""
    if importlib.util.find_spec("speechbrain") is None:
        pytest.skip("speechbrain not installed (pip install 'spkid[import-test]')")
    if importlib.util.find_spec("torchaudio") is None:
        sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from speechbrain.processing.features import InputNormalization
    return types.SimpleNamespace(Fbank=Fbank, ECAPA_TDNN=ECAPA_TDNN, InputNormalization=InputNormalization)
