"""Model contracts: shapes, padding invariance for every encoder/attention/pooling/head, masks honoured."""
import pytest
import torch

from spkid.config import apply_overrides, load_config
from spkid.models.attention import ATTENTION
from spkid.models.conformer import ConformerBlock, ConformerEncoder, ConvModule
from spkid.models.heads import CosineMarginHead
from spkid.models.masking import valid_mask
from spkid.models import POOLING
from spkid.models.speaker_net import build_model
from spkid.models.tdnn import TDNNEncoder

SMALL = ["model.d_model=32", "model.n_heads=2", "model.ffn_dim=48", "model.conv_kernel=5", "model.dropout=0.1",
         "model.pooling=mean"]


def _padding_invariance(net, n_mels=40, lengths=(37, 20, 3, 1)):
    torch.manual_seed(1)
    net.eval()
    L = torch.tensor(lengths)
    x = torch.randn(len(lengths), max(lengths), n_mels)
    x[valid_mask(L, x.shape[1]) == 0] = 1e4          # garbage in the padding must not matter
    batch = net.embed(x, L)
    for i, n in enumerate(lengths):
        alone = net.embed(x[i:i + 1, :n], L[i:i + 1])
        assert torch.allclose(alone, batch[i:i + 1], atol=1e-5), (i, (alone - batch[i]).abs().max())
    return batch


@pytest.mark.parametrize("encoder", ["conformer", "transformer"])
@pytest.mark.parametrize("attention", sorted(ATTENTION))
def test_padding_invariance_every_encoder_and_attention(encoder, attention):
    sets = [x for x in SMALL if encoder == "conformer" or not x.startswith("model.conv_kernel")]
    cfg = apply_overrides(load_config("conformer"), sets + [f"model.encoder={encoder}", f"model.attention={attention}"])
    out = _padding_invariance(build_model(cfg, 5))
    assert out.shape == (4, 32)


@pytest.mark.parametrize("pooling", sorted(POOLING))
@pytest.mark.parametrize("subsample", [1, 2, 4])
@pytest.mark.parametrize("norm", ["global", "cmn", "none"])
def test_padding_invariance_pooling_subsampling_norm(pooling, subsample, norm):
    cfg = apply_overrides(load_config("conformer"), SMALL + [f"model.pooling={pooling}", f"model.subsample={subsample}",
                                                           f"model.norm={norm}", "model.embed_dim=24"])
    assert _padding_invariance(build_model(cfg, 5)).shape == (4, 24)


def test_hw4_sample_model_is_post_norm_single_layer_and_padding_invariant():
    cfg = load_config("hw4-sample")
    net = build_model(cfg, 600)
    assert len(net.encoder.blocks) == 1 and net.encoder.blocks[0].norm_first is False
    assert net.head.fc.out_features == 600 and net.subsample.proj.out_features == 80
    _padding_invariance(net)


@pytest.mark.parametrize("subsample", [1, 2, 4])
@pytest.mark.parametrize("pooling", sorted(POOLING))
def test_padding_invariance_tdnn(subsample, pooling):
    sets = ["model.d_model=32", "model.agg_dim=48", f"model.subsample={subsample}", f"model.pooling={pooling}"]
    cfg = apply_overrides(load_config("default"), sets)
    net = build_model(cfg, 5)
    # non-trivial BatchNorm statistics, so eval mode is not an identity normalisation
    net.train()
    with torch.no_grad():
        net.embed(torch.randn(8, 50, 40) * 3 + 1, torch.full((8,), 50))
    assert net.encoder.stem.bn.running_mean.abs().sum() > 0
    out = _padding_invariance(net)
    assert out.shape == (4, POOLING.build(pooling, 48).out_dim)   # pooled over agg_dim=48 channels


def test_tdnn_shapes_dilations_and_padded_frames_zero():
    enc = TDNNEncoder(d_model=16, n_layers=3, kernel=3, out_dim=24).eval()
    x, L = torch.randn(3, 37, 16), torch.tensor([37, 11, 2])
    valid = valid_mask(L, 37)
    y = enc(x, valid)
    assert y.shape == (3, 37, 24) and enc.out_dim == 24
    assert (y[~valid] == 0).all()
    assert [b.layers[1].conv.dilation[0] for b in enc.blocks] == [2, 3, 4]
    x2 = x.clone()
    x2[1, 11:] = 99.0                                   # what lies past the end must not leak in
    assert torch.allclose(enc(x2, valid)[1, :11], y[1, :11], atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        TDNNEncoder(d_model=16, n_layers=1, kernel=4, out_dim=8)


def test_conformer_shapes_and_padded_frames_zero():
    enc = ConformerEncoder(d_model=16, n_heads=2, n_layers=3, ffn_dim=32, conv_kernel=7, dropout=0.0)
    x, L = torch.randn(3, 37, 16), torch.tensor([37, 11, 2])
    valid = valid_mask(L, 37)
    y = enc(x, valid)
    assert y.shape == (3, 37, 16)
    assert (y[~valid] == 0).all()
    assert len(enc.blocks) == 3


def test_conv_module_does_not_leak_padding_and_rejects_even_kernel():
    conv = ConvModule(8, 5, 0.0).eval()
    x, L = torch.randn(2, 12, 8), torch.tensor([12, 6])
    valid = valid_mask(L, 12)
    a = conv(x, valid)[1, :6]
    x2 = x.clone()
    x2[1, 6:] = 99.0
    assert torch.allclose(conv(x2, valid)[1, :6], a)
    with pytest.raises(ValueError, match="odd"):
        ConvModule(8, 4, 0.0)


def test_dropout_is_applied_in_training_only():
    blk = ConformerBlock(d_model=16, n_heads=2, ffn_dim=32, conv_kernel=3, dropout=0.5)
    x, valid = torch.randn(2, 10, 16), torch.ones(2, 10, dtype=torch.bool)
    blk.train()
    assert not torch.allclose(blk(x, valid), blk(x, valid))
    blk.eval()
    assert torch.allclose(blk(x, valid), blk(x, valid))


@pytest.mark.parametrize("name", sorted(POOLING))
def test_pooling_out_dim(name):
    pool = POOLING.build(name, 12)
    assert pool(torch.randn(3, 7, 12), torch.ones(3, 7, dtype=torch.bool)).shape == (3, pool.out_dim)


@pytest.mark.parametrize("angular", [False, True])
def test_margin_heads_lower_target_logit_only_with_labels(angular):
    head = CosineMarginHead(8, 5, margin=0.3, scale=10.0, angular=angular)
    emb, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    plain, marg = head(emb), head(emb, y)
    tgt = torch.arange(4)
    assert (marg[tgt, y] < plain[tgt, y]).all()
    off = torch.ones_like(plain, dtype=torch.bool)
    off[tgt, y] = False
    assert torch.allclose(marg[off], plain[off])
    head.margin = 0.0
    assert torch.allclose(head(emb, y), plain)


def test_every_config_field_changes_the_model():
    base = load_config("tiny")
    ref = build_model(base, 4)
    n_ref = sum(p.numel() for p in ref.parameters())
    for change in ["model.n_layers=2", "model.ffn_dim=96", "model.d_model=48", "model.conv_kernel=9",
                   "model.embed_dim=16", "model.pooling=asp", "model.subsample=4", "model.encoder=transformer,model.conv_kernel=15"]:
        other = build_model(apply_overrides(base, change.split(",")), 4)
        assert sum(p.numel() for p in other.parameters()) != n_ref, change
    tdnn = load_config("default")
    n_tdnn = sum(p.numel() for p in build_model(tdnn, 4).parameters())
    for change in ["model.n_layers=2", "model.agg_dim=96", "model.d_model=48", "model.tdnn_kernel=5"]:
        other = build_model(apply_overrides(tdnn, [change]), 4)
        assert sum(p.numel() for p in other.parameters()) != n_tdnn, change
