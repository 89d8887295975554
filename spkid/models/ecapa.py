"""ECAPA-TDNN as SpeechBrain builds it (Desplanques et al. 2020; ``speechbrain.lobes.models.ECAPA_TDNN``).

What spkid's own TDNN (``tdnn.py``) leaves out, layer for layer as in SpeechBrain so its weights load one to one
(``spkid.importers.speechbrain``): Res2Net blocks (the channels split into ``res2_scale`` groups, each group's
convolution fed the previous group's output), squeeze-excitation through 1x1 convolutions, reflect padding at the
utterance edges, a 1x1 multi-layer-aggregation convolution, and attentive statistics pooling with global context
and a BatchNorm on the statistics (``EcapaStatsPool``, pooling ``"ecapa"``).

Batch-first ``(B, T, F)`` in and ``(B, T, agg_dim)`` out with a ``valid`` ``(B, T)`` mask, channels-first inside.
SpeechBrain reflect-pads the whole padded batch; here each utterance is reflected at its own end (one gather), so
an utterance gives the same output alone or in a padded batch, and SpeechBrain's output for a lone utterance.
"""
from __future__ import annotations

import torch
from torch import nn

from spkid.models.registry import ENCODERS, POOLING


def reflect_pad(x: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """``x`` ``(B, C, T)`` -> ``(B, C, T + 2 pad)``, each row reflected about its own first and last real frame
    (``F.pad(mode="reflect")`` of the lone utterance; folded again when the utterance is shorter than ``pad``)."""
    if pad == 0:
        return x
    b, c, t = x.shape
    q = torch.arange(-pad, t + pad, device=x.device)[None, :]                       # (1, T + 2 pad)
    period = torch.clamp(2 * (lengths[:, None] - 1), min=1)                          # (B, 1)
    r = torch.remainder(q, period)
    idx = torch.where(r < lengths[:, None], r, period - r).clamp(max=t - 1)          # (B, T + 2 pad)
    return torch.gather(x, 2, idx[:, None, :].expand(b, c, idx.shape[1]))


class TDNNLayer(nn.Module):
    """Conv1d (reflect-padded "same") -> ReLU -> BatchNorm: SpeechBrain's ``TDNNBlock``. ``(B, C_in, T)`` ->
    ``(B, C_out, T)``, padded frames zero."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, dilation: int = 1):
        super().__init__()
        self.pad = dilation * (kernel - 1) // 2
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(reflect_pad(x, lengths, self.pad)))) * mask


class Res2Block(nn.Module):
    """Res2Net: ``scale`` channel groups; group 0 passes through, group i > 0 gets a dilated TDNN layer of its input
    plus group i-1's output. ``(B, C, T)`` -> ``(B, C, T)``."""

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int):
        super().__init__()
        if channels % scale:
            raise ValueError(f"ecapa channels ({channels}) must be divisible by res2_scale ({scale})")
        self.scale = scale
        self.layers = nn.ModuleList(TDNNLayer(channels // scale, channels // scale, kernel, dilation)
                                    for _ in range(scale - 1))

    def forward(self, x, lengths, mask):
        outs = []
        for i, part in enumerate(torch.chunk(x, self.scale, dim=1)):                 # scale x (B, C/scale, T)
            y = part if i == 0 else self.layers[i - 1](part if i == 1 else part + y, lengths, mask)
            outs.append(y)
        return torch.cat(outs, dim=1)


class SERes2Block(nn.Module):
    """1x1 TDNN, Res2Net, 1x1 TDNN, squeeze-excitation (mean over real frames), residual. ``(B, C, T)`` -> same."""

    def __init__(self, channels: int, *, kernel: int, dilation: int, scale: int, se_dim: int):
        super().__init__()
        self.tdnn1 = TDNNLayer(channels, channels)
        self.res2 = Res2Block(channels, scale, kernel, dilation)
        self.tdnn2 = TDNNLayer(channels, channels)
        self.se_down, self.se_up = nn.Conv1d(channels, se_dim, 1), nn.Conv1d(se_dim, channels, 1)

    def forward(self, x, lengths, mask):
        y = self.tdnn2(self.res2(self.tdnn1(x, lengths, mask), lengths, mask), lengths, mask)
        s = y.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)         # (B, C, 1)
        return x + y * torch.sigmoid(self.se_up(torch.relu(self.se_down(s))))


class EcapaEncoder(nn.Module):
    """Stem TDNN (kernel 5) on the mel bands, ``n_layers`` SE-Res2 blocks with dilations 2, 3, 4, ..., then the
    blocks' outputs concatenated through a 1x1 TDNN layer to ``out_dim`` (SpeechBrain's ``mfa``).

    ``x`` ``(B, T, F)``, ``valid`` ``(B, T)`` -> ``(B, T, out_dim)`` (padding zero).

    Args:
        in_dim (int): mel bands F. d_model (int): channels C. n_layers (int): SE-Res2 blocks.
        kernel (int): odd kernel of the Res2Net convolutions. out_dim (int): channels after aggregation.
        scale (int): Res2Net groups. se_dim (int): squeeze-excitation bottleneck.
    """

    def __init__(self, *, in_dim: int, d_model: int, n_layers: int, kernel: int = 3, out_dim: int = 1536,
                 scale: int = 8, se_dim: int = 128):
        super().__init__()
        self.stem = TDNNLayer(in_dim, d_model, 5)
        self.blocks = nn.ModuleList(SERes2Block(d_model, kernel=kernel, dilation=i + 2, scale=scale, se_dim=se_dim)
                                    for i in range(n_layers))
        self.mfa = TDNNLayer(d_model * n_layers, out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        mask = valid[:, None, :].to(x.dtype)                                           # (B, 1, T)
        lengths = valid.sum(1)
        x = self.stem(x.transpose(1, 2), lengths, mask)                                # (B, F, T) -> (B, C, T)
        outs = []
        for block in self.blocks:
            x = block(x, lengths, mask)
            outs.append(x)
        return self.mfa(torch.cat(outs, dim=1), lengths, mask).transpose(1, 2)          # (B, T, out_dim)


class EcapaStatsPool(nn.Module):
    """Attentive statistics pooling with global context, then BatchNorm of the statistics (SpeechBrain's ``asp`` and
    ``asp_bn``): per-channel attention over real frames from ``[x, mean, std]``. ``(B, T, D)`` -> ``(B, 2D)``.

    Args:
        in_dim (int): frame width D. hidden (int): attention channels. (Default: 128)
    """

    EPS = 1e-12                    # SpeechBrain's variance floor

    def __init__(self, in_dim: int, hidden: int = 128):
        super().__init__()
        self.attend = TDNNLayer(3 * in_dim, hidden)
        self.score = nn.Conv1d(hidden, in_dim, 1)
        self.bn = nn.BatchNorm1d(2 * in_dim)
        self.out_dim = 2 * in_dim

    def _stats(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (w * x).sum(2)                                                            # (B, D)
        return mean, torch.sqrt((w * (x - mean[:, :, None]).pow(2)).sum(2).clamp(self.EPS))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, T, D)``, ``(B, T)`` -> ``(B, 2D)``."""
        x = x.transpose(1, 2)                                                            # (B, D, T)
        mask = valid[:, None, :].to(x.dtype)                                             # (B, 1, T)
        t = x.shape[-1]
        mean, std = self._stats(x, mask / mask.sum(2, keepdim=True).clamp(min=1))
        ctx = torch.cat([x, mean[:, :, None].expand(-1, -1, t), std[:, :, None].expand(-1, -1, t)], dim=1)
        scores = self.score(torch.tanh(self.attend(ctx, valid.sum(1), mask)))           # (B, D, T)
        w = torch.softmax(scores.masked_fill(mask == 0, float("-inf")), dim=2)
        return self.bn(torch.cat(self._stats(x, w), dim=1))                             # (B, 2D)


@ENCODERS.register("ecapa", uses=("tdnn_kernel", "agg_dim", "res2_scale", "se_dim"))
def _build(m, in_dim: int) -> EcapaEncoder:
    """Reads the mel bands directly (``model.subsample = 0``): ``in_dim`` is ``features.n_mels``."""
    return EcapaEncoder(in_dim=in_dim, d_model=m.d_model, n_layers=m.n_layers, kernel=m.tdnn_kernel,
                        out_dim=m.agg_dim, scale=m.res2_scale, se_dim=m.se_dim)


POOLING.register("ecapa")(EcapaStatsPool)
