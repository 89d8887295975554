"""benchmarks/backend_transfer.py on generated embeddings: folds, every setting kind, the markdown table.
No model and no ../shared needed."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _load_bench():
    spec = importlib.util.spec_from_file_location("backend_transfer_bench", ROOT / "benchmarks" / "backend_transfer.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                       # dataclasses look their module up while being built
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()


def _domain(rng, names, per, E=16, noise=0.3, offset=None):
    offset = np.zeros(E) if offset is None else offset
    emb, lab = [], []
    for n in names:
        c = rng.normal(size=E)
        emb.append(c + offset + noise * np.sqrt(E) * rng.normal(size=(per, E)) / 4)
        lab += [n] * per
    emb = np.concatenate(emb)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), np.asarray(lab)


def test_folds_are_disjoint_and_folder_speakers_stay_out():
    labels = np.repeat(["a", "b", "c", "d", "folder:x", "folder:y"], 9)
    fs = bench.folds(labels, 1, 3, 4, max_folds=15, seed=0)
    assert len(fs) == 4                                # every protocol speaker a stranger once
    for f in fs:
        enrolled = set(f["enrolled"])
        assert len(enrolled) == 3 and not enrolled & set(f["strangers"])
        assert all(len(v) == 3 and set(labels[v]) == {s} for s, v in f["enroll_idx"].items())
        assert set(labels[f["folder_idx"]]) == {"folder:x", "folder:y"} and len(f["folder_idx"]) == 18
        assert set(labels[f["stranger_idx"]]) == set(f["strangers"]) and len(f["stranger_idx"]) == 4
        used = np.r_[np.concatenate(list(f["enroll_idx"].values())), f["test_idx"], f["stranger_idx"]]
        assert len(set(used.tolist())) == len(used)
    no_extra = bench.folds(np.repeat(["a", "b", "c"], 9), 1, 3, 4, max_folds=15, seed=0)
    assert len(no_extra[0]["folder_idx"]) == 3 * 2     # the protocol speakers' leftover clips


def test_run_and_render_every_setting_kind():
    rng = np.random.default_rng(0)
    shift = 2.0 * rng.normal(size=16)
    fsdd = _domain(rng, [f"f{i}" for i in range(6)], 16, offset=shift)
    synth = _domain(rng, [f"s{i}" for i in range(8)] + [f"folder:s{i}" for i in range(8, 11)], 16, offset=-shift)
    cohort = _domain(rng, [f"c{i:02d}" for i in range(20)], 4)
    settings = [bench.Setting("raw"), bench.Setting("centred", centre="folder"),
                bench.Setting("enroll centred, asnorm", centre="enroll", top_n=10),
                bench.Setting("all", centre="folder", top_n=10, cohort="folder", scoring="topk_mean",
                              background=True, method="gaussian")]
    report = bench.run({"fsdd": fsdd, "synth": synth, "cohort": cohort}, 0.6, n_enroll=7, n_test=6, seed=0,
                       settings=settings)
    assert report["fsdd"]["folds"] == 15 and report["synth"]["folds"] == 1
    assert report["synth"]["speakers"] == 8 and "other speakers" in report["synth"]["folder"]
    raw, centred = report["fsdd"]["rows"]["raw"], report["fsdd"]["rows"]["centred"]
    assert "checkpoint_identified" in raw and "checkpoint_identified" not in centred
    for row in report["fsdd"]["rows"].values():
        for key in ("enrollment_identified", "enrollment_rejected", "closed_top1", "eer_model", "eer_pairs"):
            assert 0.0 <= row[key] <= 1.0
        assert row["min_cllr"] <= row["cllr_enroll"] + 1e-9
    assert centred["eer_model"] <= raw["eer_model"]    # the domain offset is what centring removes
    text = bench.render(report, 7)
    assert text.count("| raw |") == 2 and "### fsdd: 6 speakers" in text
