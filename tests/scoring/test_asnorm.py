"""AS-norm against a direct per-trial reference, cohort building, and domain statistics (spkid.scoring.norm)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from spkid.errors import ConfigError, DataError
from spkid.scoring.metrics import eer
from spkid.scoring.norm import ASNorm, CohortConfig, DomainStats, asnorm, build_cohort, cohort_stats


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference_asnorm(enroll, test, cohort, top_n):
    """Slow: one trial at a time, cohort scores sorted explicitly."""
    out = np.empty((len(test), len(enroll)))
    for m, t in enumerate(test):
        ct = np.sort(cohort @ t)[::-1][:top_n]
        for k, e in enumerate(enroll):
            ce = np.sort(cohort @ e)[::-1][:top_n]
            s = float(t @ e)
            out[m, k] = 0.5 * ((s - ce.mean()) / ce.std() + (s - ct.mean()) / ct.std())
    return out


@pytest.mark.parametrize("top_n", [2, 7, 40, 500])           # 500 > C: capped at the cohort size
def test_asnorm_matches_slow_reference(top_n):
    rng = np.random.default_rng(0)
    enroll, test, cohort = (_unit(rng.normal(size=(n, 11))) for n in (5, 9, 40))
    raw = test @ enroll.T                                       # (9, 5)
    got = asnorm(raw, enroll, test, cohort, top_n=top_n)
    assert got.shape == (9, 5)
    np.testing.assert_allclose(got, _reference_asnorm(enroll, test, cohort, min(top_n, 40)), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ASNorm(cohort, top_n)(raw, enroll, test), got)


def test_cohort_stats_exclude_and_chunking():
    rng = np.random.default_rng(1)
    x, cohort = _unit(rng.normal(size=(5000, 6))), _unit(rng.normal(size=(30, 6)))   # > one 4096-row chunk
    excl = rng.random((5000, 30)) < 0.3
    mu, sd = cohort_stats(x, cohort, 5, exclude=excl)
    for i in (0, 4095, 4096, 4999):
        top = np.sort((cohort @ x[i])[~excl[i]])[::-1][:5]
        assert mu[i] == pytest.approx(top.mean()) and sd[i] == pytest.approx(top.std())
    with pytest.raises(DataError, match="at least 2"):
        cohort_stats(x[:1], cohort, 5, exclude=np.r_[np.ones(29, bool), False][None])


def test_asnorm_shape_and_dim_errors():
    rng = np.random.default_rng(2)
    e, t, c = _unit(rng.normal(size=(3, 4))), _unit(rng.normal(size=(2, 4))), _unit(rng.normal(size=(6, 5)))
    with pytest.raises(ValueError, match=r"\(M, K\)"):
        asnorm(np.zeros((3, 2)), e, t, _unit(rng.normal(size=(6, 4))))
    with pytest.raises(DataError, match="5-dimensional"):
        asnorm(np.zeros((2, 3)), e, t, c)
    with pytest.raises(ConfigError, match="top_n"):
        ASNorm(c, top_n=1)


def test_asnorm_removes_per_speaker_score_offsets():
    """Speakers near a crowded region (a hub) score high against everyone; AS-norm takes that out."""
    ratios = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        E, K = 24, 40
        hub = _unit(rng.normal(size=E))
        pull = rng.uniform(0.0, 2.5, size=K)                    # how close each speaker sits to the hub
        centres = _unit(_unit(rng.normal(size=(K, E))) + pull[:, None] * hub)
        clips = np.concatenate([_unit(c + 0.1 * rng.normal(size=(6, E))) for c in centres])
        labels = np.repeat(np.arange(K), 6)
        cohort = _unit(_unit(rng.normal(size=(200, E))) + rng.uniform(0, 2.5, size=(200, 1)) * hub)
        enroll, test = clips[0::2], clips[1::2]                 # 3 clips each side per speaker
        raw = test @ enroll.T
        target = labels[1::2][:, None] == labels[0::2][None]
        e_raw, _ = eer(raw.ravel(), target.ravel())
        e_norm, _ = eer(asnorm(raw, enroll, test, cohort, top_n=50).ravel(), target.ravel())
        ratios.append(e_norm / e_raw)
    assert np.mean(ratios) < 0.85 and max(ratios) < 1.0


def test_build_cohort_units_and_subset():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 5))
    labels = ["b"] * 4 + ["a"] * 5 + ["c"] * 3
    c = build_cohort(x, labels)                                # one normalised mean per speaker, sorted by name
    assert c.shape == (3, 5)
    np.testing.assert_allclose(c[0], _unit(_unit(x[4:9]).sum(0)))
    assert build_cohort(x, labels, CohortConfig(unit="utterance")).shape == (12, 5)
    sub = build_cohort(x, labels, CohortConfig(unit="utterance", max_size=7, seed=1))
    assert sub.shape == (7, 5)
    np.testing.assert_array_equal(sub, build_cohort(x, labels, CohortConfig(unit="utterance", max_size=7, seed=1)))
    with pytest.raises(DataError, match="labels"):
        build_cohort(x, labels[:-1])
    with pytest.raises(ConfigError, match="speaker, utterance"):
        CohortConfig(unit="frames")
    a = ASNorm.from_embeddings(x, labels, CohortConfig(top_n=2))
    b = ASNorm.from_dict(json.loads(json.dumps(a.to_dict())))
    assert b.top_n == 2 and np.allclose(a.cohort, b.cohort, atol=1e-6)


def test_domain_centring_restores_discrimination_of_shifted_domain():
    """A new domain adds one common offset to every embedding: cosines crowd together until it is removed."""
    rng = np.random.default_rng(5)
    E, K = 32, 10
    centres = rng.normal(size=(K, E))
    offset = 6.0 * _unit(rng.normal(size=E))
    x = np.concatenate([c + offset + 0.6 * rng.normal(size=(8, E)) for c in centres]) / np.sqrt(E)
    labels = np.repeat(np.arange(K), 8)
    i, j = np.triu_indices(len(x), 1)
    target = labels[i] == labels[j]
    raw = _unit(x)
    stats = DomainStats.fit(x)                                 # unlabelled: labels never used
    adapted = stats.apply(x)
    assert np.allclose(np.linalg.norm(adapted, axis=1), 1.0)
    e_raw, _ = eer((raw[i] * raw[j]).sum(1), target)
    e_ad, _ = eer((adapted[i] * adapted[j]).sum(1), target)
    assert e_ad < 0.5 * e_raw


def test_domain_whitening_and_serialisation():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4000, 6)) * np.array([5, 1, 1, 0.2, 1, 1]) + 3.0
    st = DomainStats.fit(x, whiten=True, shrinkage=0.0)
    z = (_unit(x) - st.mean) @ st.whiten
    cov = np.cov(z.T)
    np.testing.assert_allclose(cov / cov[0, 0], np.eye(6), atol=1e-8)   # ZCA: isotropic after whitening
    np.testing.assert_allclose(st.whiten, st.whiten.T)                   # ZCA (not PCA) whitening is symmetric
    back = DomainStats.from_dict(json.loads(json.dumps(st.to_dict())))
    np.testing.assert_allclose(back.apply(x[:5]), st.apply(x[:5]))
    shrunk = DomainStats.fit(x, whiten=True, shrinkage=1.0)              # full shrinkage = centring only
    np.testing.assert_allclose(shrunk.apply(x[:5]), DomainStats.fit(x).apply(x[:5]), atol=1e-12)
    with pytest.raises(ConfigError, match="shrinkage"):
        DomainStats.fit(x[:4], whiten=True, shrinkage=0.0)
    with pytest.raises(DataError, match="6-dimensional"):
        st.apply(x[:2, :5])
    with pytest.raises(DataError, match="malformed"):
        DomainStats.from_dict({"whiten": None})
