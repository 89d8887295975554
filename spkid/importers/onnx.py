"""``spkid import onnx MODEL.onnx --frontend NAME -o model.ckpt``: an ONNX speaker embedder and its declared front end.

The graph's bytes are stored in the checkpoint (``onnx``) and run by ONNX Runtime (``spkid.scoring.onnx_net``), one
utterance per run, from features ``(1, T, F)`` to an embedding ``(1, E)``. The front end is one of ``FRONTENDS``:

- ``wespeaker``: Kaldi fbank as WeSpeaker's ``compute_fbank`` (80 bands, 25/10 ms, Hamming window, dither 0,
  int16 scale) and per-utterance mean normalisation (features ``kind = "kaldi"``, ``model.norm = "cmn"``);
- ``speechbrain``: SpeechBrain's Fbank (80 bands) and sentence mean normalisation;
- ``logmel``: spkid's own HW4 log-mel (40 bands), nothing subtracted.
"""
from __future__ import annotations

from pathlib import Path

from spkid.config import RunConfig
from spkid.errors import CheckpointError
from spkid.importers import NO_LICENCE, save_imported

FRONTENDS = {
    "wespeaker": ({"kind": "kaldi", "n_fft": 400, "hop": 160, "n_mels": 80, "f_min": 20.0}, "cmn",
                  "Kaldi fbank as WeSpeaker computes it: 80 bands, 25/10 ms Hamming, int16 scale; mean normalisation"),
    "speechbrain": ({"kind": "speechbrain", "n_fft": 400, "hop": 160, "n_mels": 80, "floor": 1e-10}, "cmn",
                    "SpeechBrain Fbank: 80 bands, 25/10 ms Hamming, dB; sentence mean normalisation"),
    "logmel": ({}, "none", "spkid's HW4 log-mel: 40 HTK bands, 25/10 ms Hann, natural log"),
}


def import_onnx(model: str | Path, out: str | Path, *, frontend: str, licence: str = "") -> dict:
    """Write ``out`` holding the graph ``model`` with the front end ``frontend``; returns the card."""
    model = Path(model)
    if frontend not in FRONTENDS:
        raise CheckpointError(f"{model}: front end {frontend!r} unknown; choose one of {sorted(FRONTENDS)}")
    if not model.is_file():
        raise CheckpointError(f"{model}: not found")
    features, norm, text = FRONTENDS[frontend]
    cfg = RunConfig.from_dict({"name": f"onnx-{frontend}", "features": {"sample_rate": 16000, **features},
                               "model": {"norm": norm}}, f"--frontend {frontend}")
    graph = model.read_bytes()
    from spkid.scoring.onnx_net import OnnxNet
    OnnxNet(graph, cfg, str(model))                     # loads and maps (1, T, F) -> (1, E), or names the file
    card = {"arch": "onnx", "source": f"ONNX graph {model.name}", "origin": str(model.resolve()),
            "licence": licence or NO_LICENCE, "frontend": f"{frontend}: {text}"}
    card["fingerprint"] = save_imported(out, cfg, {}, card, onnx=graph)
    return card
