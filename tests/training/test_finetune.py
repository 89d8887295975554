"""Fine-tuning (``spkid train NEW --init CKPT --freeze N``) and what a finished run stores for the open-set back
end (training-speaker cohort, calibration)."""
import json

import pytest
import torch

from conftest import make_hw4
from spkid.cli import main
from spkid.config import apply_overrides, load_config
from spkid.errors import ConfigError
from spkid.models import build_model
from spkid.training.checkpoint import load_checkpoint
from spkid.training.finetune import frozen_modules, init_config, load_init
from spkid.training.loop import train

SMALL_TDNN = ["model.d_model=32", "model.agg_dim=48", "model.n_layers=2", "train.steps=12", "train.max_minutes=0",
              "train.amp=none", "data.batch_size=8", "train.warmup_steps=2", "data.val_per_speaker=2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small TDNN trained on 4 speakers, and data of 3 other speakers to fine-tune on."""
    root = tmp_path_factory.mktemp("finetune")
    old = make_hw4(root / "old", n_speakers=4, per_speaker=6, seed=1)
    new = make_hw4(root / "new", n_speakers=3, per_speaker=6, seed=2, prefix="new")
    cfg = apply_overrides(load_config("default"), SMALL_TDNN)
    r = train(old["root"], root / "run", cfg, progress=False)
    return {"ckpt": r.last, "best": r.best, "new": new["root"], "cfg": cfg, "root": root}


def test_finished_run_stores_cohort_and_calibration(base):
    for path in (base["ckpt"], base["best"]):
        ck = load_checkpoint(path)
        cohort, cal = ck["cohort"], ck["calibration"]
        assert cohort["means"].shape == cohort["centred"].shape == (4, 48 * 2)     # asp pooling: mean + std
        assert torch.allclose(cohort["means"].norm(dim=1), torch.ones(4), atol=1e-5)
        assert cohort["source"] == "4 training speakers, 24 utterances (8 validation)"
        assert "validation pairs of the training speakers (8 utterances" in cal["source"] and cal["a"] > 0
    from spkid.scoring.backend import checkpoint_extras
    cohort, cal = checkpoint_extras(base["ckpt"])
    assert cohort.asnorm(centred=True).cohort.shape == (4, 96) and cal.calibration.a > 0


def test_init_copies_everything_but_the_head(base):
    cfg = init_config(apply_overrides(load_config("default"), ["train.amp=none"]), base["ckpt"], explicit_model=False)
    assert cfg.model == base["cfg"].model and cfg.train.init == str(base["ckpt"].resolve())
    net = build_model(cfg, 3)
    ck = load_init(net, cfg)
    state = net.state_dict()
    body = [k for k in state if not k.startswith("head.")]
    assert body and all(torch.equal(state[k], ck["model"][k]) for k in body)   # incl. input norm statistics
    assert state["head.fc.weight"].shape[0] == 3 != ck["model"]["head.fc.weight"].shape[0]


def test_a_config_with_another_model_is_refused(base):
    other = apply_overrides(load_config("default"), ["model.d_model=64"])
    with pytest.raises(ConfigError, match=r"model.d_model=64 \(checkpoint: 32\)"):
        init_config(other, base["ckpt"], explicit_model=True)
    cfg = apply_overrides(base["cfg"], [f"train.init={base['ckpt']}", "model.d_model=64"])
    with pytest.raises(ConfigError, match="fine-tuning keeps the checkpoint's model"):
        train(base["new"], base["root"] / "refused", cfg, progress=False)


def test_frozen_blocks_do_not_move_and_the_rest_learns(base, tmp_path):
    cfg = apply_overrides(base["cfg"], [f"train.init={base['ckpt']}", "train.freeze=2", "train.steps=8"])
    r = train(base["new"], tmp_path / "ft", cfg, progress=False)
    start = load_checkpoint(base["ckpt"])["model"]
    after = load_checkpoint(r.last)
    net = build_model(cfg, 3)
    frozen = {f"{name}.{k}" for name, mod in net.named_modules() if mod in frozen_modules(net, 2)
              for k in mod.state_dict()}
    assert any(k.startswith("encoder.stem.") for k in frozen) and any(k.startswith("encoder.blocks.0.") for k in frozen)
    assert not any(k.startswith("encoder.blocks.1.") for k in frozen)
    for k in frozen:                                   # weights and BatchNorm statistics alike
        assert torch.equal(after["model"][k], start[k]), k
    moved = [k for k in after["model"] if k.startswith("encoder.blocks.1.") and after["model"][k].is_floating_point()
             and not torch.equal(after["model"][k], start[k])]
    assert moved
    assert after["model"]["head.fc.weight"].shape[0] == 3 and after["speakers"] == ["new00", "new01", "new02"]
    assert after["config"]["train"]["init"] == str(base["ckpt"].resolve()) and after["config"]["train"]["freeze"] == 2


def test_cli_init_takes_the_checkpoint_model_and_a_short_budget(base, tmp_path, capsys):
    run = tmp_path / "cli_ft"
    rc = main(["train", str(base["new"]), "--out", str(run), "--init", str(base["ckpt"]), "--steps", "3",
               "--set", "train.amp=none", "--set", "data.batch_size=8", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["d_model"] == 32 and cfg["train"]["init"].endswith("last.ckpt")
    capsys.readouterr()
    rc = main(["train", str(base["new"]), "--out", str(tmp_path / "x"), "--freeze", "1"])
    assert rc == 1 and "--freeze 1: needs --init" in capsys.readouterr().err
    rc = main(["train", str(base["new"]), "--out", str(tmp_path / "y"), "--init", str(base["ckpt"]),
               "--config", "tiny"])
    err = capsys.readouterr().err
    assert rc == 1 and "fine-tuning keeps the checkpoint's model" in err and len(err.strip().splitlines()) == 1
    rc = main(["train", str(base["new"]), "--out", str(tmp_path / "z"), "--init", str(base["ckpt"]), "--freeze", "9"])
    assert rc == 1 and "the encoder has only 3 blocks to freeze" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()                     # refused before a run folder is made
    from spkid.cli import FINETUNE_MINUTES, build_parser, _finetune_config
    a = build_parser().parse_args(["train", str(base["new"]), "--out", "o", "--init", str(base["ckpt"])])
    assert _finetune_config(a, load_config("default")).train.max_minutes == FINETUNE_MINUTES == 3.0


def test_new_head_starts_at_the_new_speakers_mean_embeddings(base):
    from spkid.config import InferConfig
    from spkid.training.finetune import HEAD_SCALE, init_head_from_prototypes
    cfg = init_config(apply_overrides(load_config("default"), ["train.amp=none"]), base["ckpt"], explicit_model=False)
    net = build_model(cfg, 4)
    load_init(net, cfg)
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(60, 40, generator=g) + k for k in (0, 0, 1, 1, 2)]
    labels = [0, 0, 1, 1, 2]                                  # class 3 has no utterance: stays random
    before = net.head.fc.weight[3].clone()
    assert init_head_from_prototypes(net, feats, labels, InferConfig(), "cpu") == 3
    net.eval()
    with torch.no_grad():
        raw = torch.cat([net.embed(f[None], torch.tensor([60])) for f in feats])
    unit = torch.nn.functional.normalize(raw, dim=-1)
    w = net.head.fc.weight.detach()
    for k, rows in ((0, [0, 1]), (1, [2, 3]), (2, [4])):
        proto = torch.nn.functional.normalize(unit[rows].mean(0), dim=0)
        assert torch.allclose(torch.nn.functional.normalize(w[k], dim=0), proto, atol=1e-4)
        assert float(w[k].norm()) == pytest.approx(float(HEAD_SCALE / raw.norm(dim=-1).mean()), rel=1e-3)
    assert torch.equal(w[3], before) and torch.all(net.head.fc.bias == 0)
    with torch.no_grad():
        pred = net.head(raw)[:, :3].argmax(1)
    assert (pred == torch.tensor(labels)).float().mean() >= 0.6   # a classifier at step 0
