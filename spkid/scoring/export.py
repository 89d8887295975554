"""ONNX export of a checkpoint with dynamic batch and time axes, plus an eager-versus-ONNX parity check.

The exported graph maps ``feats (B, T, n_mels)`` float32 and ``lengths (B,)`` int64 to
``embedding (B, E)`` (not normalised) and ``logits (B, N)``; padding is masked exactly as in PyTorch.
Windowed inference of very long utterances stays in Python (``spkid.infer``).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from spkid.fileio import atomic_write
from spkid.errors import SpkidError
from spkid.scoring.loader import open_model


def export_onnx(checkpoint: str | Path, out: str | Path, *, check_lengths=(17, 160, 1000), tol: float = 1e-4) -> float:
    """Write ``out`` (atomically) and return the max abs difference to PyTorch over ``check_lengths``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SpkidError("export needs onnx and onnxruntime: pip install 'spkid[export]'") from None
    model = open_model(checkpoint, "cpu")
    if model.arch == "onnx":             # an imported graph: written out as it is (its own interface)
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(model.ckpt["onnx"].numpy().tobytes()))
        return 0.0
    if model.arch != "spkid":
        raise SpkidError(f"{model.path}: export needs a model of spkid's own architecture; this one is "
                         f"{model.arch!r} (its partial-window averaging runs in Python)")
    wrapped = model.net.eval()          # forward(feats, lengths) -> (embedding, logits)
    n_mels = model.cfg.features.n_mels
    example = (torch.randn(2, 64, n_mels), torch.tensor([64, 40]))

    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, example, tmp, input_names=["feats", "lengths"],
                              output_names=["embedding", "logits"], dynamo=False, opset_version=17,
                              dynamic_axes={"feats": {0: "batch", 1: "frames"}, "lengths": {0: "batch"},
                                            "embedding": {0: "batch"}, "logits": {0: "batch"}})
        _stamp(tmp, model.model_id)      # which weights: the ONNX cache of --runtime onnx checks it
        worst = parity(tmp, wrapped, n_mels, check_lengths, ort)
        if worst > tol:
            raise SpkidError(f"{out}: exported model differs from PyTorch by {worst:.2e} (> {tol:g}); not written")
        write.worst = worst
    atomic_write(out, write)
    return write.worst


def _stamp(path, model_id: str) -> None:
    """Record the checkpoint's ``model_fingerprint`` in the graph's metadata (``spkid_model_id``)."""
    import onnx
    from spkid.scoring.onnx_runtime import MODEL_ID_KEY, set_metadata
    m = onnx.load(str(path))
    set_metadata(m, {MODEL_ID_KEY: model_id})
    onnx.save(m, str(path))


def parity(onnx_path, wrapped, n_mels: int, lengths, ort) -> float:
    """Max abs difference between ONNX Runtime and eager outputs on random padded batches."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for t in lengths:
        x = torch.randn(3, t, n_mels, generator=g) - 5
        lens = torch.tensor([t, max(1, t // 2), max(1, t // 7)])
        with torch.no_grad():
            ref = wrapped(x, lens)
        got = sess.run(None, {"feats": x.numpy(), "lengths": lens.numpy()})
        worst = max(worst, *(float((torch.from_numpy(o) - r).abs().max()) for o, r in zip(got, ref) if r.numel()))
    return worst
