"""ECAPA-style TDNN encoder (Desplanques et al. 2020) without the Res2Net split: 1-D convolutions over time.

Batch-first ``(B, T, D)`` in and ``(B, T, out_dim)`` out with a ``valid`` ``(B, T)`` mask, like the other encoders;
internally channels-first ``(B, C, T)`` for ``Conv1d``. Padded frames are zeroed before every convolution (what a
lone utterance sees past its end), and the squeeze-excitation mean is taken over real frames only, so in eval
mode an utterance gives the same output alone or in a padded batch. BatchNorm is used as in ECAPA: it is cheap on
a CPU and folds into the convolutions at inference; its training statistics include the few padded frames of
utterances shorter than the crop.
"""
from __future__ import annotations

import torch
from torch import nn

from spkid.models.registry import ENCODERS


class ConvReLUBN(nn.Module):
    """``Conv1d`` -> ReLU -> BatchNorm (the ECAPA/x-vector TDNN layer order). ``(B, C_in, T)`` -> ``(B, C_out, T)``."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=dilation * (kernel // 2))
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C_in, T)`` with padding zero, ``mask`` ``(B, 1, T)`` float -> ``(B, C_out, T)``, padding zero."""
        return self.bn(torch.relu(self.conv(x))) * mask


class SEResBlock(nn.Module):
    """1x1 conv, dilated ``kernel`` conv, 1x1 conv, squeeze-excitation, residual. ``(B, C, T)`` -> ``(B, C, T)``.

    Args:
        channels (int): width C.
        kernel (int): odd kernel of the dilated convolution.
        dilation (int): its dilation.
        se_dim (int): squeeze-excitation bottleneck.
    """

    def __init__(self, channels: int, kernel: int, dilation: int, se_dim: int = 64):
        super().__init__()
        self.layers = nn.ModuleList([ConvReLUBN(channels, channels), ConvReLUBN(channels, channels, kernel, dilation),
                                     ConvReLUBN(channels, channels)])
        self.se = nn.Sequential(nn.Linear(channels, se_dim), nn.ReLU(), nn.Linear(se_dim, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.layers:
            y = layer(y, mask)
        s = y.sum(-1) / mask.sum(-1).clamp(min=1)               # (B, C): mean over real frames
        return x + y * self.se(s)[:, :, None]


class TDNNEncoder(nn.Module):
    """Stem conv (kernel 5), ``n_layers`` SE-Res blocks with dilations 2, 3, 4, ..., then multi-layer aggregation
    (the blocks' outputs concatenated, a 1x1 conv to ``out_dim``).

    ``x`` ``(B, T, D)``, ``valid`` ``(B, T)`` -> ``(B, T, out_dim)`` (padding zero).

    Args:
        d_model (int): channels C of the stem and blocks.
        n_layers (int): number of SE-Res blocks.
        kernel (int): odd kernel of the blocks' dilated convolutions.
        out_dim (int): channels after aggregation (the input width of pooling).
    """

    def __init__(self, *, d_model: int, n_layers: int, kernel: int = 3, out_dim: int = 384):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"tdnn kernel must be odd for same padding, got {kernel}")
        self.stem = ConvReLUBN(d_model, d_model, 5)
        self.blocks = nn.ModuleList(SEResBlock(d_model, kernel, dilation=i + 2) for i in range(n_layers))
        self.aggregate = ConvReLUBN(d_model * n_layers, out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        mask = valid[:, None, :].to(x.dtype)                     # (B, 1, T)
        x = self.stem(x.transpose(1, 2) * mask, mask)            # (B, C, T); every layer keeps padding zero
        outs = []
        for block in self.blocks:
            x = block(x, mask)
            outs.append(x)
        return self.aggregate(torch.cat(outs, dim=1), mask).transpose(1, 2)   # (B, T, out_dim)


@ENCODERS.register("tdnn", uses=("tdnn_kernel", "agg_dim"))
def _build(m) -> TDNNEncoder:
    """``model.d_model`` channels, ``model.n_layers`` blocks, ``model.tdnn_kernel``, ``model.agg_dim``."""
    return TDNNEncoder(d_model=m.d_model, n_layers=m.n_layers, kernel=m.tdnn_kernel, out_dim=m.agg_dim)
