"""CPU inference through ONNX Runtime: ``spkid.load(ckpt, runtime="onnx")`` and ``--runtime onnx``.

The graph is the one ``spkid.scoring.export`` writes (``feats (B, T, F)`` float32 + ``lengths (B,)`` int64 ->
``embedding (B, E)``, ``logits (B, N)``), exported once per checkpoint and cached beside it as ``<ckpt>.onnx``
(``<ckpt>.int8.onnx`` with int8 MatMul weights), stamped with the checkpoint's ``model_fingerprint``: a file from other
weights is exported again, and a read-only checkpoint folder caches in ``<tmp>/spkid-onnx/<fingerprint>.onnx``.
Only the per-batch network call changes: length buckets, windows and the averaging of window embeddings stay in
``spkid.scoring.model.embed_features``, and the (averaged) embeddings are classified in PyTorch (one small matrix
product), so ONNX Runtime and eager PyTorch give the same embeddings (within 1e-4) and the same predictions.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from spkid.errors import SpkidError
from spkid.fileio import atomic_write

RUNTIMES = ("torch", "onnx")
MODEL_ID_KEY = "spkid_model_id"         # metadata entry of an exported graph: the weights it was made from
QUANT_KEY = "spkid_quantized"


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise SpkidError("--runtime onnx needs onnx and onnxruntime: pip install 'spkid[export]'") from None
    return onnxruntime


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise SpkidError(f"runtime {runtime!r}: choose one of {list(RUNTIMES)}")
    return runtime


def stamp_of(path: Path) -> dict[str, str]:
    """The ``spkid_*`` metadata of an ONNX file (empty when unreadable or unstamped)."""
    try:
        import onnx
        m = onnx.load(str(path), load_external_data=False)
    except Exception:            # missing, truncated, not ONNX: treated as absent, exported again
        return {}
    return {p.key: p.value for p in m.metadata_props if p.key.startswith("spkid_")}


def cache_paths(checkpoint: Path, model_id: str, quantize: bool) -> tuple[Path, Path]:
    """``(beside the checkpoint, in the temp dir)`` candidate locations of the exported graph."""
    suffix = ".int8.onnx" if quantize else ".onnx"
    return (checkpoint.with_name(checkpoint.name + suffix),
            Path(tempfile.gettempdir()) / "spkid-onnx" / f"{model_id}{suffix}")


def ensure_onnx(checkpoint: str | Path, model_id: str, *, quantize: bool = False) -> Path:
    """Path of an ONNX graph of ``checkpoint`` stamped with ``model_id``: the cached one, or a fresh export
    (written atomically: concurrent callers each rename a complete file)."""
    checkpoint = Path(checkpoint)
    beside, temp = cache_paths(checkpoint, model_id, quantize)
    for path in (beside, temp):
        stamp = stamp_of(path) if path.is_file() else {}
        if stamp.get(MODEL_ID_KEY) == model_id and stamp.get(QUANT_KEY, "0") == ("1" if quantize else "0"):
            return path
    from spkid.pretrained import is_shipped
    target = beside if os.access(beside.parent, os.W_OK) and not is_shipped(checkpoint) else temp
    if quantize:
        _quantize(ensure_onnx(checkpoint, model_id), target, model_id)
    else:
        from spkid.scoring.export import export_onnx
        export_onnx(checkpoint, target)
    if stamp_of(target).get(MODEL_ID_KEY) != model_id:
        raise SpkidError(f"{checkpoint}: the checkpoint changed while it was being exported; run again")
    return target


def _quantize(src: Path, out: Path, model_id: str) -> None:
    """Dynamic int8 quantisation of MatMul/Gemm weights (activations quantised on the fly, per batch).

    Convolutions stay float32: ONNX Runtime's CPU ConvInteger takes only uint8 weights, and with them the
    default TDNN lost 0.2 points of public-test accuracy and ran 1.3x slower than float32 (docs/scaling.md).
    """
    _ort()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(tmp):
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)       # its advice to pre-process the model would reach the terminal
        try:
            quantize_dynamic(str(src), tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        finally:
            logging.disable(level)
        m = onnx.load(tmp)
        set_metadata(m, {MODEL_ID_KEY: model_id, QUANT_KEY: "1"})
        onnx.save(m, tmp)
    atomic_write(out, write)


def set_metadata(model, props: dict[str, str]) -> None:
    """Add or replace ``metadata_props`` entries of an ``onnx.ModelProto`` (other entries are kept)."""
    keep = {p.key: p.value for p in model.metadata_props}
    keep.update(props)
    del model.metadata_props[:]
    for k, v in keep.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def session_options(threads: int, *, spin: bool = False):
    """ONNX Runtime settings for a CPU that others may share: ``threads`` intra-op threads, one inter-op,
    all graph optimisations (constant folding, node fusion, layout), and no spin-waiting between kernels unless
    ``spin`` (spinning threads burn the cores a neighbour or the next batch's Python work needs)."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.log_severity_level = 3
    return opts


class OrtEmbedder:
    """The exported network as a batch function: ``(x (B, T, F) float32, lengths (B,)) -> embeddings (B, E)``.

    Plugs into ``embed_features(..., runner=OrtEmbedder(path))`` in place of ``net.embed``.
    """

    def __init__(self, path: str | Path, threads: int = 0, *, spin: bool = False):
        from spkid.runtime import resolve_threads
        ort = _ort()
        self.path = Path(path)
        self.threads = resolve_threads(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(self.threads, spin=spin),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:
            raise SpkidError(f"{self.path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:160]}); "
                             "delete it to export again") from None

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feeds = {"feats": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32),
                 "lengths": lengths.detach().cpu().numpy().astype(np.int64)}
        (emb,) = self.session.run(["embedding"], feeds)
        return torch.from_numpy(emb)
