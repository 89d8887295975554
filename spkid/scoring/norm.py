"""Score normalisation (AS-norm) and unsupervised domain adaptation of embeddings.

AS-norm (adaptive symmetric normalisation; Cumani et al. 2011, Matejka et al. 2017): a raw cosine score
``s(e, t)`` between an enrolled model ``e`` and a test embedding ``t`` becomes

    0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)

where ``mu_e, sd_e`` are the mean and standard deviation of the ``top_n`` highest scores of ``e`` against a
cohort of impostor embeddings, and ``mu_t, sd_t`` the same for ``t``. Each side's statistics depend only on
that side, so they are computed once per enrolled model and once per test utterance (``cohort_stats``), never
per trial. The cohort should hold speakers disjoint from the trials (e.g. the training speakers).

Domain adaptation: ``DomainStats`` holds the mean (and optionally a ZCA whitening matrix with shrinkage) of
unlabelled embeddings of the target domain; ``apply`` subtracts the mean, whitens and re-normalises.

Shapes: embeddings ``(N, E)``; cohort ``(C, E)``; scores ``(M, K)`` for M test embeddings against K models.
Embeddings passed here are L2-normalised unless a docstring says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spkid.errors import ConfigError, DataError

COHORT_UNITS = ("speaker", "utterance")
_MIN_SD = 1e-6                                     # a cohort whose top scores are all equal must not divide by 0
_CHUNK = 4096                                      # rows scored against the cohort at once: bounds (chunk, C)


@dataclass
class CohortConfig:
    top_n: int = 100                  # highest cohort scores per side that form its statistics (adaptive cohort)
    unit: str = "speaker"             # speaker: one mean embedding per cohort speaker | utterance: every embedding
    max_size: int = 0                 # >0: keep at most this many cohort entries (seeded random subset)
    seed: int = 0

    def __post_init__(self):
        if self.top_n < 2:
            raise ConfigError(f"cohort top_n must be >= 2 (a standard deviation needs two scores), got {self.top_n}")
        if self.unit not in COHORT_UNITS:
            raise ConfigError(f"cohort unit {self.unit!r} unknown; choose one of {', '.join(COHORT_UNITS)}")
        if self.max_size < 0:
            raise ConfigError(f"cohort max_size must be >= 0, got {self.max_size}")


def _matrix(x, what: str) -> np.ndarray:
    if hasattr(x, "detach"):                        # a torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"{what}: expected a 2-D (N, E) array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{what}: contains NaN or Inf")
    return x


def _unit(x: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise DataError(f"{what}: {int((norms == 0).sum())} zero rows cannot be L2-normalised")
    return x / norms


# cohort --------------------------------------------------------------------------------------

def build_cohort(emb, labels, cfg: CohortConfig | None = None) -> np.ndarray:
    """Cohort ``(C, E)`` L2-normalised from labelled embeddings ``emb`` ``(N, E)`` with ``labels`` ``(N,)``.

    ``unit="speaker"``: the normalised mean of each speaker's normalised embeddings, sorted by label;
    ``"utterance"``: every embedding. ``max_size`` then keeps a seeded random subset.
    """
    cfg = cfg or CohortConfig()
    x = _unit(_matrix(emb, "cohort embeddings"), "cohort embeddings")
    labels = np.asarray([str(l) for l in labels])
    if labels.shape != (x.shape[0],):
        raise DataError(f"cohort: {x.shape[0]} embeddings but {labels.size} labels")
    if cfg.unit == "speaker":
        names, inv = np.unique(labels, return_inverse=True)
        sums = np.zeros((names.size, x.shape[1]))
        np.add.at(sums, inv.reshape(-1), x)
        out = _unit(sums, "cohort speaker means")
    else:
        out = x
    if cfg.max_size and out.shape[0] > cfg.max_size:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(out.shape[0], cfg.max_size, replace=False))
        out = out[keep]
    return out


def cohort_stats(emb, cohort, top_n: int, *, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation ``(X,)``, ``(X,)`` of each row's ``top_n`` highest cosine scores to ``cohort``.

    ``emb`` ``(X, E)``, ``cohort`` ``(C, E)``, both normalised here. ``exclude`` ``(X, C)`` bool marks cohort
    entries that must not count for a row (e.g. the row's own speaker). ``top_n`` is capped at the number of
    entries a row may use; at least two must remain.
    """
    x = _unit(_matrix(emb, "embeddings"), "embeddings")
    c = _unit(_matrix(cohort, "cohort"), "cohort")
    if x.shape[1] != c.shape[1]:
        raise DataError(f"cohort is {c.shape[1]}-dimensional, embeddings are {x.shape[1]}-dimensional")
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != (x.shape[0], c.shape[0]):
            raise ValueError(f"exclude must be {(x.shape[0], c.shape[0])}, got {exclude.shape}")
        usable = int((~exclude).sum(1).min()) if x.shape[0] else c.shape[0]
    else:
        usable = c.shape[0]
    n = min(int(top_n), usable)
    if n < 2:
        raise DataError(f"cohort: {usable} usable entries, AS-norm needs at least 2")
    mu, sd = np.empty(x.shape[0]), np.empty(x.shape[0])
    for a in range(0, x.shape[0], _CHUNK):
        s = x[a:a + _CHUNK] @ c.T                                   # (chunk, E) x (E, C) -> (chunk, C)
        if exclude is not None:
            s[exclude[a:a + _CHUNK]] = -np.inf
        top = np.partition(s, s.shape[1] - n, axis=1)[:, -n:]       # (chunk, n): the n best, unordered
        mu[a:a + _CHUNK] = top.mean(1)
        sd[a:a + _CHUNK] = top.std(1)
    return mu, np.maximum(sd, _MIN_SD)


def asnorm_from_stats(scores, enroll_stats, test_stats) -> np.ndarray:
    """AS-norm of raw ``scores`` ``(M, K)`` given ``enroll_stats = (mu (K,), sd (K,))`` and ``test_stats`` ``(M,)``."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be (M, K), got shape {s.shape}")
    mu_e, sd_e = (np.asarray(v, dtype=np.float64) for v in enroll_stats)
    mu_t, sd_t = (np.asarray(v, dtype=np.float64) for v in test_stats)
    if mu_e.shape != (s.shape[1],) or sd_e.shape != (s.shape[1],):
        raise ValueError(f"enroll stats must be ({s.shape[1]},) for scores {s.shape}")
    if mu_t.shape != (s.shape[0],) or sd_t.shape != (s.shape[0],):
        raise ValueError(f"test stats must be ({s.shape[0]},) for scores {s.shape}")
    return 0.5 * ((s - mu_e[None]) / sd_e[None] + (s - mu_t[:, None]) / sd_t[:, None])


def asnorm(scores, enroll_emb, test_emb, cohort, top_n: int = 100) -> np.ndarray:
    """AS-norm ``(M, K)`` of raw ``scores`` ``(M, K)`` between ``test_emb`` ``(M, E)`` and ``enroll_emb`` ``(K, E)``.

    ``cohort`` ``(C, E)``; each of the K models and M tests is scored against it once.
    """
    s = np.asarray(scores, dtype=np.float64)
    n_test, n_enroll = len(test_emb), len(enroll_emb)
    if s.shape != (n_test, n_enroll):
        raise ValueError(f"scores must be (M, K) = {(n_test, n_enroll)}, got {s.shape}")
    return asnorm_from_stats(s, cohort_stats(enroll_emb, cohort, top_n), cohort_stats(test_emb, cohort, top_n))


# domain adaptation ---------------------------------------------------------------------------

@dataclass
class DomainStats:
    """Statistics of a target domain: ``mean`` ``(E,)`` and optional ZCA ``whiten`` ``(E, E)`` (None: centre only).

    ``apply(emb)`` maps ``(N, E)`` embeddings to ``unit((emb - mean) @ whiten)``. Serialise with ``to_dict``
    (plain lists) and ``from_dict``.
    """

    mean: np.ndarray
    whiten: np.ndarray | None = None
    n: int = 0                        # embeddings the statistics came from
    shrinkage: float = 0.0

    def __post_init__(self):
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        if self.whiten is not None:
            self.whiten = np.asarray(self.whiten, dtype=np.float64)
            if self.whiten.shape != (self.mean.size, self.mean.size):
                raise DataError(f"domain stats: whitening matrix {self.whiten.shape} does not match mean "
                                f"({self.mean.size},)")
        if not np.all(np.isfinite(self.mean)) or (self.whiten is not None and not np.all(np.isfinite(self.whiten))):
            raise DataError("domain stats: contain NaN or Inf")

    @classmethod
    def fit(cls, emb, *, whiten: bool = False, shrinkage: float = 0.5) -> "DomainStats":
        """Estimate from unlabelled embeddings ``(N, E)`` (normalised here).

        ``whiten``: also a ZCA matrix ``V diag(1/sqrt(l)) V^T`` of the shrunk covariance
        ``(1 - shrinkage) * cov + shrinkage * (trace(cov) / E) * I``; shrinkage keeps it stable when N < E.
        """
        if not 0.0 <= shrinkage <= 1.0:
            raise ConfigError(f"shrinkage must be in [0, 1], got {shrinkage}")
        x = _unit(_matrix(emb, "domain embeddings"), "domain embeddings")
        if x.shape[0] < 2:
            raise DataError(f"domain statistics need at least 2 embeddings, got {x.shape[0]}")
        mean = x.mean(0)
        w = None
        if whiten:
            if shrinkage == 0.0 and x.shape[0] <= x.shape[1]:
                raise ConfigError(f"whitening {x.shape[1]}-dim embeddings from {x.shape[0]} needs shrinkage > 0")
            xc = x - mean
            cov = xc.T @ xc / (x.shape[0] - 1)                          # (E, E)
            iso = np.trace(cov) / cov.shape[0]
            cov = (1.0 - shrinkage) * cov + shrinkage * iso * np.eye(cov.shape[0])
            vals, vecs = np.linalg.eigh(cov)
            vals = np.maximum(vals, 1e-12 * max(iso, 1e-12))
            w = (vecs / np.sqrt(vals)) @ vecs.T * np.sqrt(iso)          # scaled so isotropic data stays put
        return cls(mean=mean, whiten=w, n=int(x.shape[0]), shrinkage=float(shrinkage if whiten else 0.0))

    def apply(self, emb) -> np.ndarray:
        """``(N, E)`` -> ``(N, E)`` centred (and whitened), L2-normalised."""
        x = _unit(_matrix(emb, "embeddings"), "embeddings")
        if x.shape[1] != self.mean.size:
            raise DataError(f"domain stats are {self.mean.size}-dimensional, embeddings {x.shape[1]}-dimensional")
        x = x - self.mean
        if self.whiten is not None:
            x = x @ self.whiten
        return _unit(x, "adapted embeddings (an embedding equal to the domain mean)")

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "whiten": None if self.whiten is None else self.whiten.tolist(),
                "n": self.n, "shrinkage": self.shrinkage}

    @classmethod
    def from_dict(cls, d: dict) -> "DomainStats":
        try:
            return cls(mean=d["mean"], whiten=d.get("whiten"), n=int(d.get("n", 0)),
                       shrinkage=float(d.get("shrinkage", 0.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"domain stats: malformed ({e!r})") from None


@dataclass
class ASNorm:
    """An AS-norm cohort ready to use: ``cohort`` ``(C, E)`` L2-normalised, ``top_n`` scores per side.

    ``stats(emb)`` gives one side's ``(mu (X,), sd (X,))``; ``normalise(scores, enroll_stats, test_stats)``
    applies them, so a caller that scores the same models many times computes their statistics once.
    """

    cohort: np.ndarray
    top_n: int = 100

    def __post_init__(self):
        self.cohort = _unit(_matrix(self.cohort, "cohort"), "cohort")
        if self.top_n < 2:
            raise ConfigError(f"AS-norm top_n must be >= 2, got {self.top_n}")
        if self.cohort.shape[0] < 2:
            raise DataError(f"cohort: {self.cohort.shape[0]} entries, AS-norm needs at least 2")

    @classmethod
    def from_embeddings(cls, emb, labels, cfg: CohortConfig | None = None) -> "ASNorm":
        cfg = cfg or CohortConfig()
        return cls(build_cohort(emb, labels, cfg), cfg.top_n)

    def stats(self, emb, *, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """``(mu (X,), sd (X,))`` of ``emb`` ``(X, E)`` against the cohort (see ``cohort_stats``)."""
        return cohort_stats(emb, self.cohort, self.top_n, exclude=exclude)

    def normalise(self, scores, enroll_stats, test_stats) -> np.ndarray:
        return asnorm_from_stats(scores, enroll_stats, test_stats)

    def __call__(self, scores, enroll_emb, test_emb) -> np.ndarray:
        """AS-norm ``(M, K)`` of ``scores`` between ``test_emb`` ``(M, E)`` and ``enroll_emb`` ``(K, E)``."""
        return asnorm(scores, enroll_emb, test_emb, self.cohort, self.top_n)

    def to_dict(self) -> dict:
        return {"cohort": self.cohort.astype(np.float32).tolist(), "top_n": self.top_n}

    @classmethod
    def from_dict(cls, d: dict) -> "ASNorm":
        try:
            return cls(cohort=np.asarray(d["cohort"], dtype=np.float64), top_n=int(d.get("top_n", 100)))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"AS-norm cohort: malformed ({e!r})") from None
