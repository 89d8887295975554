"""SpeechBrain ECAPA-TDNN: a random-weight model saved in SpeechBrain's format, imported, gives SpeechBrain's own
embeddings (1e-4) and features; bad folders are one-line errors naming the file and what differs."""
from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch

import spkid
from spkid.cli import main
from spkid.errors import CheckpointError
from spkid.importers.speechbrain import import_speechbrain

from sbref import speechbrain

CHANNELS = [64, 64, 64, 64, 192]
YAML = """
n_mels: 80
pretrained_path: speechbrain/spkrec-ecapa-voxceleb
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: {channels}
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 128
    lin_neurons: 48
mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False
modules:
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    compute_features: !ref <compute_features>
    embedding_model: !ref <embedding_model>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
"""


def _reference(sb, seed: int = 0):
    torch.manual_seed(seed)
    m = sb.ECAPA_TDNN(80, channels=CHANNELS, lin_neurons=48).eval()
    with torch.no_grad():                       # trained-looking BatchNorm statistics, not the identity
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.normal_(0, 0.5)
                mod.running_var.uniform_(0.5, 2)
                mod.weight.normal_(1, 0.2)
                mod.bias.normal_(0, 0.2)
    return m


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    sb = speechbrain()
    d = tmp_path_factory.mktemp("sb")
    ref = _reference(sb)
    torch.save(ref.state_dict(), d / "embedding_model.ckpt")     # SpeechBrain's checkpoint format: a state dict
    (d / "hyperparams.yaml").write_text(YAML.format(channels=CHANNELS))
    import_speechbrain(d, d / "ecapa.ckpt", licence="Apache-2.0")
    return {"dir": d, "ref": ref, "sb": sb, "ckpt": d / "ecapa.ckpt"}


def _sb_embed(f, wav: torch.Tensor) -> torch.Tensor:
    fb, norm = f["sb"].Fbank(n_mels=80), f["sb"].InputNormalization(norm_type="sentence", std_norm=False)
    with torch.no_grad():
        return f["ref"](norm(fb(wav[None]), torch.ones(1)), torch.ones(1))[0, 0]


def test_fbank_matches_speechbrain(folder):
    g = torch.Generator().manual_seed(1)
    model = spkid.load(folder["ckpt"], "cpu")
    for n in (401, 16000, 37123):
        wav = torch.randn(n, generator=g) * 0.1
        ref = folder["sb"].Fbank(n_mels=80)(wav[None])[0]
        assert (model.features([wav])[0] - ref).abs().max() < 1e-4


def test_embeddings_match_speechbrain_within_1e4(folder):
    g = torch.Generator().manual_seed(2)
    model = spkid.load(folder["ckpt"], "cpu")
    for n in (4000, 24011, 48000):
        wav = torch.randn(n, generator=g) * 0.1
        got = model.embed_raw(model.features([wav]))[0]
        assert (got - _sb_embed(folder, wav)).abs().max() < 1e-4


def test_padded_batch_gives_the_lone_embeddings(folder):
    model = spkid.load(folder["ckpt"], "cpu")
    g = torch.Generator().manual_seed(3)
    feats = model.features([torch.randn(n, generator=g) * 0.1 for n in (9000, 30000, 1600)])
    together = model.net.embed(*_pad(feats))
    alone = torch.cat([model.net.embed(f[None], torch.tensor([f.shape[0]])) for f in feats])
    assert (together - alone).abs().max() < 1e-4


def _pad(feats):
    from spkid.data.sampler import pad_batch
    return pad_batch(feats)


@pytest.mark.shared
def test_held_out_real_clips_match_speechbrain(folder):
    from spkid.audio.io import load_audio
    clips = sorted(glob.glob(str(Path(__file__).resolve().parents[3] / "shared/data/fsdd/*/*_1[0-2].flac")))[:6]
    if not clips:
        pytest.skip("../shared/data/fsdd not present")
    model = spkid.load(folder["ckpt"], "cpu")
    model.vad = False
    for c in clips:
        wav = load_audio(Path(c), 16000)
        assert (model.embed_raw(model.features([c]))[0] - _sb_embed(folder, wav)).abs().max() < 1e-4


def test_imported_model_is_spkids_own_and_exports(folder, tmp_path):
    assert main(["info", str(folder["ckpt"])]) == 0
    out = tmp_path / "ecapa.onnx"
    assert main(["export", str(folder["ckpt"]), "--onnx", str(out)]) == 0 and out.is_file()
    m, o = spkid.load(folder["ckpt"], "cpu"), spkid.load(folder["ckpt"], runtime="onnx", threads=1)
    x = [torch.randn(120, 80)]
    assert (m.embed(x) - o.embed(x)).abs().max() < 1e-4
    with pytest.raises(spkid.errors.SpkidError, match="no classes to predict"):
        m.predict(x)


def _folder_with(tmp_path, yaml: str, weights: bytes | None = None) -> Path:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "hyperparams.yaml").write_text(yaml)
    if weights is not None:
        (d / "embedding_model.ckpt").write_bytes(weights)
    return d


@pytest.mark.parametrize("edit, message", [
    (lambda y: y + "evil: !apply:os.system [echo hi]\n", r"hyperparams.yaml: evil: !apply:os.system asks to run code"),
    (lambda y: y + "net: !new:torch.nn.Linear [3, 4]\n", r"hyperparams.yaml: net: !new:torch.nn.Linear builds"),
    (lambda y: y.replace("kernel_sizes: [5, 3, 3, 3, 1]", "kernel_sizes: [5, 3, 5, 3, 1]"), r"kernel_sizes"),
    (lambda y: y.replace("std_norm: False", "std_norm: True"), r"std_norm"),
    (lambda y: y.replace("lin_neurons: 48", "lin_neurons: 64"), r"embedding_model.ckpt: weights do not match"),
])
def test_bad_folders_are_one_line_errors(folder, tmp_path, edit, message):
    weights = (folder["dir"] / "embedding_model.ckpt").read_bytes()
    d = _folder_with(tmp_path, edit(YAML.format(channels=CHANNELS)), weights)
    with pytest.raises(CheckpointError, match=message) as e:
        import_speechbrain(d, tmp_path / "x.ckpt")
    assert "\n" not in str(e.value) and not (tmp_path / "x.ckpt").exists()


def test_truncated_weights_and_cli_error(folder, tmp_path, capsys):
    data = (folder["dir"] / "embedding_model.ckpt").read_bytes()
    d = _folder_with(tmp_path, YAML.format(channels=CHANNELS), data[: len(data) // 2])
    assert main(["import", "speechbrain", str(d), "-o", str(tmp_path / "x.ckpt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("spkid: error: ") and "embedding_model.ckpt: cannot read weights" in err and "\n" not in err


def test_fine_tuning_starts_from_the_imported_ecapa(folder, tmp_path):
    from spkid.config import load_config
    from spkid.training.finetune import init_config, load_init
    from spkid.models import build_model
    cfg = init_config(load_config("audio"), folder["ckpt"], explicit_model=False)
    assert cfg.model.encoder == "ecapa" and cfg.features.kind == "speechbrain"
    net = build_model(cfg, 3)
    load_init(net, cfg)
    ref = spkid.load(folder["ckpt"], "cpu").net
    x, n = torch.randn(2, 90, 80), torch.tensor([90, 60])
    net.eval()
    assert (net.embed(x, n) - ref.embed(x, n)).abs().max() < 1e-5
