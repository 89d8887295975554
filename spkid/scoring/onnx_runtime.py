"""CPU inference through ONNX Runtime: ``spkid.load(ckpt, runtime="onnx")`` and ``--runtime onnx``.

The graph is the one ``spkid.scoring.export`` writes (``feats (B, T, F)`` float32 + ``lengths (B,)`` int64 ->
``embedding (B, E)``, ``logits (B, N)``), exported once per checkpoint and cached (``spkid.scoring.onnx_cache``),
stamped with the checkpoint's ``model_fingerprint`` (``MODEL_ID_KEY``). This module knows ONNX Runtime only
(sessions, metadata, the batch function) and imports nothing else of spkid's scoring, so the cache, the exporter
and the model loader can all use it without an import circle. Only the per-batch network call changes: length buckets, windows and the averaging of window embeddings stay in
``spkid.scoring.model.embed_features``, and the (averaged) embeddings are classified in PyTorch (one small matrix
product), so ONNX Runtime and eager PyTorch give the same embeddings (within 1e-4) and the same predictions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spkid.errors import SpkidError

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
