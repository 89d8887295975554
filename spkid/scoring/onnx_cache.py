"""The exported graph of a checkpoint, made once and cached: ``ensure_onnx(checkpoint, model_id)``.

Cached beside the checkpoint as ``<ckpt>.onnx`` (``<ckpt>.int8.onnx`` with int8 MatMul weights), stamped with the
checkpoint's ``model_fingerprint``: a file from other weights is exported again. A read-only checkpoint folder
caches in ``<tmp>/spkid-onnx/<fingerprint>.onnx``, and a shipped model (a file inside the installed package) in the
user cache (``$XDG_CACHE_HOME/spkid/onnx``, else ``~/.cache/spkid/onnx``): nothing is ever written into the package.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from spkid.errors import SpkidError
from spkid.fileio import atomic_write
from spkid.scoring.onnx_runtime import MODEL_ID_KEY, QUANT_KEY, _ort, set_metadata, stamp_of


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/spkid`` (``~/.cache/spkid`` when unset): files made from a shipped model."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spkid"


def inside_package(path: Path) -> bool:
    """True for a file of the installed spkid package (a shipped model): never write beside it."""
    package = Path(__file__).resolve().parents[1]
    return package in Path(path).resolve().parents


def cache_paths(checkpoint: Path, model_id: str, quantize: bool) -> tuple[Path, Path]:
    """``(beside the checkpoint (a shipped one: the user cache), in the temp dir)`` candidate locations of the graph."""
    suffix = ".int8.onnx" if quantize else ".onnx"
    beside = (user_cache_dir() / "onnx" / f"{model_id}{suffix}" if inside_package(checkpoint)
              else checkpoint.with_name(checkpoint.name + suffix))
    return (beside,
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
    if inside_package(checkpoint):
        try:
            beside.parent.mkdir(parents=True, exist_ok=True)
        except OSError:          # no writable home: the temp dir below
            pass
    target = beside if os.access(beside.parent, os.W_OK) else temp
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
