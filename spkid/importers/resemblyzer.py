"""``spkid import resemblyzer -o rz.ckpt``: the GE2E encoder that ships inside the ``resemblyzer`` wheel.

Reads ``resemblyzer/pretrained.pt`` from the installed package (found without importing it: no librosa or
webrtcvad needed) or ``--weights FILE`` (a GE2E checkpoint of the same format), with ``weights_only=True``, and
keeps the encoder (``lstm.*``, ``linear.*``; GE2E's training-only similarity scale and bias are left out).

Front end: features ``kind = "resemblyzer"`` (its librosa mel power, 40 bands, 25/10 ms, volume raised to -30 dBFS).
What differs from Resemblyzer's ``preprocess_wav``: spkid decodes and resamples audio itself (``spkid.audio.io``), its
speech detection (Silero VAD) replaces Resemblyzer's ``trim_long_silences`` (webrtcvad, 30 ms windows), and the
volume is measured on the audio after speech detection (Resemblyzer measures before trimming).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from spkid.config import RunConfig
from spkid.errors import CheckpointError
from spkid.importers import NO_LICENCE, read_weights, save_imported

LICENCE = "Apache-2.0 (the resemblyzer wheel's LICENSE)"


def wheel_weights() -> Path:
    """``pretrained.pt`` inside the installed ``resemblyzer`` package."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("resemblyzer: not installed (pip install 'spkid[resemblyzer]'), or give --weights FILE")
    return Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"


def import_resemblyzer(out: str | Path, *, weights: str | Path | None = None, licence: str = "") -> dict:
    """Write ``out`` from Resemblyzer's encoder weights; returns the card."""
    from spkid.models.ge2e import GE2ENet
    path = Path(weights) if weights else wheel_weights()
    raw = read_weights(path)
    state = raw.get("model_state", raw)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'model_state' is not a dict of weights")
    state = {k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}
    net = GE2ENet.from_state(state, str(path))
    cfg = RunConfig.from_dict({"name": "resemblyzer-ge2e", "features": {
        "kind": "resemblyzer", "sample_rate": 16000, "n_fft": 400, "hop": 160, "n_mels": net.lstm.input_size}},
        f"{path} (as a spkid config)")
    card = {"arch": "ge2e", "source": "Resemblyzer GE2E voice encoder (resemblyzer.VoiceEncoder)",
            "origin": str(path.resolve()), "licence": licence or (LICENCE if not weights else NO_LICENCE),
            "frontend": f"Resemblyzer mel power: {net.lstm.input_size} Slaney mel bands, 400-sample Hann window, "
                        "hop 160, volume raised to -30 dBFS; Silero VAD instead of its webrtcvad trimming",
            "windows": "partial windows of 160 frames every 77 (1.3 per second), mean of unit embeddings",
            "embed_dim": str(net.embed_dim)}
    card["fingerprint"] = save_imported(out, cfg, {k: v.contiguous() for k, v in net.state_dict().items()}, card)
    return card
