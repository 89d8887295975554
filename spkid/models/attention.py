"""Multi-head self-attention variants behind one signature.

Every variant is an ``nn.Module`` built as ``cls(d_model=..., n_heads=..., dropout=..., rope=..., **params)``
and called as ``attn(x, valid)``:

- ``x``: ``(B, T, D)`` input frames.
- ``valid``: ``(B, T)`` bool, True for real frames, False for padding.
- returns ``(B, T, D)``. Outputs at padded positions are unspecified (callers zero them);
  outputs at real positions never depend on padded positions.

The shared part (q/k/v projections, rotary positions, output projection) lives in
``SelfAttention``; a variant only overrides ``_attend``. Variants (see ``docs/attention.md``):

- ``full``: every frame sees every frame, O(T^2) time.
- ``local``: each frame sees frames within ``±window``, computed block-banded, O(T·window).
- ``sparse``: ``local`` plus every ``stride``-th frame as a key all frames see, O(T·(window + T/stride)).
- ``adaptive``: banded attention with a learned soft span per head (adaptive attention span), O(T·max_span).
- ``linformer``: keys and values projected along time to ``k`` rows, O(T·k).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spkid.errors import ConfigError
from spkid.models.registry import ATTENTION


def rotary_tables(t: int, dim: int, device, dtype=torch.float32, base: float = 10000.0):
    """cos/sin tables ``(T, dim)`` for rotary position embedding (any length T)."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    pos = torch.arange(t, device=device, dtype=torch.float32)
    ang = torch.outer(pos, inv)                      # (T, dim/2)
    ang = torch.cat([ang, ang], dim=-1)              # (T, dim)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, T, Dh)`` by position; cos/sin ``(T, Dh)``."""
    x1, x2 = x.chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return x * cos + rot * sin


class SelfAttention(nn.Module):
    """Full multi-head self-attention with ``F.scaled_dot_product_attention``.

    Args:
        d_model (int): model width D.
        n_heads (int): number of heads H; ``d_model % n_heads == 0``.
        dropout (float): dropout on attention weights (training only).
        rope (bool): rotary position embedding on q and k (relative positions, any length).
    """

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, rope: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if rope and (d_model // n_heads) % 2:
            raise ValueError(f"rotary positions need an even head size, got {d_model // n_heads}")
        self.d_model, self.n_heads, self.dropout, self.rope = d_model, n_heads, dropout, rope
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, D)``, ``valid`` ``(B, T)`` bool -> ``(B, T, D)``."""
        B, T, D = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
        if self.rope:
            cos, sin = rotary_tables(T, D // H, x.device, q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = self._attend(q, k, v, valid)                 # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(B, T, D)           # (B, T, D)
        return self.out(y)

    def _attend(self, q, k, v, valid):
        """q, k, v ``(B, H, T, Dh)``; valid ``(B, T)`` -> ``(B, H, T, Dh)``."""
        mask = valid[:, None, None, :]                   # (B, 1, 1, T): keys a query may see
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)


# helper functions

def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _neighbours(x: torch.Tensor, b: int, c: int) -> torch.Tensor:
    """``(..., nB*b, E)`` -> ``(..., nB, E, (2c+1)*b)``: each block's frames with ``c`` blocks either side.

    Frames outside ``[0, nB*b)`` are zeros; the windows are a strided view of the padded input.
    """
    x = F.pad(x, (0, 0, c * b, c * b))               # (..., (nB+2c)*b, E)
    return x.unfold(-2, (2 * c + 1) * b, b)          # (..., nB, E, W)


class _Band:
    """Block-banded layout of T frames for keys within ``±reach`` of each query.

    T is cut into ``nB`` blocks of ``b = min(reach, T)`` frames; block n's queries meet the keys of
    blocks ``n-c .. n+c`` (``W = (2c+1)*b`` keys, ``c = ceil(reach/b)``). Blocks are folded into the
    batch, ``(B*nB, H, b, Dh)`` against ``(B*nB, H, W, Dh)``, so the fused SDPA kernels apply and the
    work is O(T·reach) instead of O(T^2).
    """

    def __init__(self, q, k, v, valid, reach: int):
        B, H, T, Dh = q.shape
        b = max(1, min(reach, T))
        nB = -(-T // b)
        c = min(-(-reach // b), nB - 1)
        pad = nB * b - T
        self.B, self.H, self.T, self.b, self.nB, self.W = B, H, T, b, nB, (2 * c + 1) * b

        def keys(x):  # (B, H, T, Dh) -> (B*nB, H, W, Dh)
            x = _neighbours(F.pad(x, (0, 0, 0, pad)), b, c)                    # (B, H, nB, Dh, W)
            return x.permute(0, 2, 1, 4, 3).reshape(B * nB, H, self.W, Dh)

        self.q = F.pad(q, (0, 0, 0, pad)).view(B, H, nB, b, Dh).transpose(1, 2).reshape(B * nB, H, b, Dh)
        self.k, self.v = keys(k), keys(v)                                          # (B*nB, H, W, Dh)
        key_valid = F.pad(valid, (c * b, pad + c * b), value=False).unfold(-1, self.W, b)  # (B, nB, W)
        ar = torch.arange(self.W, device=q.device)
        # key position minus query position; the same for every block
        self.dist = ar[None, :] - c * b - ar[:b, None]                             # (b, W)
        # A padded query may always see itself so that no row is empty (no NaN); real queries
        # see themselves anyway, so this never touches an output that matters.
        allowed = (key_valid[:, :, None, :] & (self.dist.abs() <= reach)) | (self.dist == 0)  # (B, nB, b, W)
        self.allowed = allowed.view(B * nB, 1, b, self.W)                          # (B*nB, 1, b, W)

    def unblock(self, y: torch.Tensor) -> torch.Tensor:
        """``(B*nB, H, b, Dh)`` -> ``(B, H, T, Dh)``."""
        y = y.view(self.B, self.nB, self.H, self.b, -1).transpose(1, 2)           # (B, H, nB, b, Dh)
        return y.reshape(self.B, self.H, self.nB * self.b, -1)[:, :, : self.T]


# banded variants

class LocalAttention(SelfAttention):
    """Sliding-window attention: each query sees the real keys within ``±window`` frames.

    Args (besides ``SelfAttention``'s):
        window (int): half-width of the window in frames, ``>= 1``. (Default: 32)
    """

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, rope: bool = True,
                 window: int = 32):
        super().__init__(d_model=d_model, n_heads=n_heads, dropout=dropout, rope=rope)
        self.window = _check_int("window", window, 1)

    def _attend(self, q, k, v, valid):
        band = _Band(q, k, v, valid, self.window)
        p = self.dropout if self.training else 0.0
        # (B*nB, H, b, Dh) x (B*nB, H, W, Dh) -> (B*nB, H, b, Dh); the mask broadcasts over heads
        y = F.scaled_dot_product_attention(band.q, band.k, band.v, attn_mask=band.allowed, dropout_p=p)
        return band.unblock(y)


class SparseAttention(SelfAttention):
    """Fixed sparse attention: the ``±window`` band plus every ``stride``-th frame (0, s, 2s, ...) as a key
    that every query sees (Sparse Transformer's "fixed" pattern, Longformer's global keys).

    Args (besides ``SelfAttention``'s):
        window (int): half-width of the local band in frames, ``>= 1``. (Default: 32)
        stride (int): distance between the shared keys, ``>= 1``. (Default: 32)
    """

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, rope: bool = True,
                 window: int = 32, stride: int = 32):
        super().__init__(d_model=d_model, n_heads=n_heads, dropout=dropout, rope=rope)
        self.window = _check_int("window", window, 1)
        self.stride = _check_int("stride", stride, 1)

    def _attend(self, q, k, v, valid):
        B, H, T, Dh = q.shape
        band = _Band(q, k, v, valid, self.window)
        nB, b = band.nB, band.b
        kg, vg = k[:, :, :: self.stride], v[:, :, :: self.stride]                 # (B, H, G, Dh)
        G = kg.shape[2]

        def per_block(x):  # (B, H, G, Dh) -> (B*nB, H, G, Dh)
            return x[:, None].expand(B, nB, H, G, Dh).reshape(B * nB, H, G, Dh)

        keys = torch.cat([band.k, per_block(kg)], dim=2)                          # (B*nB, H, W+G, Dh)
        vals = torch.cat([band.v, per_block(vg)], dim=2)
        qpos = torch.arange(nB * b, device=q.device).view(nB, b, 1)
        gpos = torch.arange(0, T, self.stride, device=q.device)
        # shared keys inside the band are already among the band's keys: count them once
        seen = valid[:, :: self.stride][:, None, None, :] & ((qpos - gpos).abs() > self.window)  # (B, nB, b, G)
        mask = torch.cat([band.allowed, seen.reshape(B * nB, 1, b, G)], dim=-1)  # (B*nB, 1, b, W+G)
        p = self.dropout if self.training else 0.0
        return band.unblock(F.scaled_dot_product_attention(band.q, keys, vals, attn_mask=mask, dropout_p=p))


class AdaptiveSpanAttention(SelfAttention):
    """Adaptive attention span (Sukhbaatar et al., 2019): head h weights key distance x by the soft mask
    ``m(x) = clamp((ramp + z_h - x) / ramp, 0, 1)`` (renormalised), with a learned span ``z_h``.

    ``z_h = (max_span - ramp) * sigmoid(theta_h)``, so ``m`` is exactly 0 from distance ``max_span`` on and the
    banded computation stops at the largest current ``z_h + ramp``: cost O(T·max_span) at most.

    Args (besides ``SelfAttention``'s):
        max_span (int): the largest reach, in frames, ``> ramp``. (Default: 128)
        ramp (int): length R of the soft ramp in frames, ``>= 1``. (Default: 32)
        init_span (float | None): initial ``z`` of every head, in ``(0, max_span - ramp)``;
            None means half of that range. (Default: None)
    """

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, rope: bool = True,
                 max_span: int = 128, ramp: int = 32, init_span: float | None = None):
        super().__init__(d_model=d_model, n_heads=n_heads, dropout=dropout, rope=rope)
        self.ramp = _check_int("ramp", ramp, 1)
        self.max_span = _check_int("max_span", max_span, ramp + 1)
        room = max_span - ramp
        init = room / 2 if init_span is None else init_span
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not 0 < init < room:
            raise ValueError(f"init_span must be in (0, max_span - ramp) = (0, {room}), got {init_span!r}")
        logit = math.log(init / (room - init))
        self.span_logit = nn.Parameter(torch.full((n_heads,), logit))

    @property
    def spans(self) -> torch.Tensor:
        """Current span ``z`` of each head in frames, ``(H,)``, differentiable."""
        return (self.max_span - self.ramp) * torch.sigmoid(self.span_logit)

    def span_loss(self) -> torch.Tensor:
        """L1 penalty on the spans: mean ``z`` over heads in frames (scalar); add ``coef * span_loss()``."""
        return self.spans.mean()

    def _attend(self, q, k, v, valid):
        z = self.spans                                                             # (H,)
        # m(x) > 0 iff x < ramp + z: no key beyond the largest current span can get weight
        reach = min(self.max_span - 1, math.ceil(self.ramp + z.max().item()) - 1)
        band = _Band(q, k, v, valid, max(reach, 1))
        m = ((self.ramp + z[:, None, None] - band.dist.abs()) / self.ramp).clamp(0, 1)  # (H, b, W)
        # softmax(s + log m) == m * exp(s) renormalised; log 0 = -inf removes the key exactly
        log_m = torch.where(m > 0, m.clamp_min(1e-30).log(), float("-inf")).to(q.dtype)
        mask = log_m[None].masked_fill(~band.allowed, float("-inf"))              # (B*nB, H, b, W)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(band.q, band.k, band.v, attn_mask=mask, dropout_p=p)
        return band.unblock(y)


# low-rank variant

def _segment_pooling(k: int, resolution: int) -> torch.Tensor:
    """Densities ``(k, resolution)`` over normalised time whose row m averages over ``[m/k, (m+1)/k)``."""
    cell = torch.arange(resolution + 1, dtype=torch.float64) / resolution
    seg = torch.arange(k + 1, dtype=torch.float64) / k
    lo = torch.maximum(cell[None, :-1], seg[:-1, None])
    hi = torch.minimum(cell[None, 1:], seg[1:, None])
    return ((hi - lo).clamp_min(0) * resolution * k).float()   # each row integrates to 1


class LinformerAttention(SelfAttention):
    """Linformer (Wang et al., 2020): keys and values projected along time to ``k`` rows, O(T·k).

    The projections are learned densities ``e_m(u)`` over normalised time ``u in [0, 1]`` (piecewise constant
    on ``resolution`` cells, shared by all heads). An utterance with L real frames gives frame r the
    interval ``[r/L, (r+1)/L)`` and the weight ``∫ e_m`` over it, so any L works (longer than in
    training, or ``L < k``), padded frames get weight exactly 0 and the projection depends on L alone.
    Initialised to average pooling over k equal segments.

    Args (besides ``SelfAttention``'s):
        k (int): projected length, ``>= 1``. (Default: 64)
        resolution (int): cells of the learned densities over normalised time, ``>= 1``. (Default: 256)
    """

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0, rope: bool = True,
                 k: int = 64, resolution: int = 256):
        super().__init__(d_model=d_model, n_heads=n_heads, dropout=dropout, rope=rope)
        self.k = _check_int("k", k, 1)
        self.resolution = _check_int("resolution", resolution, 1)
        init = _segment_pooling(k, resolution)
        self.proj_k = nn.Parameter(init.clone())     # (k, resolution)
        self.proj_v = nn.Parameter(init.clone())     # (k, resolution)

    def projection(self, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value projections for a batch, each ``(B, k, T)``; columns of padded frames are 0."""
        dens = torch.cat([self.proj_k, self.proj_v]).float()                     # (2k, R)
        R = dens.shape[1]
        cum = F.pad(dens.cumsum(-1) / R, (1, 0))                                   # (2k, R+1): ∫_0^{i/R}
        # one lookup table, cell start -> (integral so far, density / R); embedding backward is fast
        table = torch.cat([cum, F.pad(dens / R, (0, 1))]).t()                      # (R+1, 4k)
        n = valid.sum(-1, keepdim=True).clamp_min(1)                               # (B, 1) real frames
        hi = valid.cumsum(-1)                                                      # (B, T): rank + 1
        lo = hi - valid.long()                                                     # equal to hi when padded

        def integral(edge):                                                        # ∫_0^{edge/n} -> (B, T, 2k)
            x = edge / n * R
            i = x.floor().long().clamp(max=R - 1)
            start, slope = F.embedding(i, table).chunk(2, dim=-1)
            return start + (x - i)[..., None] * slope

        P = (integral(hi) - integral(lo)).transpose(1, 2)                         # (B, 2k, T)
        return P[:, : self.k], P[:, self.k:]

    def _attend(self, q, k, v, valid):
        pk, pv = self.projection(valid)                                            # 2 x (B, k, T)
        keep = valid[:, None, :, None]                                             # (B, 1, T, 1)
        # zero padded frames so that even non-finite padding cannot leak through 0 * x
        kp = pk.to(k.dtype)[:, None] @ k.masked_fill(~keep, 0)                     # (B, H, k, Dh)
        vp = pv.to(v.dtype)[:, None] @ v.masked_fill(~keep, 0)                     # (B, H, k, Dh)
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, kp, vp, dropout_p=p)              # (B, H, T, Dh)


# every class takes the keyword arguments of SelfAttention plus its own extras (model.attention_params)
for _name, _cls in {"full": SelfAttention, "local": LocalAttention, "sparse": SparseAttention,
                    "adaptive": AdaptiveSpanAttention, "linformer": LinformerAttention}.items():
    ATTENTION.register(_name)(_cls)


def build_attention(name: str, *, d_model: int, n_heads: int, dropout: float, rope: bool,
                    params: dict | None = None) -> SelfAttention:
    """Build attention variant ``name`` with variant-specific ``params`` (e.g. ``{"window": 64}``)."""
    try:
        return ATTENTION.build(name, d_model=d_model, n_heads=n_heads, dropout=dropout, rope=rope, **(params or {}))
    except TypeError as e:
        raise ConfigError(f"attention {name!r}: bad parameters {params}: {e}") from None
