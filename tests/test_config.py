"""Configuration: presets are data, every setting is used or rejected, overrides are type-checked."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import make_hw4
from spkid.config import SECTIONS, RunConfig, apply_overrides, load_config, presets, unused_settings
from spkid.errors import ConfigError
from spkid.models import ATTENTION, ENCODERS, HEADS, POOLING, build_model

PRESETS = presets()


def _fields(cfg: RunConfig):
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, section)):
            yield section, f.name, getattr(getattr(cfg, section), f.name)


def _other(section: str, name: str, value):
    """A different valid-looking value for a setting."""
    choices = {"model.encoder": [e for e in ENCODERS.names() if e != "ecapa"],     # ecapa needs subsample 0 too
               "features.kind": ["logmel", "speechbrain", "kaldi", "resemblyzer"], "model.pooling": POOLING.names(), "model.head": HEADS.names(),
               "model.attention": ATTENTION.names(), "model.norm": ["global", "cmn", "none"],
               "model.subsample": [1, 2, 4], "model.pos_enc": ["rope", "none"],
               "train.amp": ["none", "bf16", "auto"], "train.device": ["cpu", "auto"],
               "train.init": ["", "runs/a/best.ckpt"]}.get(f"{section}.{name}")
    if choices:
        return next(c for c in choices if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        if name.endswith("_width"):
            return value * 2
        return value + 2 if name in ("conv_kernel", "tdnn_kernel") else value + 1
    if name in ("feat_eq", "feat_band_drop"):            # probabilities: certain, so a 2-item batch shows it
        return 1.0 if value < 1 else 0.5
    if isinstance(value, float):
        return value * 0.5 if value > 0 else 0.1
    if isinstance(value, dict):
        return {"window": 8}
    if isinstance(value, str) and name in ("noise_dir", "rir_dir", "init"):
        return "/tmp"
    if name == "codecs":
        return "gsm"
    if name == "weights":
        return "1,2"
    raise AssertionError(f"no perturbation for {section}.{name}={value!r}")


def test_presets_are_shipped_toml_files():
    assert set(PRESETS) == {"default", "audio", "base", "conformer", "hw4-sample", "hw4-gpu", "tiny",
                            "demo"}
    assert load_config("default").model.encoder == "tdnn"


def test_models_never_import_config():
    import pathlib
    import spkid.models
    for f in pathlib.Path(spkid.models.__file__).parent.glob("*.py"):
        text = f.read_text()
        assert "from spkid.config" not in text and "import spkid.config" not in text, f


@pytest.mark.parametrize("preset", PRESETS)
def test_ignored_settings_are_rejected(preset):
    cfg = load_config(preset)
    for key, _ in unused_settings(cfg):
        section, name = key.split(".")
        value = _other(section, name, getattr(getattr(cfg, section), name))
        with pytest.raises(ConfigError, match="would be ignored"):
            apply_overrides(cfg, [f"{key}={value!r}".replace("'", '"') if isinstance(value, str) else
                                  f"{key}={value}".replace("'", '"')])


def _model_fingerprint(cfg: RunConfig):
    torch.manual_seed(0)
    net = build_model(cfg, 5).train()
    n = cfg.features.n_mels
    net.set_input_stats(torch.linspace(-1, 1, n), torch.linspace(0.5, 2, n))   # as training sets them
    g = torch.Generator().manual_seed(1)
    x, lengths = torch.randn(2, 200, cfg.features.n_mels, generator=g), torch.tensor([200, 120])
    torch.manual_seed(2)
    emb, logits = net(x, lengths, torch.tensor([0, 1]))
    from spkid.audio.frontend import frontend_for
    wav = torch.randn(1, 4000, generator=g)
    wav[:, :2000] = 0                                    # silence: the power floor shows
    feats, _ = frontend_for(cfg.features)(wav, torch.tensor([4000]))
    return str(net), float(emb.detach().sum()), float(logits.detach().sum()), float(feats.sum()), tuple(feats.shape)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_model_setting_changes_the_model_or_is_rejected(preset):
    """Model, feature and augmentation settings: changing one changes the network's output, or it is an error."""
    cfg = load_config(preset)
    base = _model_fingerprint(cfg)
    for section, name, value in _fields(cfg):
        if (section not in ("model", "features", "augment") or name == "label_smoothing"   # the loss: below
                or (section == "augment" and not name.startswith(("spec_", "feat_")))):     # the sampler: below
            continue
        new = _other(section, name, value)
        d = cfg.to_dict()
        d[section][name] = new
        try:
            changed = RunConfig.from_dict(d)
        except ConfigError:
            continue
        if changed.features.n_mels > changed.features.n_fft // 2:
            continue
        assert _model_fingerprint(changed) != base, f"{preset}: {section}.{name}={new!r} changed nothing"


@pytest.mark.parametrize("preset", PRESETS)
def test_every_setting_is_read_by_training_and_inference(preset, tmp_path, monkeypatch):
    """Run the real loop (2 steps) and inference with configs that record which settings they read: each setting is
    read, or changing it from its default is rejected (so nothing is accepted and then dropped)."""
    from spkid.scoring.model import load
    from spkid.training.loop import train
    base = load_config(preset)
    sets = ["train.steps=2", "train.max_minutes=0", "data.batch_size=4", "train.amp=none", "infer.max_frames=32",
            "train.ckpt_every=1", "train.val_every=1"]
    if base.data.source == "audio":            # a small synthetic corpus, small augmentation banks
        from spkid.audio.synth import synth_corpus
        data = synth_corpus(tmp_path / "corpus", n_speakers=3, n_train=3, n_test=1, seed=0).train_dir
        sets += ["augment.noise_clips=4", "augment.n_rooms=2", "augment.codec_per_speaker=1"]
        if base.data.weights:                  # one synthetic input here (base trains on three)
            sets.append('data.weights=""')
    else:
        data = make_hw4(tmp_path / "hw4", n_speakers=3, per_speaker=3, lengths=(20, 40))["root"]
    cfg = apply_overrides(base, sets)
    read: set[str] = set()
    recording = [True]

    def recorder(section, obj):
        cls = type(obj)
        names = {f.name for f in dataclasses.fields(cls)}

        class Rec(cls):
            def __getattribute__(self, item):
                if item in names and recording[0]:
                    read.add(f"{section}.{item}")
                return object.__getattribute__(self, item)
        rec = Rec.__new__(Rec)
        rec.__dict__.update(obj.__dict__)
        return rec

    for section in SECTIONS:
        setattr(cfg, section, recorder(section, getattr(cfg, section)))
    real_to_dict = RunConfig.to_dict

    def quiet_to_dict(self):
        recording[0] = False
        try:
            return real_to_dict(self)
        finally:
            recording[0] = True
    monkeypatch.setattr(RunConfig, "to_dict", quiet_to_dict)
    r = train(data, tmp_path / "run", cfg, progress=False)
    recording[0] = False
    m = load(r.last, "cpu")
    for section in SECTIONS:                     # inference reads the checkpoint's copy of the config
        setattr(m.cfg, section, recorder(section, getattr(m.cfg, section)))
    recording[0] = True
    m.predict([torch.randn(50, cfg.features.n_mels), torch.randn(8000)])
    recording[0] = False
    never = []
    for section, name, value in _fields(cfg):
        key = f"{section}.{name}"
        if key in read:
            continue
        try:
            apply_overrides(load_config(preset), [f"{key}={_other(section, name, value)}".replace("'", '"')])
        except ConfigError:
            continue
        never.append(key)
    assert not never, f"{preset}: settings accepted but never read: {never}"


def test_overrides_are_type_checked_and_unknown_keys_named():
    cfg = load_config("tiny")
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(cfg, ["model.d_model=abc"])
    with pytest.raises(ConfigError, match="did you mean 'n_layers'"):
        apply_overrides(cfg, ["model.n_layer=3"])
    with pytest.raises(ConfigError, match="SECTION.name"):
        apply_overrides(cfg, ["d_model=3"])


def test_file_config_merges_over_a_base_preset(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('base = "conformer"\n[model]\nn_layers = 5\nattention = "local"\nattention_params = {window = 16}\n')
    cfg = load_config(str(p))
    assert cfg.name == "mine" and cfg.model.n_layers == 5 and cfg.model.d_model == 128
    assert cfg.model.attention_params == {"window": 16}
    p.write_text('[model]\nn_heads = 8\n')           # base default = tdnn: heads are ignored there
    with pytest.raises(ConfigError, match="model.n_heads=8 would be ignored"):
        load_config(str(p))
