"""The cross-domain protocol of ``benchmarks/openset.py --cross-domain`` (issue 16): its thresholds are exactly what
a registry stores, the rows and targets render, and (with ../shared) the quick mode runs end to end."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, file: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod                   # dataclasses look their module up while being built
        spec.loader.exec_module(mod)
    return sys.modules[name]


bt = _load("backend_transfer", "backend_transfer.py")
openset = _load("openset_bench_xd", "openset.py")

E = 12


def _domain(rng, names, per, offset):
    emb, lab = [], []
    for n in names:
        emb.append(rng.normal(size=E) + offset + 0.6 * rng.normal(size=(per, E)))
        lab += [n] * per
    emb = np.concatenate(emb)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), np.asarray(lab)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    shift = 1.5 * rng.normal(size=E)
    emb, lab = _domain(rng, [f"s{i}" for i in range(7)] + [f"folder:f{i}" for i in range(5)], 12, shift)
    from spkid.scoring.backend import CheckpointCohort
    c_emb, c_lab = _domain(rng, [f"c{i:02d}" for i in range(20)], 4, np.zeros(E))
    return emb, lab, CheckpointCohort.build(c_emb, c_lab, "unit")


def test_protocol_thresholds_are_the_registry_s_own(synthetic, tmp_path):
    from spkid.scoring.norm import ASNorm, DomainStats
    from spkid.scoring.speaker_db import SpeakerDB
    emb, lab, cohort = synthetic
    fold = bt.folds(lab, 2, 5, 4, max_folds=1, seed=0)[0]
    by_name = {st.name: st for st in bt.REGISTRY_SETTINGS}
    folder = emb[fold["folder_idx"]]
    for name, adapt in ((bt.DEFAULT_WITHOUT_FOLDER, None), (bt.DEFAULT_WITH_FOLDER, "folder")):
        row = bt.registry_fold(emb, lab, fold, by_name[name], cohort, 0.7)
        path = tmp_path / f"{adapt}.db"
        with SpeakerDB.create(path, model_id="m", checkpoint="c", embed_dim=E, threshold=0.7) as reg:
            if adapt:
                d = DomainStats.fit(folder)
                reg.set_adaptation(d, ASNorm(d.apply(folder), 50), "folder")
            for s in fold["enrolled"]:
                reg.enroll(s, emb[fold["enroll_idx"][s]], [f"{s}{i}" for i in range(5)], model_id="m")
            assert reg.threshold_scale == "registry"
            assert row["threshold"] == pytest.approx(reg.threshold, abs=1e-5)      # float32 storage
            got = reg.decide(emb[fold["stranger_idx"]])
            rejected = np.mean([g == "unknown" for g, _ in got])
            assert rejected == pytest.approx(row["rejected"], abs=1e-9)


def test_every_setting_runs_and_renders_with_targets(synthetic):
    emb, lab, cohort = synthetic
    data = {"fsdd": (emb, lab, 2), "degraded": (emb[::-1].copy(), lab[::-1].copy(), 2)}
    r = bt.run_registry(data, cohort, 0.7, n_enroll={"fsdd": 5, "degraded": 5}, n_test={"fsdd": 4, "degraded": 4},
                        max_folds=2, seed=0)
    for d in data:
        rows = r[d]["rows"]
        assert list(rows) == [st.name for st in bt.REGISTRY_SETTINGS]
        assert r[d]["folder_kind"] == "other speakers" and r[d]["folds"] == 2
        for v in rows.values():
            assert 0 <= v["identified"] <= v["closed_top1"] <= 1 and 0 <= v["worst_rejected"] <= v["rejected"] <= 1
            assert 0 <= v["min_cllr"] <= v["cllr"] + 1e-9 and 0 <= v["eer"] <= 0.5
            assert v["ceiling"] <= v["closed_top1"] + 1e-12
        # a shifted domain: centring helps the folder-adapted back ends
        assert rows[bt.DEFAULT_WITH_FOLDER]["eer"] <= rows[bt.DEFAULT_WITHOUT_FOLDER]["eer"] + 0.05
    text = bt.render_registry(r)
    assert text.count("| + top-3 mean: spkid enroll default | `spkid enroll` |") == 2
    t = bt.targets(r)
    assert len(t) == 4 and all(("met" in line) or ("lowers EER on" in line) for line in t)
    md = openset.render_cross_domain({"checkpoint": "/x/run/last.ckpt", "checkpoint_threshold": 0.7, "domains": r,
                                      "targets": t, "finetune": {
                                          "fine-tune": {"minutes": 3.0, "steps": 90, "val_acc": 0.8, "val_eer": 0.1,
                                                        "speakers": 5},
                                          "from scratch": {"minutes": 10.0, "steps": 300, "val_acc": 0.5,
                                                           "val_eer": 0.3, "speakers": 5}}})
    assert "## Across domains" in md and "Fine-tuning beats training from scratch: met (80.0% vs 50.0%)" in md


def test_write_marked_replaces_only_its_block(tmp_path):
    p = tmp_path / "doc.md"
    p.write_text("# Doc\n\nintro\n")
    openset.write_marked(p, "one\n", openset.XD_START, openset.XD_END)
    openset.write_marked(p, "two\n", openset.XD_START, openset.XD_END)
    text = p.read_text()
    assert text.startswith("# Doc\n\nintro\n") and "two\n" in text and "one" not in text
    assert text.count(openset.XD_START) == 1


needs_audio = pytest.mark.skipif(not (SHARED / "data" / "fsdd").is_dir() or
                                 not (SHARED / "data" / "speechocean762-opus").is_dir(),
                                 reason="../shared/data (fsdd, speechocean762-opus) not present")


@needs_audio
def test_quick_cross_domain_end_to_end(tmp_path):
    """Base model (tiny, a few steps) on the 200 training speakers, the quick protocol, the fine-tuning runs."""
    work = tmp_path / "xd"
    rc = openset.main(["--cross-domain", "--quick", "--config", "tiny", "--steps", "8", "--threads", "1",
                       "--work", str(work), "--write", str(tmp_path / "openset.md")])
    assert rc == 0
    r = json.loads((work / "crossdomain.json").read_text())
    assert set(r["domains"]) == {"fsdd", "synth", "degraded"} and r["checkpoint_cohort"]
    for d in r["domains"].values():
        assert len(d["rows"]) == len(bt.REGISTRY_SETTINGS)
    ft = r["finetune"]
    assert ft["fine-tune"]["steps"] == 6 and ft["from scratch"]["steps"] == 12
    assert ft["fine-tune"]["speakers"] == ft["from scratch"]["speakers"] == 10
    md = (tmp_path / "openset.md").read_text()
    assert openset.XD_START in md and "Fine-tuning vs. training from scratch" in md
    meta = json.loads((work / "degraded" / "metadata.json").read_text())
    assert len(meta["speakers"]) == 10 and all(len(v) == 7 for v in meta["speakers"].values())
    audio = sorted((work / "degraded-audio").glob("*/*.wav"))          # the same clips as audio (audio base models)
    assert len(audio) == 70 and {p.parent.name for p in audio} == set(meta["speakers"])
    # the two training runs again, at once, on the saved evaluation of the same checkpoint
    (work / "ft" / "last.ckpt").unlink()
    rc = openset.main(["--cross-domain", "--quick", "--checkpoint", str(work / "run" / "last.ckpt"), "--finetune-only",
                       "--side-by-side", "--threads", "1", "--work", str(work)])
    assert rc == 0
    again = json.loads((work / "crossdomain.json").read_text())
    assert again["domains"] == r["domains"] and again["finetune"]["fine-tune"]["steps"] == 6
    assert (work / "ft" / "last.ckpt").is_file()
    assert openset.main(["--cross-domain", "--quick", "--checkpoint", str(work / "run" / "last.ckpt"),
                         "--finetune-only", "--work", str(tmp_path / "elsewhere")]) == 1


@pytest.mark.skipif(not (SHARED / "data" / "speechocean762-opus").is_dir(), reason="needs ../shared")
def test_audio_base_model_list_holds_only_training_speakers(tmp_path):
    """``--config audio`` trains the base model on the Opus audio of the split's training speakers only."""
    import csv
    from spkid.data.hw4 import read_mapping
    split = openset.split_speakers(read_mapping(openset.DATA), n_heldout=50, n_impostors=10, seed=0)
    rows = list(csv.DictReader(open(openset.audio_list(split.train, tmp_path))))
    assert {r["speaker"] for r in rows} == set(split.train)
    assert len(rows) > 10 * len(split.train) and all(Path(r["path"]).is_file() for r in rows[:50])
    assert all(Path(r["path"]).parent.name == r["speaker"] for r in rows)


def test_balanced_ceiling_is_the_best_threshold_for_both_rates():
    correct = np.array([True, True, True, False])
    best = np.array([0.9, 0.6, 0.4, 0.95])
    strangers = np.array([0.5, 0.3, 0.7, 0.2])
    # t in (0.5, 0.6]: identified 2/4 (0.9, 0.6), rejected 3/4; t in (0.3, 0.4]: identified 3/4, rejected 2/4
    assert bt.balanced_ceiling(correct, best, strangers) == pytest.approx(0.5)
    # separable scores: every query right and above every stranger -> 1.0
    assert bt.balanced_ceiling(np.ones(3, bool), np.array([0.7, 0.8, 0.9]), np.array([0.1, 0.69])) == 1.0
    # a tie is accepted on both sides (score >= threshold), so it cannot count for both: 2/3
    assert bt.balanced_ceiling(np.ones(3, bool), np.array([0.7, 0.8, 0.9]), np.array([0.1, 0.7])) == \
        pytest.approx(2 / 3)
    # a brute-force sweep over a fine grid never beats it, and it matches the grid on random scores
    rng = np.random.default_rng(0)
    for _ in range(20):
        c, b, s = rng.random(30) < 0.8, rng.normal(size=30), rng.normal(-0.5, 1, size=25)
        grid = np.r_[np.linspace(-5, 5, 20001), b, np.nextafter(s, np.inf)]
        brute = max(min((c & (b >= t)).mean(), (s < t).mean()) for t in grid)
        assert bt.balanced_ceiling(c, b, s) == pytest.approx(brute)


def test_registry_rows_never_beat_the_ceiling(synthetic):
    emb, lab, cohort = synthetic
    by_name = {st.name: st for st in bt.REGISTRY_SETTINGS}
    for fold in bt.folds(lab, 2, 5, 4, max_folds=2, seed=0):
        for st in by_name.values():
            row = bt.registry_fold(emb, lab, fold, st, cohort, 0.7)
            assert min(row["identified"], row["rejected"]) <= row["ceiling"] + 1e-12


def test_re_evaluating_keeps_the_finetune_runs_of_the_same_checkpoint_only(tmp_path):
    ckpt = tmp_path / "run" / "last.ckpt"
    saved = tmp_path / "crossdomain.json"
    assert openset._saved_finetune(saved, ckpt) is None                     # nothing saved yet
    ft = {"fine-tune": {"val_acc": 0.8}, "from scratch": {"val_acc": 0.7}}
    saved.write_text(json.dumps({"checkpoint": str(ckpt), "finetune": ft, "side_by_side": True}))
    assert openset._saved_finetune(saved, ckpt) == (ft, True)
    assert openset._saved_finetune(saved, tmp_path / "other.ckpt") is None   # another model's runs are not kept
    saved.write_text(json.dumps({"checkpoint": str(ckpt)}))
    assert openset._saved_finetune(saved, ckpt) is None                     # evaluated, never fine-tuned
    saved.write_text("{not json")
    assert openset._saved_finetune(saved, ckpt) is None
