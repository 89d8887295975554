"""benchmarks/openset.py end to end on generated data: split, HW4 views, training subprocess, verification,
registry identification, thresholds, speed, markdown section. No ../shared needed."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_hw4

ROOT = Path(__file__).resolve().parents[2]


def _load_bench():
    spec = importlib.util.spec_from_file_location("openset_bench", ROOT / "benchmarks" / "openset.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                       # dataclasses look their module up while being built
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()


def test_split_is_seeded_disjoint_and_sized():
    names = [f"s{i:03d}" for i in range(250)]
    a = bench.split_speakers(names, seed=0)
    assert (len(a.train), len(a.enrolled), len(a.impostors)) == (200, 40, 10)
    assert set(a.train) | set(a.enrolled) | set(a.impostors) == set(names)
    assert not (set(a.train) & set(a.enrolled)) and not (set(a.enrolled) & set(a.impostors))
    assert bench.split_speakers(list(reversed(names)), seed=0) == a       # order of the input does not matter
    assert bench.split_speakers(names, seed=1) != a
    with pytest.raises(ValueError):
        bench.split_speakers(names[:10], n_heldout=10)
    with pytest.raises(ValueError):
        bench.split_speakers(names, n_heldout=5, n_impostors=5)


def test_enrollment_thresholds_separate_clustered_speakers():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    enroll = {}
    for k, c in enumerate(centres):
        e = c + 0.3 * rng.normal(size=(5, 16))
        enroll[f"s{k}"] = (e / np.linalg.norm(e, axis=1, keepdims=True), [f"u{k}{i}" for i in range(5)])
    t_pairs, t_open = bench.enrollment_thresholds(enroll)
    embs = np.concatenate([e for e, _ in enroll.values()])
    lab = np.repeat(np.arange(4), 5)
    sim = embs @ embs.T
    same, diff = sim[(lab[:, None] == lab[None]) & ~np.eye(20, dtype=bool)], sim[lab[:, None] != lab[None]]
    assert diff.max() < t_pairs <= same.min() + 1e-6      # separable: the EER point lies in the gap (float32 scores)
    assert diff.max() < t_open


def test_write_section_replaces_between_markers(tmp_path):
    md = tmp_path / "results.md"
    md.write_text("# Results\n\nintro\n\n<!-- openset:start -->\nold\n<!-- openset:end -->\n\ntail\n")
    bench.write_section(md, "new table\n")
    bench.write_section(md, "newer table\n")
    text = md.read_text()
    assert text.count("<!-- openset:start -->") == 1 and "newer table" in text and "old" not in text
    assert text.startswith("# Results\n\nintro") and text.endswith("tail\n")
    fresh = tmp_path / "other.md"
    bench.write_section(fresh, "t\n")
    assert fresh.read_text() == "# Results\n\n<!-- openset:start -->\nt\n<!-- openset:end -->\n"


def test_end_to_end_on_generated_data(tmp_path, capsys):
    from spkid.data.hw4 import read_testdata, read_train
    from spkid.scoring.speaker_db import SpeakerDB
    data = make_hw4(tmp_path / "data", n_speakers=12, per_speaker=8, n_test=24, seed=1)["root"]
    work, md = tmp_path / "work", tmp_path / "results.md"
    args = ["--data", str(data), "--work", str(work), "--threads", "1", "--heldout", "5", "--impostors", "2",
            "--enroll", "4", "--speed-seconds", "0.05"]
    assert bench.main(args + ["--config", "tiny", "--steps", "30", "--write", str(md)]) == 0
    out = capsys.readouterr().out
    r = json.loads((work / "result.json").read_text())
    split = bench.Split(**json.loads((work / "split.json").read_text()))

    # views: disjoint speakers, relative feature paths that are the shared files (hard links)
    _, train_spk, _ = read_train(work / "train7")
    _, held_spk, held_utts = read_train(work / "heldout5")
    assert sorted(train_spk) == split.train and sorted(held_spk) == sorted(split.enrolled + split.impostors)
    assert all((work / "heldout5" / u.feature_path).samefile(data / u.feature_path) for u in held_utts)
    assert len(read_testdata(work / "train7")[1]) == r["split"]["train_speaker_queries"] > 0

    s = r["split"]
    assert (s["enrolled"], s["impostors"], s["enrolled_queries"], s["impostor_queries"]) == (3, 2, 12, 16)
    v = r["verification"]
    assert v["n_speakers"] == 5 and v["n_utterances"] == 40 and 0 <= v["eer"] <= 1
    assert [row["source"] for row in r["identification"]] == ["eer", "enrollment pairs", "enrollment open set"]
    for row in r["identification"]:
        assert row["open_set_acc"] <= row["closed_set_acc"]
        assert row["open_set_acc"] + row["rejected"] + row["wrong_accepted"] == pytest.approx(1.0)
        assert 0 <= row["far_impostors"] <= 1 and 0 <= row["far_train_speakers"] <= 1
    assert r["identification"][0]["threshold"] == v["threshold"]
    with SpeakerDB.open(work / "registry.db") as reg:
        assert reg.speakers() == [(spk, 4) for spk in split.enrolled]
        assert (reg.threshold, reg.threshold_source) == (v["threshold"], "eer")
    sp = r["speed"]
    assert sp["threads"] == 1 and sp["batched_utt_per_s"] > 0 and sp["single_utt_per_s"] > 0
    assert r["train"]["steps"] == 30 and r["train"]["speakers"] == 7
    section = md.read_text()
    assert section.count("<!-- openset:start -->") == 1 and "| eer |" in section and "| eer |" in out

    # --checkpoint reuses the run: the same verification numbers; a checkpoint of another split is refused
    ckpt = work / "run" / "last.ckpt"
    assert bench.main(args + ["--checkpoint", str(ckpt)]) == 0
    again = json.loads((work / "result.json").read_text())
    assert again["verification"] == v and again["identification"] == r["identification"]
    assert bench.main(args + ["--checkpoint", str(ckpt), "--seed", "1"]) == 1
    assert "not trained on" in capsys.readouterr().err


def test_skips_without_data(tmp_path, capsys):
    assert bench.main(["--data", str(tmp_path / "missing"), "--work", str(tmp_path / "w")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "w").exists()
