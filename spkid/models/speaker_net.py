"""The speaker network: normalise -> (augment) -> subsample -> encoder -> pooling -> embedding -> head.

``SpeakerNet`` is the only public entry point below the training loop and the scorers; the layers under it take
``(B, T, D)`` frames plus a ``valid`` ``(B, T)`` mask (made once here from ``lengths``):

- ``net(x (B, T, F), lengths (B,), labels (B,) | None) -> (emb (B, E), logits (B, N))``: training (margin on the
  target class when labels are given), export;
- ``net.embed(x, lengths) -> (B, E)`` and ``net.classify(emb) -> (B, N)``: inference, where windowed embeddings are
  averaged before classification.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from spkid.models.masking import masked_mean, valid_mask, zero_pad
from spkid.models.registry import ENCODERS, HEADS, POOLING


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


class ChannelAugment(nn.Module):
    """Training only, on raw log-mel ``(B, T, F)`` before normalisation: the feature-domain version of channel
    augmentation for inputs without audio (HW4 tensors). Per utterance, with probability ``p_eq`` a random smooth
    equaliser (three cosines over the bands, up to ``eq_db`` dB) is added to the log power; with probability
    ``p_drop`` the bands above a random cutoff (40-95% of the range: a low-pass, as telephone and codecs) are set to
    the power floor, as the front end computes them for audio that has no energy there."""

    def __init__(self, p_eq: float, eq_db: float, p_drop: float, floor: float):
        super().__init__()
        self.p_eq, self.eq_nepers, self.p_drop = p_eq, eq_db * math.log(10) / 10, p_drop
        self.floor_log = math.log(floor)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if not self.training or (self.p_eq == 0 and self.p_drop == 0):
            return x
        B, T, F = x.shape
        bands = torch.arange(F, device=x.device, dtype=torch.float32)                  # (F,)
        if self.p_eq > 0:
            on = (torch.rand(B, 1, device=x.device) < self.p_eq).float()
            amp = torch.rand(B, 3, 1, device=x.device) * 2 - 1                          # (B, 3, 1)
            phase = torch.rand(B, 3, 1, device=x.device) * 2 * math.pi
            j = torch.arange(1, 4, device=x.device, dtype=torch.float32)[None, :, None]
            curve = (amp * torch.cos(math.pi * j * bands / max(F - 1, 1) + phase)).sum(1)  # (B, F)
            curve = curve / curve.abs().amax(1, keepdim=True).clamp(min=1e-6) * torch.rand(B, 1, device=x.device)
            x = x + (on * curve * self.eq_nepers)[:, None, :].to(x.dtype)
        if self.p_drop > 0:
            on = torch.rand(B, 1, device=x.device) < self.p_drop
            cut = (0.4 + 0.55 * torch.rand(B, 1, device=x.device)) * F                 # (B, 1) band index
            drop = on & (bands[None, :] >= cut)                                          # (B, F)
            x = x.masked_fill(drop[:, None, :], self.floor_log)
        return zero_pad(x, valid)


class Subsample(nn.Module):
    """Input projection ``(B, T, F)`` -> ``(B, T', D)``: a Linear (factor 1) or stride-2 Conv1d layers (2 or 4);
    factor 0 passes the bands through (``(B, T, F)``, for an encoder that reads them itself).

    Output lengths are ``ceil(L / factor)``; padded frames are zeroed before each convolution, so an
    utterance gives the same frames alone or in a padded batch.
    """

    def __init__(self, n_mels: int, d_model: int, factor: int):
        super().__init__()
        self.factor = factor
        if factor == 0:                  # the encoder reads the mel bands itself (ecapa)
            self.proj = nn.Identity()
            self.convs = nn.ModuleList()
        elif factor == 1:
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
        cfg: the run's configuration, read duck-typed: ``cfg.model`` (architecture), ``cfg.features.n_mels`` (F),
            ``cfg.augment`` (SpecAugment settings).
        n_speakers (int): number of training classes N.
    """

    def __init__(self, cfg, n_speakers: int):
        super().__init__()
        m, a, n_mels = cfg.model, cfg.augment, cfg.features.n_mels
        self.norm = InputNorm(m.norm, n_mels)
        self.channel = ChannelAugment(a.feat_eq, a.feat_eq_db, a.feat_band_drop, cfg.features.floor)
        self.augment = SpecAugment(a.spec_time_masks, a.spec_time_width, a.spec_freq_masks, a.spec_freq_width)
        self.subsample = Subsample(n_mels, m.d_model, m.subsample)
        self.encoder = (ENCODERS.build(m.encoder, m, n_mels) if m.subsample == 0    # reads the bands itself
                        else ENCODERS.build(m.encoder, m))
        self.pool = POOLING.build(m.pooling, self.encoder.out_dim)    # every encoder says its output width
        self.embed_proj = nn.Linear(self.pool.out_dim, m.embed_dim) if m.embed_dim > 0 else nn.Identity()
        self.embed_dim = m.embed_dim if m.embed_dim > 0 else self.pool.out_dim
        # an imported embedder has no classes: no head, (B, 0) logits (spkid.load refuses to predict with it)
        self.head = HEADS.build(m.head, m, self.embed_dim, n_speakers) if n_speakers > 0 else None
        self.n_mels = n_mels
        # found once, not on every training step (a plain tuple: not registered twice as submodules)
        self._span_modules = tuple(x for x in self.modules() if hasattr(x, "span_loss"))

    def embed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, F)`` log-mel, ``lengths`` ``(B,)`` frames -> embedding ``(B, E)`` (not normalised)."""
        valid = valid_mask(lengths, x.shape[1])
        x = self.augment(self.norm(self.channel(x, valid), valid), lengths)     # (B, T, F)
        x, lengths = self.subsample(x, lengths)            # (B, T', D); lengths now in subsampled frames
        valid = valid_mask(lengths, x.shape[1])
        x = self.encoder(x, valid)                         # (B, T', D) (tdnn: (B, T', agg_dim))
        return self.embed_proj(self.pool(x, valid))        # (B, P) -> (B, E)

    def classify(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, E)`` -> logits ``(B, N)``; with ``labels`` ``(B,)`` a margin head penalises the target class."""
        if self.head is None:
            return emb.new_zeros(emb.shape[0], 0)
        return self.head(emb, labels)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, F)``, ``(B,)``, ``(B,) | None`` -> ``(emb (B, E), logits (B, N))``: every parameter is used,
        so DDP can wrap the network itself."""
        emb = self.embed(x, lengths)
        return emb, self.classify(emb, labels)

    # -- what training may set or ask ------------------------------------------------------------------------
    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-band training-set statistics ``(F,)`` for ``model.norm = "global"`` (a no-op for other modes)."""
        if self.norm.mode == "global":
            self.norm.set_stats(mean, std)

    def set_margin(self, margin: float) -> None:
        """Current margin of an AM/AAM head (margin warm-up); softmax heads have none."""
        if hasattr(self.head, "scale"):
            self.head.margin = margin

    def aux_loss(self) -> torch.Tensor | None:
        """Regularisers the parts ask for (adaptive attention spans: mean span, frames), or None."""
        spans = [m.span_loss() for m in self._span_modules]
        return sum(spans) / len(spans) if spans else None


def build_model(cfg, n_speakers: int) -> SpeakerNet:
    """The one way to make a model from a config (training, checkpoints, export)."""
    return SpeakerNet(cfg, n_speakers)
