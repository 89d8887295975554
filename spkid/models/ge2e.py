"""Resemblyzer's GE2E speaker encoder (Wan et al. 2018; ``resemblyzer.VoiceEncoder``) with its partial windows.

A 3-layer LSTM over 40 mel bands, the last layer's final state through a Linear, ReLU, unit length. An utterance is
embedded as Resemblyzer's ``embed_utterance`` does: windows of 160 frames (1.6 s) every ``round(100 / 1.3)`` = 77
frames, the last one kept when at least 75 % of it is speech (the rest zero: the mel power of silence), a lone
short utterance padded to one window; the embedding is the mean of the windows' unit embeddings. Resemblyzer
decides the last window on the sample count; frames give it within half a frame (``n_samples`` is taken as the
middle of the last frame's hop).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spkid.errors import CheckpointError

PARTIAL_FRAMES = 160               # frames per window (1.6 s at a 10 ms hop)
RATE = 1.3                         # windows per second of audio
MIN_COVERAGE = 0.75                # the last window is kept when this much of it is audio
FRAMES_PER_SECOND = 100


def partial_starts(n_frames: int) -> list[int]:
    """First frames of Resemblyzer's windows over an utterance of ``n_frames`` (``compute_partial_slices``)."""
    step = int(round(FRAMES_PER_SECOND / RATE))
    starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step))
    samples = (n_frames - 1) + 0.5                                       # in hops: the middle of the last hop
    coverage = (samples - starts[-1]) / PARTIAL_FRAMES
    if coverage < MIN_COVERAGE and len(starts) > 1:
        starts = starts[:-1]
    return starts


class GE2ENet(nn.Module):
    """``embed(x (B, T, F) mel power, lengths (B,)) -> (B, E)``: the mean of the windows' unit embeddings.

    Args:
        n_mels (int): bands F. (Default: 40) hidden (int): LSTM width. (Default: 256)
        n_layers (int): LSTM layers. (Default: 3) embed_dim (int): embedding size E. (Default: 256)
    """

    def __init__(self, *, n_mels: int = 40, hidden: int = 256, n_layers: int = 3, embed_dim: int = 256):
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, n_layers, batch_first=True)
        self.linear = nn.Linear(hidden, embed_dim)
        self.embed_dim = embed_dim

    @classmethod
    def from_state(cls, state: dict, source: str) -> "GE2ENet":
        """The network whose sizes the weights ``state`` have (``lstm.*``, ``linear.*``), loaded."""
        try:
            four_h, n_mels = state["lstm.weight_ih_l0"].shape
            embed_dim, hidden = state["linear.weight"].shape
        except (KeyError, ValueError, AttributeError):
            raise CheckpointError(f"{source}: not GE2E weights (needs lstm.weight_ih_l0 and linear.weight)") from None
        n_layers = sum(1 for k in state if k.startswith("lstm.weight_ih_l"))
        net = cls(n_mels=n_mels, hidden=four_h // 4, n_layers=n_layers, embed_dim=embed_dim)
        own = net.state_dict()
        bad = [k for k in own if k not in state or own[k].shape != state[k].shape] + [k for k in state if k not in own]
        if bad or hidden != four_h // 4:
            raise CheckpointError(f"{source}: GE2E weights do not fit an LSTM of their own sizes "
                                  f"({(bad or ['linear.weight'])[0]!r})")
        net.load_state_dict(state)
        return net

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        """Unit embeddings of windows ``(P, PARTIAL_FRAMES, F)`` -> ``(P, E)`` (Resemblyzer's ``forward``)."""
        _, (hidden, _) = self.lstm(x)                                   # hidden (n_layers, P, H)
        return F.normalize(torch.relu(self.linear(hidden[-1])), dim=-1)

    def embed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(B, T, F)``, ``(B,)`` -> ``(B, E)``: per utterance, the mean over its windows (not renormalised)."""
        parts, owner = [], []
        for b, n in enumerate(lengths.tolist()):
            for s in partial_starts(int(n)):
                w = x[b, s:min(s + PARTIAL_FRAMES, int(n))]
                parts.append(F.pad(w, (0, 0, 0, PARTIAL_FRAMES - w.shape[0])))  # silence past the end
                owner.append(b)
        emb = self.windows(torch.stack(parts))                          # (P, E)
        owner_t = torch.tensor(owner, device=x.device)
        out = torch.zeros(x.shape[0], self.embed_dim, device=x.device, dtype=emb.dtype).index_add_(0, owner_t, emb)
        return out / torch.bincount(owner_t, minlength=x.shape[0]).clamp(min=1)[:, None]

    def classify(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """No classes: ``(B, 0)`` logits."""
        return emb.new_zeros(emb.shape[0], 0)


__all__ = ["GE2ENet", "partial_starts", "PARTIAL_FRAMES"]
