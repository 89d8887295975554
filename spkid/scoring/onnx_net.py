"""An imported ONNX speaker embedder as a network: ``OnnxNet(graph_bytes, cfg).embed(x, lengths)``.

The graph takes one utterance's features ``(1, T, F)`` float32 (its first input) and gives its embedding ``(1, E)``
(its first output), as WeSpeaker's exports do; it knows nothing of padding, so each utterance of a batch runs alone
on its own frames. ``cfg.model.norm == "cmn"`` subtracts the utterance's mean first (WeSpeaker's front end does).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spkid.errors import CheckpointError
from spkid.scoring.onnx_runtime import _ort, session_options


class OnnxNet(nn.Module):
    """``embed(x (B, T, F), lengths (B,)) -> (B, E)`` through ONNX Runtime on the CPU; no classes."""

    def __init__(self, graph: bytes, cfg, source: str, threads: int = 0):
        super().__init__()
        from spkid.runtime import resolve_threads
        ort = _ort()
        try:
            self.session = ort.InferenceSession(graph, session_options(resolve_threads(threads)),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:
            raise CheckpointError(f"{source}: ONNX Runtime cannot load the imported graph "
                                  f"({str(e).splitlines()[0][:160]})") from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        if len(inp.shape) != 3 or len(out.shape) != 2:
            raise CheckpointError(f"{source}: the graph maps {inp.name} {inp.shape} to {out.name} {out.shape}; spkid "
                                  "runs graphs from features (B, T, F) to embeddings (B, E)")
        self.input, self.output = inp.name, out.name
        self.n_mels = cfg.features.n_mels
        if isinstance(inp.shape[2], int) and inp.shape[2] != self.n_mels:
            raise CheckpointError(f"{source}: the graph reads {inp.shape[2]} bands, the front end gives {self.n_mels}")
        self.cmn = cfg.model.norm == "cmn"
        probe = self.session.run([self.output], {self.input: np.zeros((1, 200, self.n_mels), np.float32)})[0]
        self.embed_dim = int(probe.shape[-1])

    def embed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(B, T, F)``, ``(B,)`` -> ``(B, E)``, one utterance per run (the graph has no padding mask)."""
        out = []
        for b, n in enumerate(lengths.tolist()):
            f = x[b, :int(n)].detach().cpu().float()
            if self.cmn:
                f = f - f.mean(0, keepdim=True)
            (e,) = self.session.run([self.output], {self.input: np.ascontiguousarray(f.numpy()[None])})
            out.append(torch.from_numpy(e).reshape(-1))
        return torch.stack(out).to(x.device)

    def classify(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """No classes: ``(B, 0)`` logits."""
        return emb.new_zeros(emb.shape[0], 0)
