"""The speaker network: normalise -> (augment) -> subsample -> encoder -> pooling -> embedding -> head.

``SpeakerNet.forward(x (B, T, F), lengths (B,)) -> emb (B, E)``; ``net.head(emb, labels) -> logits (B, N)``.
"""
from __future__ import annotations

import torch
from torch import nn

from spkid.config import RunConfig
from spkid.errors import ConfigError
from spkid.models.conformer import ConformerEncoder
from spkid.models.heads import build_head
from spkid.models.masking import masked_mean, valid_mask, zero_pad
from spkid.models.pooling import build_pooling
from spkid.models.tdnn import TDNNEncoder
from spkid.models.transformer import TransformerEncoder


class InputNorm(nn.Module):
    """Feature normalisation ``(B, T, F)`` -> ``(B, T, F)``.

    ``global``: fixed per-band mean/std (set from the training set with ``set_stats``, saved in the weights);
    ``cmn``: subtract each utterance's mean over its real frames; ``none``: identity.
    """

    def __init__(self, mode: str, n_mels: int):
        super().__init__()
        self.mode = mode
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    @torch.no_grad()
    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=1e-3))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.mode == "global":
            x = (x - self.mean) / self.std
        elif self.mode == "cmn":
            x = x - masked_mean(x, valid)[:, None]
        return zero_pad(x, valid)


class SpecAugment(nn.Module):
    """Random time and frequency masks (training only) on normalised features ``(B, T, F)``; masked values -> 0."""

    def __init__(self, time_masks: int, time_width: int, freq_masks: int, freq_width: int):
        super().__init__()
        self.time_masks, self.time_width = time_masks, time_width
        self.freq_masks, self.freq_width = freq_masks, freq_width

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.training or (self.time_masks == 0 and self.freq_masks == 0):
            return x
        B, T, F = x.shape
        keep = torch.ones(B, T, F, dtype=torch.bool, device=x.device)
        t_idx = torch.arange(T, device=x.device)[None, :]
        f_idx = torch.arange(F, device=x.device)[None, :]
        for _ in range(self.time_masks):
            w = (torch.rand(B, 1, device=x.device) * (self.time_width + 1)).long()
            w = torch.minimum(w, (lengths[:, None] // 5))          # never mask more than a fifth per mask
            t0 = (torch.rand(B, 1, device=x.device) * (lengths[:, None] - w + 1).float()).long()
            keep &= ~((t_idx >= t0) & (t_idx < t0 + w))[:, :, None]
        for _ in range(self.freq_masks):
            w = (torch.rand(B, 1, device=x.device) * (self.freq_width + 1)).long()
            f0 = (torch.rand(B, 1, device=x.device) * (F - w + 1).float()).long()
            keep &= ~((f_idx >= f0) & (f_idx < f0 + w))[:, None, :]
        return x * keep


class Subsample(nn.Module):
    """Input projection ``(B, T, F)`` -> ``(B, T', D)``: a Linear (factor 1) or stride-2 Conv1d layers (2 or 4).

    Output lengths are ``ceil(L / factor)``; padded frames are zeroed before each convolution, so an
    utterance gives the same frames alone or in a padded batch.
    """

    def __init__(self, n_mels: int, d_model: int, factor: int):
        super().__init__()
        self.factor = factor
        if factor == 1:
            self.proj = nn.Linear(n_mels, d_model)
            self.convs = nn.ModuleList()
        else:
            n = {2: 1, 4: 2}[factor]
            dims = [n_mels] + [d_model] * n
            self.convs = nn.ModuleList(nn.Conv1d(dims[i], dims[i + 1], 3, stride=2, padding=1) for i in range(n))
            self.proj = nn.Linear(d_model, d_model)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            x = zero_pad(x, valid_mask(lengths, x.shape[1]))
            x = self.act(conv(x.transpose(1, 2))).transpose(1, 2)  # (B, T, C) -> (B, C, T) -> (B, ceil(T/2), D)
            lengths = (lengths + 1) // 2
        return self.proj(x), lengths


class SpeakerNet(nn.Module):
    """Log-mel frames to a speaker embedding and class logits.

    Args:
        cfg (RunConfig): the run's configuration (``model`` section and SpecAugment settings of ``data``).
        n_speakers (int): number of training classes N.
    """

    def __init__(self, cfg: RunConfig, n_speakers: int):
        super().__init__()
        m, d = cfg.model, cfg.data
        self.norm = InputNorm(m.norm, m.n_mels)
        self.augment = SpecAugment(d.spec_time_masks, d.spec_time_width, d.spec_freq_masks, d.spec_freq_width)
        self.subsample = Subsample(m.n_mels, m.d_model, m.subsample)
        common = dict(d_model=m.d_model, n_heads=m.n_heads, n_layers=m.n_layers, ffn_dim=m.ffn_dim,
                      dropout=m.dropout, attention=m.attention, attention_params=m.attention_params,
                      rope=m.pos_enc == "rope")
        if m.encoder == "conformer":
            self.encoder = ConformerEncoder(conv_kernel=m.conv_kernel, **common)
        elif m.encoder == "transformer":
            self.encoder = TransformerEncoder(norm_first=m.norm_first, **common)
        elif m.encoder == "tdnn":
            self.encoder = TDNNEncoder(d_model=m.d_model, n_layers=m.n_layers, kernel=m.conv_kernel,
                                       out_dim=m.ffn_dim)
        else:
            raise ConfigError(f"unknown encoder {m.encoder!r}; choose one of ['conformer', 'tdnn', 'transformer']")
        self.pool = build_pooling(m.pooling, self.encoder.out_dim)    # every encoder says its output width
        self.embed = nn.Linear(self.pool.out_dim, m.embed_dim) if m.embed_dim > 0 else nn.Identity()
        self.embed_dim = m.embed_dim if m.embed_dim > 0 else self.pool.out_dim
        self.head = build_head(m.head, self.embed_dim, n_speakers, margin=m.margin, scale=m.scale)
        self.n_mels = m.n_mels

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, F)`` log-mel, ``lengths`` ``(B,)`` frames -> embedding ``(B, E)`` (not normalised)."""
        valid = valid_mask(lengths, x.shape[1])
        x = self.augment(self.norm(x, valid), lengths)     # (B, T, F)
        x, lengths = self.subsample(x, lengths)            # (B, T', D); lengths now in subsampled frames
        valid = valid_mask(lengths, x.shape[1])
        x = self.encoder(x, valid)                         # (B, T', D) (tdnn: (B, T', ffn_dim))
        return self.embed(self.pool(x, valid))             # (B, P) -> (B, E)

    def logits(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Inference scores ``(B, T, F)`` -> ``(B, N)`` (no margin)."""
        return self.head(self(x, lengths))


def build_model(cfg: RunConfig, n_speakers: int) -> SpeakerNet:
    """The one way to make a model from a config (training, checkpoints, export)."""
    return SpeakerNet(cfg, n_speakers)
