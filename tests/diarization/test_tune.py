"""spkid tune-diarization: a model's own merge_raw / resplit chosen on development recordings of given speakers,
stored in a copy of its checkpoint, and used by diarize unless a flag or a config says otherwise."""
import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from spkid.audio.synth import make_voice, synth_utterance
from spkid.diarization import tune
from spkid.diarization.pipeline import DiarizeConfig, model_config
from spkid.training.checkpoint import checkpoint_fingerprint, load_checkpoint

from diar_helpers import run_cli


@pytest.fixture(scope="module")
def speakers(tmp_path_factory):
    """Three speaker folders of four 3-s synthetic utterances each (WAV), and a folder with one speaker only."""
    root = tmp_path_factory.mktemp("tune") / "voices"
    for i, (seed, f0) in enumerate(((3, 95.0), (11, 230.0), (5, 150.0))):
        v = dataclasses.replace(make_voice(np.random.default_rng([seed])), f0=f0)
        (root / f"spk{i}").mkdir(parents=True)
        for j in range(4):
            sf.write(root / f"spk{i}" / f"u{j}.wav", synth_utterance(v, np.random.default_rng([seed, j]), 16000, 3.0),
                     16000)
    lone = root.parent / "lone"
    (lone / "only").mkdir(parents=True)
    sf.write(lone / "only" / "u.wav", synth_utterance(make_voice(np.random.default_rng(1)), np.random.default_rng(2),
                                                      16000, 3.0), 16000)
    return {"root": root, "lone": lone}


@pytest.fixture
def small_grid(monkeypatch):
    monkeypatch.setattr(tune, "MERGE_RAW", (0.0, 0.5, 0.88, 0.99))
    monkeypatch.setattr(tune, "RESPLIT", (0.0, 0.75))


def test_the_defaults_are_on_the_grids():
    d = DiarizeConfig()
    assert d.merge_raw in tune.MERGE_RAW and d.resplit in tune.RESPLIT


def test_plans_draw_conversations_of_two_to_five_and_monologues_of_one():
    names = {f"s{i}": (lambda: []) for i in range(7)}
    ps = tune.plans(names, 20, 5, seed=1)
    conv = [p for p in ps if p[1] == "conversation"]
    mono = [p for p in ps if p[1] == "monologue"]
    assert len(conv) == 20 and len(mono) == 5
    assert all(2 <= len(p[2]) <= 5 and len(set(p[2])) == len(p[2]) and 60 <= p[3] <= 120 and 0 <= p[4] <= 0.15
               for p in conv)
    assert {len(p[2]) for p in conv} == {2, 3, 4, 5} and all(len(p[2]) == 1 and p[3] == 60 for p in mono)
    assert ps == tune.plans(names, 20, 5, seed=1) and ps != tune.plans(names, 20, 5, seed=2)
    with pytest.raises(Exception, match="at least 2 speakers"):
        tune.plans({"a": lambda: []}, 1, 1)


def test_tune_writes_the_lowest_der_pair_and_diarize_uses_it(trained, speakers, small_grid, tmp_path, capsys):
    out = tmp_path / "tuned.ckpt"
    rc, text, _ = run_cli(capsys, "tune-diarization", speakers["root"], "--synthetic", "1", "--conversations", "2",
                       "--monologues", "2", "--checkpoint", trained["ckpt"], "-o", out, "--quiet")
    assert rc == 0 and f"wrote {out}" in text and "(kept)" in text
    ckpt, orig = load_checkpoint(out), load_checkpoint(trained["ckpt"])
    own = ckpt["diarization"]
    assert checkpoint_fingerprint(ckpt) == checkpoint_fingerprint(orig)         # registries made with it still fit
    assert "4 speakers (" in own["tuned_on"] and "1 synthetic" in own["tuned_on"]
    assert own["merge_raw"] in tune.MERGE_RAW and own["resplit"] in tune.RESPLIT
    # the kept pair is the sweep's lowest DER (the table's first row)
    first = next(line for line in text.splitlines() if "(kept)" in line)
    ders = [float(line.rsplit("|", 2)[1].strip(" %")) for line in text.splitlines() if line.startswith("| 0.")]
    assert first.startswith(f"| {own['merge_raw']:.2f} (kept) | {own['resplit']:.2f} |") and ders[0] == min(ders)
    rc, info, _ = run_cli(capsys, "info", out)
    assert rc == 0 and f"merge_raw {own['merge_raw']:.2f}, resplit {own['resplit']:.2f} (tuned on" in info


def test_diarize_takes_the_models_own_cosines_unless_given(trained, tmp_path, capsys, monkeypatch):
    import spkid.diarization.batch as batch
    from spkid.errors import SpkidError
    ckpt = load_checkpoint(trained["ckpt"])
    ckpt.pop("spkid")
    ckpt["diarization"] = {"merge_raw": 0.61, "resplit": 0.62, "tuned_on": "a test"}
    from spkid.training.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "own.ckpt", ckpt)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    seen = []

    def fake(files, embedder, cfg, **kw):
        seen.append(cfg)
        raise SpkidError("stop here")
    monkeypatch.setattr(batch, "diarize_files", fake)
    base = ["diarize", wav, "-o", tmp_path / "x.rttm", "--quiet", "--checkpoint"]
    assert run_cli(capsys, *base, tmp_path / "own.ckpt")[0] == 1
    assert run_cli(capsys, *base, tmp_path / "own.ckpt", "--merge-raw", "0.9")[0] == 1
    assert run_cli(capsys, *base, trained["ckpt"])[0] == 1
    own, given, plain = seen
    rc, _, err = run_cli(capsys, *base[:-2], "--checkpoint", trained["ckpt"])     # not quiet: the hint, once
    assert rc == 1 and err.count("carries no diarization cosines of its own") == 1 and "tune-diarization" in err
    rc, _, err = run_cli(capsys, *base[:-2], "--checkpoint", tmp_path / "own.ckpt")
    assert rc == 1 and "carries no diarization" not in err
    assert (own.merge_raw, own.resplit) == (0.61, 0.62)
    assert (given.merge_raw, given.resplit) == (0.9, 0.62)
    assert (plain.merge_raw, plain.resplit) == (DiarizeConfig().merge_raw, DiarizeConfig().resplit)
    # the Python API: no config -> the model's own; a config given is used as it is
    emb = batch.load_embedder(tmp_path / "own.ckpt", device="cpu")
    assert (model_config(emb).merge_raw, model_config(emb, resplit=0.0).resplit) == (0.61, 0.0)


def test_tune_bad_input_is_one_line(trained, speakers, tmp_path, capsys):
    args = ["tune-diarization", "--checkpoint", trained["ckpt"], "--quiet", "-o"]
    rc, _, err = run_cli(capsys, *args, tmp_path / "a.ckpt", speakers["lone"])
    assert rc == 1 and "at least 2 speakers, found 1" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_cli(capsys, *args, tmp_path / "a.ckpt", tmp_path / "missing")
    assert rc == 1 and "missing: not a folder" in err
    rc, _, err = run_cli(capsys, *args, trained["ckpt"], speakers["root"])
    assert rc == 1 and len(err.strip().splitlines()) == 1
    rc, _, err = run_cli(capsys, *args, tmp_path / "a.ckpt", "--conversations", "0", "--monologues", "0")
    assert rc == 1 and "recordings are needed" in err
    (tmp_path / "out").mkdir()
    rc, _, err = run_cli(capsys, *args, tmp_path / "out", speakers["root"])
    assert rc == 1 and err.strip() == f"spkid: error: {tmp_path / 'out'}: cannot write: Is a directory (give the " \
        "path of a file to write)"
    silent = tmp_path / "silent"
    for s in ("x", "y"):
        (silent / s).mkdir(parents=True)
        sf.write(silent / s / "u.wav", np.zeros(32000, np.float32), 16000)
    rc, _, err = run_cli(capsys, *args, tmp_path / "a.ckpt", silent, "--conversations", "1", "--monologues", "0")
    assert rc == 1 and "no clip with at least 0.5 s of speech" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a.ckpt").exists()


def test_a_bad_diarization_entry_is_refused_in_one_line(trained, tmp_path, capsys):
    ckpt = load_checkpoint(trained["ckpt"])
    ckpt["diarization"] = {"merge_raw": 1.5}
    torch.save(ckpt, tmp_path / "bad.ckpt")
    rc, _, err = run_cli(capsys, "info", tmp_path / "bad.ckpt")
    assert rc == 1 and "'diarization' merge_raw 1.5: a cosine in [0, 1)" in err
    ckpt["diarization"] = {"threshold": 0.5}
    torch.save(ckpt, tmp_path / "bad.ckpt")
    rc, _, err = run_cli(capsys, "info", tmp_path / "bad.ckpt")
    assert rc == 1 and "'diarization' entry must hold" in err


def test_tune_keeps_the_cosine_that_holds_a_monologue_whole_and_two_voices_apart(tmp_path, monkeypatch):
    """Made-up analyses: a monologue whose windows fall in two groups (uncentred means at cosine 0.85) is one speaker
    only with a raw merge below 0.85; a conversation of two unrelated voices (cosine 0) stays two at every cosine
    but 0: tune keeps a merge_raw in (0, 0.85)."""
    from spkid.diarization.pipeline import Analysis
    from spkid.diarization.rttm import Segment
    monkeypatch.setattr(tune, "MERGE_RAW", (0.0, 0.80, 0.88))
    monkeypatch.setattr(tune, "RESPLIT", (0.0, 0.75))
    monkeypatch.setattr(tune, "DiarizeConfig", lambda **kw: DiarizeConfig(**{"overlap": False, "hmm": False, **kw}))
    rng = np.random.default_rng(0)
    v, c1, c2, a, b = np.linalg.qr(rng.standard_normal((16, 5)))[0].T       # 5 orthonormal directions
    starts = np.arange(0, 16000 * 30 - 24000 + 1, 12000)                    # 1.5 s windows every 0.75 s over 30 s
    win, half = np.stack([starts, starts + 24000], 1), (starts >= 16000 * 15)[:, None]
    k = np.sqrt(1 / 0.85 - 1)                                               # cos(v + k c1, v + k c2) = 0.85

    def rec(name, kind, x, y, spk):
        emb = (np.where(half, y, x) + 0.03 * rng.standard_normal((len(starts), 16))).astype(np.float32)
        ref = [Segment(name, 0.0, 15.0, spk[0]), Segment(name, 15.0, 30.0, spk[1])]
        return tune.Recording(name, kind, ref, len(set(spk)), Analysis(tmp_path / name, 30.0, [(0, 480000)], win, emb))
    recs = [rec("c", "conversation", a, b, "ab"), rec("m", "monologue", v + k * c1, v + k * c2, "vv")]
    result = tune.tune(recs, "made up")
    assert (result.best["merge_raw"], result.best["conversation"][1], result.best["monologue"]) == (0.80, 0.0,
                                                                                                   (0.0, 0.0))
    assert result.default["monologue"][1] == 1.0 and result.default["all"] > result.best["all"]
    assert len(result.rows) == 6 and "| 0.80 (kept) |" in tune.table(result)
