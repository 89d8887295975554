"""Registry schema 2 and the open-set back end behind enroll / adapt / identify (issue 16): meta round trip, the
operating point refreshed from enrollment clips, scoring through domain statistics and AS-norm. No model needed."""
import sqlite3

import numpy as np
import pytest

from spkid.errors import DataError
from spkid.scoring.backend import Backend, StoredCalibration
from spkid.scoring.calibration import Calibration
from spkid.scoring.enrollment import EnrollConfig, Gallery, estimate_threshold
from spkid.scoring.norm import ASNorm, DomainStats
from spkid.scoring.speaker_db import SpeakerDB

E = 8
MODEL = "m0"


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _speakers(k, n, *, seed=0, spread=0.35, offset=None):
    """``k`` speakers x ``n`` clips ``(n, E)`` around random directions, all shifted by ``offset`` (a domain)."""
    rng = np.random.default_rng(seed)
    offset = np.zeros(E) if offset is None else offset
    return [_unit(rng.normal(size=E) + offset + spread * rng.normal(size=(n, E))) for _ in range(k)]


def _create(tmp_path, **kw):
    return SpeakerDB.create(tmp_path / "reg.db", model_id=MODEL, checkpoint="run/best.ckpt", embed_dim=E,
                            threshold=0.6, threshold_source="validation EER (training speakers)", **kw)


def _enroll_all(reg, clips, prefix="s"):
    for k, c in enumerate(clips):
        reg.enroll(f"{prefix}{k}", c, [f"{prefix}{k}_{i}.wav" for i in range(len(c))], model_id=MODEL)


def test_schema_2_meta_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    domain = DomainStats.fit(rng.normal(size=(30, E)), whiten=True)
    cohort = ASNorm(_unit(rng.normal(size=(12, E))), 5)
    cal = StoredCalibration(Calibration(a=3.5, b=-1.25, prior=0.3), "unit trials")
    cfg = EnrollConfig(scoring="best", top_k=2, outlier_z=2.5)
    with _create(tmp_path, enroll_config=cfg) as reg:
        assert reg.enroll_config == cfg and reg.domain is None and reg.cohort() is None
        assert (reg.threshold_scale, reg.threshold_locked, reg.fallback) == (
            "raw", False, (0.6, "validation EER (training speakers)"))
        reg.set_adaptation(domain, cohort, "centred on 30 clips of x/; AS-norm cohort", top_n=5)
        reg.set_calibration(cal)
        reg.set_threshold(1.75, "manual")
    conn = sqlite3.connect(tmp_path / "reg.db")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    conn.close()
    assert meta["schema_version"] == "2" and meta["threshold_locked"] == "1" and meta["threshold_scale"] == "registry"
    with SpeakerDB.open(tmp_path / "reg.db") as reg:
        assert reg.enroll_config == cfg
        np.testing.assert_allclose(reg.domain.mean, domain.mean)
        np.testing.assert_allclose(reg.domain.whiten, domain.whiten)
        np.testing.assert_allclose(reg.cohort().cohort, cohort.cohort, atol=1e-6)      # stored as float32
        assert reg.cohort().top_n == 5 and reg.cohort_kind == "folder"
        assert reg.calibration == cal
        assert reg.adaptation.startswith("centred on 30 clips")
        assert (reg.threshold, reg.threshold_source, reg.threshold_locked) == (1.75, "manual", True)
        reg.set_adaptation(None, "checkpoint", "training speakers", top_n=7)
        assert reg.cohort_kind == "checkpoint" and reg.domain is None
        assert not reg.threshold_locked                     # another back end: the locked threshold no longer applies


def test_schema_1_and_corrupt_meta_are_refused(tmp_path):
    _create(tmp_path).close()
    p = tmp_path / "reg.db"
    for key, value, needle in [("domain", "{not json", "meta 'domain' is not valid JSON"),
                               ("enroll_config", '{"scoring": "loudest"}', "enroll_config"),
                               ("threshold_scale", "weird", "threshold_scale 'weird'"),
                               ("schema_version", "1", "re-enroll its speakers into a new registry")]:
        conn = sqlite3.connect(p)
        with conn:
            old = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]
            conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
        conn.close()
        with pytest.raises(DataError) as e:
            with SpeakerDB.open(p) as reg:
                reg.domain, reg.enroll_config                 # noqa: B018  (parsed lazily)
        assert str(e.value).startswith(f"{p}: ") and needle in str(e.value) and "\n" not in str(e.value)
        conn = sqlite3.connect(p)
        with conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = ?", (old, key))
        conn.close()


def test_clips_sorted_and_normalised(tmp_path):
    with _create(tmp_path) as reg:
        reg.enroll("bob", np.full((2, E), 3.0), ["b2", "b1"], model_id=MODEL)
        reg.enroll("alice", np.eye(E)[:1] * 5, ["a1"], model_id=MODEL)
        clips = reg.clips()
    assert [(n, s) for n, s, _ in clips] == [("alice", ["a1"]), ("bob", ["b1", "b2"])]
    assert all(np.allclose(np.linalg.norm(c, axis=1), 1) for _, _, c in clips)


def test_threshold_refreshed_at_every_enroll_and_falls_back_with_too_few_clips(tmp_path):
    clips = _speakers(6, 5, seed=2)
    with _create(tmp_path) as reg:
        _enroll_all(reg, clips[:3])                      # 15 clips < 20
        st = reg.threshold_state()
        assert (st.scale, st.threshold, st.clips_needed, st.locked) == ("raw", 0.6, 5, False)
        assert reg.calibration is None
        assert "5 more enrollment clips needed" in st.describe() and "fallback" in st.describe()
        _enroll_all(reg, clips[3:], prefix="t")         # 30 clips: the registry's own estimate
        st = reg.threshold_state()
        expected, _ = estimate_threshold(Gallery(clips[:3] + clips[3:], reg.enroll_config))
        assert st.scale == "registry" and st.clips_needed == 0
        assert st.threshold == pytest.approx(expected.threshold)
        assert st.source == expected.source and "estimated" in st.describe()
        assert reg.calibration.source == "enrollment trials (6 speakers, 30 clips)"
        reg.set_threshold(0.9, "far=0.01 on trials")    # locked: later enrolls keep it
        reg.enroll("u", clips[0][:2] * -1, ["u1", "u2"], model_id=MODEL)
        assert (reg.threshold, reg.threshold_locked) == (0.9, True)
        reg.unlock_threshold()
        for name in ("u", "t0", "t1", "t2"):
            reg.remove(name)                            # back under 20 clips: the fallback again
        assert reg.threshold_state().scale == "raw" and reg.threshold == 0.6


def test_decide_scores_through_domain_statistics_and_asnorm(tmp_path):
    shift = 1.5 * np.random.default_rng(5).normal(size=E)
    clips = _speakers(5, 5, seed=3, offset=shift)
    folder = np.concatenate(_speakers(10, 4, seed=4, offset=shift))
    domain = DomainStats.fit(folder)
    norm = ASNorm(domain.apply(folder), 10)
    queries = np.stack([c[0] for c in _speakers(5, 1, seed=3, offset=shift)])
    with _create(tmp_path, enroll_config=EnrollConfig(scoring="topk_mean", min_clips=20)) as reg:
        _enroll_all(reg, clips)
        raw = np.array([[s for _, s in sorted(r)] for r in reg.identify(queries, top_k=5)])
        reg.set_adaptation(domain, norm, "folder")
        reg.refresh_threshold()
        got = reg.identify(queries, top_k=5)
        expected = Backend(reg.enroll_config, domain, norm).scores(clips, queries)   # (M, K)
        for row, exp in zip(got, expected):
            for name, score in row:
                assert score == pytest.approx(exp[int(name[1:])], abs=1e-5)   # float32 storage
        assert not np.allclose(raw, np.array([[s for _, s in sorted(r)] for r in got]))
        decided = reg.decide(queries)
        thr = reg.threshold
        assert reg.threshold_scale == "registry"
        assert [d[0] == "unknown" for d in decided] == [max(r) < thr for r in expected]


def test_fallback_threshold_scores_raw_cosines_even_when_adapted(tmp_path):
    clips = _speakers(2, 3, seed=6)
    folder = np.concatenate(_speakers(6, 3, seed=7))
    with _create(tmp_path, enroll_config=EnrollConfig(scoring="centroid")) as reg:
        _enroll_all(reg, clips)
        reg.set_adaptation(DomainStats.fit(folder), ASNorm(folder, 5), "folder")
        assert reg.refresh_threshold().scale == "raw"   # 6 clips: the checkpoint threshold, on raw cosines
        q = clips[0][:1]
        names, cents = reg.centroids()
        assert reg.identify(q)[0][0][1] == pytest.approx(float((_unit(q) @ cents.T.astype(float)).max()), abs=1e-6)


def test_backend_trial_scores_match_pair_scores():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(9, E))
    b = Backend(EnrollConfig(), DomainStats.fit(rng.normal(size=(20, E))), ASNorm(rng.normal(size=(15, E)), 4))
    i, j = np.triu_indices(9, 1)
    full = b.pair_scores(emb, emb)
    np.testing.assert_allclose(b.trial_scores(emb, i, j), full[i, j], atol=1e-12)
    assert Backend().raw and not b.raw
    np.testing.assert_allclose(Backend().pair_scores(emb, emb), _unit(emb) @ _unit(emb).T, atol=1e-12)


def test_report_does_not_draw_an_adapted_threshold_on_cosines(tmp_path):
    from spkid.report.evaluate import TrialsEval, read_registry
    from spkid.report.sections import verification_section
    rng = np.random.default_rng(0)
    with _create(tmp_path) as reg:
        assert read_registry(reg.path).on_cosines
        reg.set_adaptation(DomainStats.fit(rng.normal(size=(10, E))), None, "folder")
        assert read_registry(reg.path).on_cosines           # the fallback threshold is still on raw cosines
        reg.set_threshold(1.2, "manual")                    # now on the adapted scores
    info = read_registry(tmp_path / "reg.db")
    assert not info.on_cosines and info.scoring.endswith("centred")
    s = np.r_[rng.normal(0.7, 0.1, 50), rng.normal(0.2, 0.1, 200)]
    y = np.r_[np.ones(50, bool), np.zeros(200, bool)]
    sec = verification_section(TrialsEval(s, y, 40, 5, None), info, MODEL)
    text = repr(sec.blocks)
    assert "not on these cosines; not drawn" in text and "registry (" not in text
