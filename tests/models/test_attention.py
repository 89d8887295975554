"""Attention variants: shape contract, padding invariance, agreement with dense references."""
import pytest
import torch

from spkid.errors import ConfigError
from spkid.models.attention import (ATTENTION, AdaptiveSpanAttention, LinformerAttention, LocalAttention,
                                    SelfAttention, SparseAttention, _Band, build_attention)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
D, H = 16, 2
# small settings so that T=37 spans several blocks / segments
SMALL = {"full": {}, "local": {"window": 5}, "sparse": {"window": 4, "stride": 6},
         "adaptive": {"max_span": 12, "ramp": 4}, "linformer": {"k": 8, "resolution": 24}}


def make(name, device="cpu", dropout=0.0, seed=0, **params):
    torch.manual_seed(seed)
    return build_attention(name, d_model=D, n_heads=H, dropout=dropout, rope=True, params=params).to(device)


def batch(lengths, device="cpu", seed=1):
    """x ``(B, T, D)`` with loud garbage in the padding, valid ``(B, T)``."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    x = torch.randn(len(lengths), T, D, generator=g)
    valid = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    x[~valid] = 1e4 * torch.randn(int((~valid).sum()), D, generator=g)
    return x.to(device), valid.to(device)


def dense(q, k, v, weight):
    """Reference attention with an explicit ``(B|1, H|1, T, T)`` weight: 0 removes a key, else scales exp(score)."""
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    a = s.softmax(-1) * weight
    return (a / a.sum(-1, keepdim=True).clamp_min(1e-30)) @ v   # padded queries may see nothing


def qkv(B=3, T=37, seed=2):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D // H, generator=g) for _ in range(3))
    valid = torch.arange(T)[None] < torch.tensor([T, 20, 3][:B])[:, None]
    return q, k, v, valid


def pairs(T):
    i = torch.arange(T)
    return (i[None, :] - i[:, None]).abs()      # (T, T) |key - query|


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(ATTENTION))
@pytest.mark.parametrize("params", ["small", "default"])
def test_shape_and_padding_invariance(name, params, device):
    attn = make(name, device, **(SMALL[name] if params == "small" else {})).eval()
    lengths = [37, 20, 1]
    x, valid = batch(lengths, device)
    y = attn(x, valid)
    assert y.shape == (3, 37, D)
    assert torch.isfinite(y).all()
    for i, L in enumerate(lengths):
        alone = attn(x[i:i + 1, :L], valid[i:i + 1, :L])[0]
        torch.testing.assert_close(alone, y[i, :L], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(ATTENTION))
@pytest.mark.parametrize("T", [1, 3, 300])
def test_any_length_and_backward(name, T):
    attn = make(name, **SMALL[name]).train()
    x, valid = batch([T, max(1, T // 2)])
    x.requires_grad_(True)
    y = attn(x, valid)
    assert y.shape == (2, T, D) and torch.isfinite(y).all()
    (y * valid[..., None]).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[valid].abs().sum() > 0
    assert (x.grad[~valid] == 0).all()          # padding never feeds a real output
    for n, p in attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        if T > 12 or n != "span_logit":         # short inputs sit on the flat top of the span mask
            assert p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_dropout_only_in_training(name):
    attn = make(name, dropout=0.5, **SMALL[name])
    ref = make(name, dropout=0.0, **SMALL[name]).eval()
    x, valid = batch([37, 20])
    attn.eval()
    torch.testing.assert_close(attn(x, valid), ref(x, valid))
    attn.train()
    assert not torch.allclose(attn(x, valid), attn(x, valid))


@pytest.mark.parametrize("T,reach", [(37, 5), (37, 1), (5, 32), (1, 3)])
def test_band_layout_covers_the_band_and_never_leaves_a_row_empty(T, reach):
    q, k, v, valid = qkv(T=T)
    band = _Band(q, k, v, valid, reach)
    assert band.allowed.any(-1).all()           # padded queries see themselves: no all -inf row
    # every (query, key) pair within reach, real key, is allowed exactly once
    B, nB, b = 3, band.nB, band.b
    qpos = torch.arange(nB * b).view(1, nB, b, 1)
    kpos = qpos + band.dist                                             # (1, nB, b, W)
    hits = torch.zeros(B, nB * b, T + 2 * band.W, dtype=torch.long)
    allowed = band.allowed.view(B, nB, b, band.W)
    idx = (kpos + band.W).expand(B, -1, -1, -1).reshape(B, nB * b, band.W)
    hits.scatter_add_(2, idx, allowed.reshape(B, nB * b, band.W).long())
    want = ((pairs(T) <= reach) & valid[:, None, :]).long()
    assert torch.equal(hits[:, :T, band.W:band.W + T] * valid[:, :, None], want * valid[:, :, None])


def test_local_matches_banded_reference():
    q, k, v, valid = qkv()
    attn = LocalAttention(d_model=D, n_heads=H, window=5).eval()
    weight = ((pairs(37) <= 5)[None, None] & valid[:, None, None, :]).float()
    got = attn._attend(q, k, v, valid)
    torch.testing.assert_close(got[valid[:, None, :, None].expand_as(got)],
                               dense(q, k, v, weight)[valid[:, None, :, None].expand_as(got)])


@pytest.mark.parametrize("window,stride", [(4, 6), (1, 5), (9, 2), (3, 1)])
def test_sparse_matches_strided_reference(window, stride):
    q, k, v, valid = qkv()
    attn = SparseAttention(d_model=D, n_heads=H, window=window, stride=stride).eval()
    strided = (torch.arange(37) % stride == 0)[None, :]
    weight = (((pairs(37) <= window) | strided)[None, None] & valid[:, None, None, :]).float()
    got, want = attn._attend(q, k, v, valid), dense(q, k, v, weight)
    keep = valid[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[keep], want[keep])


def test_adaptive_matches_soft_mask_reference_and_gradients():
    q, k, v, valid = qkv()
    attn = AdaptiveSpanAttention(d_model=D, n_heads=H, max_span=20, ramp=4).eval()
    with torch.no_grad():
        attn.span_logit.copy_(torch.tensor([-1.5, 0.7]))   # two different spans (about 2.9 and 10.7)
    got = attn._attend(q, k, v, valid)
    (g_got,) = torch.autograd.grad(got[valid[:, None, :, None].expand_as(got)].pow(2).sum(), attn.span_logit)
    z = attn.spans
    m = ((4 + z[:, None, None] - pairs(37)) / 4).clamp(0, 1)              # (H, T, T), paper's soft mask
    want = dense(q, k, v, m[None] * valid[:, None, None, :])
    (g_want,) = torch.autograd.grad(want[valid[:, None, :, None].expand_as(want)].pow(2).sum(), attn.span_logit)
    keep = valid[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[keep], want[keep])
    torch.testing.assert_close(g_got, g_want)


def test_adaptive_spans_and_loss():
    attn = AdaptiveSpanAttention(d_model=D, n_heads=H, max_span=40, ramp=8)
    torch.testing.assert_close(attn.spans, torch.full((H,), 16.0))       # half of max_span - ramp
    attn = AdaptiveSpanAttention(d_model=D, n_heads=H, max_span=40, ramp=8, init_span=4.0)
    torch.testing.assert_close(attn.spans, torch.full((H,), 4.0))
    loss = attn.span_loss()
    torch.testing.assert_close(loss, torch.tensor(4.0))
    loss.backward()
    assert (attn.span_logit.grad > 0).all()                              # the penalty shrinks spans


@pytest.mark.parametrize("name,params", [("local", {"window": 37}), ("local", {"window": 100}),
                                         ("sparse", {"window": 40, "stride": 7}),
                                         ("sparse", {"window": 2, "stride": 1})])
def test_covering_band_equals_full(name, params):
    full, attn = make("full").eval(), make(name, **params).eval()
    attn.load_state_dict(full.state_dict())
    x, valid = batch([37, 20, 5])
    torch.testing.assert_close(attn(x, valid)[valid], full(x, valid)[valid], atol=1e-5, rtol=1e-5)


def test_linformer_projection():
    attn = LinformerAttention(d_model=D, n_heads=H, k=8, resolution=24)
    valid = torch.arange(50)[None] < torch.tensor([50, 8, 3, 13])[:, None]
    pk, pv = attn.projection(valid)
    assert pk.shape == pv.shape == (4, 8, 50)
    assert (pk[~valid[:, None, :].expand_as(pk)] == 0).all()              # padding gets no weight
    torch.testing.assert_close(pk.sum(-1), torch.ones(4, 8))             # pooling init: convex rows
    torch.testing.assert_close(pk[1, :, :8], torch.eye(8))              # L == k: identity
    torch.testing.assert_close(pk[2, :, :3], attn.projection(valid[2:3, :3])[0][0])  # depends on L only


def test_linformer_with_l_equal_k_equals_full():
    full, attn = make("full").eval(), make("linformer", k=37, resolution=74).eval()
    attn.load_state_dict(full.state_dict(), strict=False)
    x, valid = batch([37])
    torch.testing.assert_close(attn(x, valid), full(x, valid), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,a,b", [("local", {"window": 2}, {"window": 6}),
                                      ("sparse", {"window": 3, "stride": 4}, {"window": 3, "stride": 9}),
                                      ("sparse", {"window": 3, "stride": 4}, {"window": 5, "stride": 4}),
                                      ("adaptive", {"max_span": 12, "ramp": 4}, {"max_span": 20, "ramp": 4}),
                                      ("adaptive", {"max_span": 12, "ramp": 4}, {"max_span": 12, "ramp": 2}),
                                      ("adaptive", {"max_span": 12, "ramp": 4}, {"max_span": 12, "ramp": 4,
                                                                                  "init_span": 1.0}),
                                      ("linformer", {"k": 4}, {"k": 8}),
                                      ("linformer", {"k": 4, "resolution": 6}, {"k": 4, "resolution": 7})])
def test_each_parameter_changes_the_output(name, a, b):
    x, valid = batch([37, 20])
    assert not torch.allclose(make(name, **a).eval()(x, valid)[valid], make(name, **b).eval()(x, valid)[valid])


@pytest.mark.parametrize("name,params,word", [
    ("local", {"window": 0}, "window"), ("local", {"window": 2.5}, "window"), ("local", {"window": True}, "window"),
    ("sparse", {"stride": 0}, "stride"), ("sparse", {"window": -1}, "window"),
    ("linformer", {"k": 0}, "k"), ("linformer", {"resolution": 0}, "resolution"),
    ("adaptive", {"ramp": 0}, "ramp"), ("adaptive", {"max_span": 32, "ramp": 32}, "max_span"),
    ("adaptive", {"max_span": 40, "ramp": 8, "init_span": 32}, "init_span"),
    ("adaptive", {"init_span": 0}, "init_span")])
def test_bad_values_name_the_parameter(name, params, word):
    with pytest.raises(ValueError, match=rf"\b{word}\b"):
        make(name, **params)


def test_build_attention_errors():
    with pytest.raises(ConfigError, match="linformer"):
        build_attention("lin", d_model=D, n_heads=H, dropout=0.0, rope=True)
    with pytest.raises(ConfigError, match="windw"):
        build_attention("local", d_model=D, n_heads=H, dropout=0.0, rope=True, params={"windw": 3})
    for name, cls in ATTENTION.items():
        assert issubclass(cls, SelfAttention), name
