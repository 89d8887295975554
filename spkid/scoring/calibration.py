"""Score -> log-likelihood-ratio calibration, Cllr and minCllr (Brümmer & du Preez 2006, BOSARIS conventions).

A calibrated score is a natural-log likelihood ratio ``llr = a * score + b``: the posterior probability of
"same speaker" under a target prior ``p`` is ``sigmoid(llr + logit(p))``. ``Calibration.fit`` finds ``(a, b)``
by prior-weighted logistic regression: targets and non-targets are weighted ``prior / N_tar`` and
``(1 - prior) / N_non``, so the fit does not depend on how many trials of each kind there happen to be.

``cllr(llr, labels)`` is the cost of log-likelihood ratios in bits: 0 for a perfect system, 1 for one that
always says ``llr = 0``; ``min_cllr(scores, labels)`` is the Cllr after the best monotone calibration (pool
adjacent violators), i.e. the discrimination loss alone; ``cllr - min_cllr`` is the calibration loss.

Shapes: ``scores``, ``llr``, ``labels`` are ``(P,)``; labels 1 = target (same speaker), 0 = non-target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import isotonic_regression, minimize
from scipy.special import expit, log_expit, logit

from spkid.errors import DataError


def _trials(scores, labels, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(values float64 (P,), labels bool (P,))`` with both kinds of trial present."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise DataError(f"calibration: {s.size} {what} but {y.size} labels")
    if np.any(np.isnan(s)):
        raise DataError(f"calibration: {what} contain NaN")
    if not np.all((y == 0) | (y == 1)):
        raise DataError("calibration: labels must be 0 (non-target) or 1 (target)")
    y = y.astype(bool)
    n_tar, n_non = int(y.sum()), int((~y).sum())
    if n_tar == 0 or n_non == 0:
        raise DataError(f"calibration needs target and non-target trials, got {n_tar} target and {n_non} non-target")
    return s, y


def _check_prior(prior: float) -> float:
    if not 0.0 < prior < 1.0:
        raise DataError(f"calibration: prior must be in (0, 1), got {prior}")
    return float(prior)


@dataclass(frozen=True)
class Calibration:
    """``llr = a * score + b`` (natural log); ``prior`` is the target prior it was fitted for."""

    a: float
    b: float
    prior: float = 0.5

    def __post_init__(self):
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise DataError(f"calibration: a and b must be finite, got a={self.a}, b={self.b}")
        _check_prior(self.prior)

    @classmethod
    def fit(cls, scores, labels, *, prior: float = 0.5, max_iter: int = 200) -> "Calibration":
        """Prior-weighted logistic regression on trials ``scores`` ``(P,)``, ``labels`` ``(P,)``.

        Minimises ``prior * mean_tar softplus(-(llr + logit(prior))) + (1 - prior) * mean_non
        softplus(llr + logit(prior))``. Perfectly separated trials have no finite optimum; the fit
        stops at a steep but finite slope (``max_iter`` quasi-Newton steps).
        """
        s, y = _trials(scores, labels)
        prior = _check_prior(prior)
        if not np.all(np.isfinite(s)):
            raise DataError("calibration: scores must be finite")
        centre, spread = float(s.mean()), float(s.std()) or 1.0
        z = (s - centre) / spread                                   # conditioning: fit on standardised scores
        w = np.where(y, prior / y.sum(), (1.0 - prior) / (~y).sum())
        sign = np.where(y, 1.0, -1.0)                               # targets want llr high, non-targets low
        offset = logit(prior)

        def cost(p):
            margin = sign * (p[0] * z + p[1] + offset)
            c = -(w * log_expit(margin)).sum()
            g = -w * sign * expit(-margin)                          # d cost / d (llr) per trial
            return c, np.array([(g * z).sum(), g.sum()])

        res = minimize(cost, np.array([1.0, 0.0]), jac=True, method="BFGS",
                       options={"maxiter": max_iter, "gtol": 1e-9})
        a_z, b_z = (float(v) for v in res.x)
        return cls(a=a_z / spread, b=b_z - a_z * centre / spread, prior=prior)

    def llr(self, scores) -> np.ndarray:
        """Log-likelihood ratios ``(P,)`` (natural log) of raw ``scores`` ``(P,)``."""
        return self.a * np.asarray(scores, dtype=np.float64) + self.b

    def probability(self, scores, prior: float | None = None) -> np.ndarray:
        """Posterior probability of a target ``(P,)`` under ``prior`` (default: the fitted prior)."""
        p = _check_prior(self.prior if prior is None else prior)
        return expit(self.llr(scores) + logit(p))

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "prior": self.prior}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        try:
            return cls(a=float(d["a"]), b=float(d["b"]), prior=float(d.get("prior", 0.5)))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"calibration: malformed ({e!r})") from None


def cllr(llr, labels) -> float:
    """Cost of log-likelihood ratios in bits: ``(mean_tar log2(1 + e^-llr) + mean_non log2(1 + e^llr)) / 2``.

    ``llr`` may hold +-inf (a PAV calibration does); an infinite LLR on the wrong side gives ``inf``.
    """
    x, y = _trials(llr, labels, "llr")
    tar = -log_expit(x[y]).mean()                                   # softplus(-llr), stable for large |llr|
    non = -log_expit(-x[~y]).mean()
    return float((tar + non) / (2.0 * math.log(2.0)))


def pav_llr(scores, labels) -> np.ndarray:
    """LLRs ``(P,)`` of the optimal monotone (non-decreasing) calibration of ``scores`` on these trials.

    Tied scores are pooled first (they must get one value); the posterior of each pool of adjacent
    violators is its target fraction, turned into an LLR by removing the empirical prior log-odds.
    """
    s, y = _trials(scores, labels)
    uniq, inv = np.unique(s, return_inverse=True)
    inv = inv.reshape(-1)
    total = np.bincount(inv, minlength=uniq.size).astype(np.float64)
    tar = np.bincount(inv, weights=y.astype(np.float64), minlength=uniq.size)
    post = isotonic_regression(tar / total, weights=total, increasing=True).x
    post = np.clip(post, 0.0, 1.0)
    with np.errstate(divide="ignore"):
        log_odds = np.log(post) - np.log1p(-post)                  # +-inf where a pool is all one kind
    return (log_odds - math.log(y.sum() / (~y).sum()))[inv]


def min_cllr(scores, labels) -> float:
    """Cllr after the optimal monotone calibration of ``scores`` (the discrimination part of Cllr)."""
    return cllr(pav_llr(scores, labels), labels)
