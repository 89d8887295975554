"""Score -> LLR calibration, Cllr and minCllr (spkid.scoring.calibration)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from spkid.errors import DataError
from spkid.scoring.calibration import Calibration, cllr, min_cllr, pav_llr


def _gaussian_trials(n_tar, n_non, mu_tar, mu_non, sigma, seed=0):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(mu_tar, sigma, n_tar), rng.normal(mu_non, sigma, n_non)]
    return s, np.r_[np.ones(n_tar, int), np.zeros(n_non, int)]


@pytest.mark.parametrize("n_tar,n_non,prior", [(20000, 20000, 0.5), (2000, 40000, 0.5), (20000, 20000, 0.1)])
def test_fit_recovers_known_llr(n_tar, n_non, prior):
    """Equal-variance Gaussians: the true LLR is linear, (m_t - m_n)/s^2 * x - (m_t^2 - m_n^2)/(2 s^2)."""
    m_t, m_n, sig = 0.6, 0.1, 0.2                               # cosine-like scores
    s, y = _gaussian_trials(n_tar, n_non, m_t, m_n, sig)
    cal = Calibration.fit(s, y, prior=prior)
    a_true = (m_t - m_n) / sig ** 2                             # 12.5
    b_true = -(m_t ** 2 - m_n ** 2) / (2 * sig ** 2)            # -4.375
    assert cal.a == pytest.approx(a_true, rel=0.05)
    assert cal.b == pytest.approx(b_true, abs=0.05 * abs(b_true))
    assert cal.prior == prior
    x = np.array([0.1, 0.35, 0.6])
    np.testing.assert_allclose(cal.llr(x), a_true * x + b_true, atol=0.3)


def test_calibrated_llr_beats_raw_scores_and_probability():
    s, y = _gaussian_trials(3000, 3000, 0.6, 0.1, 0.2, seed=1)
    cal = Calibration.fit(s, y)
    c_cal, c_min = cllr(cal.llr(s), y), min_cllr(s, y)
    assert c_min <= c_cal + 1e-12
    assert c_cal < cllr(s, y)                                   # cosines read as LLRs are badly calibrated
    assert c_cal - c_min < 0.02                                 # the model is right: little calibration loss
    thr = -cal.b / cal.a                                        # llr = 0
    assert cal.probability([thr])[0] == pytest.approx(0.5)
    assert cal.probability([thr], prior=0.01)[0] == pytest.approx(0.01)
    p = cal.probability(s)
    assert np.all(np.diff(p[np.argsort(s)]) >= 0)


def test_cllr_of_perfect_and_useless_systems():
    y = np.r_[np.ones(50, int), np.zeros(70, int)]
    assert cllr(np.zeros(120), y) == pytest.approx(1.0)
    assert cllr(np.where(y == 1, 60.0, -60.0), y) == pytest.approx(0.0, abs=1e-20)
    assert cllr(np.where(y == 1, -60.0, 60.0), y) > 40         # confidently wrong costs far more than 1 bit
    assert cllr(np.where(y == 1, np.inf, -np.inf), y) == 0.0
    assert min_cllr(np.where(y == 1, 0.9, 0.1), y) == 0.0       # separable: PAV makes it perfect
    rng = np.random.default_rng(2)
    useless = rng.normal(size=120)
    assert 0.85 < min_cllr(useless, y) <= 1.0                   # a constant is a monotone calibration: <= 1


def test_min_cllr_is_lower_bound_and_pav_is_monotone_with_ties():
    s, y = _gaussian_trials(400, 900, 0.5, 0.2, 0.2, seed=3)
    s = np.round(s, 2)                                          # plenty of ties
    llr = pav_llr(s, y)
    order = np.argsort(s, kind="stable")
    assert np.array_equal(llr[order], np.sort(llr))            # non-decreasing in the score (+-inf at the ends)
    for v in np.unique(s):
        assert np.unique(llr[s == v]).size == 1                 # a tie gets one value
    m = min_cllr(s, y)
    for a, b in [(1, 0), (10, -3.5), (7.5, -2.6), (20, -7)]:
        assert m <= cllr(a * s + b, y) + 1e-12
    assert m <= cllr(Calibration.fit(s, y).llr(s), y) + 1e-12


def test_separable_fit_is_finite_and_serialises():
    s = np.r_[np.linspace(0.6, 0.9, 30), np.linspace(-0.2, 0.3, 40)]
    y = np.r_[np.ones(30, int), np.zeros(40, int)]
    cal = Calibration.fit(s, y)
    assert np.isfinite(cal.a) and cal.a > 0
    assert cllr(cal.llr(s), y) < 0.05
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal


def test_bad_input():
    with pytest.raises(DataError, match="3 scores but 2 labels"):
        Calibration.fit([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(DataError, match="target and non-target"):
        min_cllr([0.1, 0.2], [1, 1])
    with pytest.raises(DataError, match="labels must be 0"):
        cllr([0.0, 1.0], [2, 0])
    with pytest.raises(DataError, match="prior"):
        Calibration(1.0, 0.0, prior=1.0)
    with pytest.raises(DataError, match="malformed"):
        Calibration.from_dict({"a": 1.0})
    with pytest.raises(DataError, match="NaN"):
        Calibration.fit([np.nan, 0.2], [1, 0])
