"""Enrollment done right: how a test clip is scored against enrolled speakers, the gallery's own operating
point, and enrollment clips that do not look like their speaker.

- Scoring modes (``EnrollConfig.scoring``): ``centroid`` (cosine to the normalised mean of the speaker's
  clips), ``best`` (max over the speaker's clips), ``topk_mean`` (mean of the ``top_k`` best clip scores).
  With an ``ASNorm`` every score is AS-normalised: the centroid with its own cohort statistics, each clip
  with its own before the max / top-k mean.
- Operating point (``estimate_threshold``), from the enrollment clips alone:
  * target scores: each clip against its own speaker's model built WITHOUT it (leave one out);
  * stranger scores: each clip against the K-1 other speakers' models (leave one speaker out: the clip's
    speaker plays a never-enrolled stranger). A real stranger meets K models, not K-1, and the best of K
    clears a threshold more often than the best of K-1; treating a stranger's scores against different
    speakers as independent, the best of K has CDF ``G ** (K / (K - 1))`` where G is the CDF of the best
    of K-1 (``method="empirical"``), or ``Phi((t - mu) / sd) ** K`` for Gaussian per-speaker scores
    (``method="gaussian"``).
  The threshold rejects ``reject_rate`` of strangers while accepting ``accept_rate`` of enrolled clips:
  when both hold on an interval, it lies ``margin`` of the way from its stranger end to its target end;
  when they cannot both hold (the distributions overlap) it is the point that minimises the larger of
  the two error rates, and the result says ``overlap=True``.
- Outliers (``flag_outliers``): a clip whose leave-one-out score to its own speaker is far below the
  speaker's other clips (robust z-score: median and MAD) is flagged.

Shapes: a gallery is K speakers, speaker k with clips ``(n_k, E)``; tests are ``(M, E)``; scores ``(M, K)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm as _gauss

from spkid.errors import ConfigError, DataError
from spkid.scoring.norm import ASNorm

SCORING_MODES = ("centroid", "best", "topk_mean")
THRESHOLD_METHODS = ("empirical", "gaussian")


@dataclass
class EnrollConfig:
    scoring: str = "centroid"         # centroid | best | topk_mean
    top_k: int = 3                    # topk_mean: clip scores averaged per speaker
    reject_rate: float = 0.95         # strangers (never-enrolled speakers) that should be answered "unknown"
    accept_rate: float = 0.95         # enrolled speakers' clips that should stay accepted
    margin: float = 0.5               # where in [stranger end, target end] the threshold goes when both hold
    method: str = "empirical"         # empirical | gaussian: how the best-of-K stranger score is modelled
    min_clips: int = 20               # fewer usable clips: no operating point (the caller keeps its default)
    outlier_z: float = 3.5            # robust z below -outlier_z flags an enrollment clip
    min_spread: float = 0.02          # floor on the MAD-based spread (cosine): tight speakers flag nothing by noise

    def __post_init__(self):
        if self.scoring not in SCORING_MODES:
            raise ConfigError(f"enroll scoring {self.scoring!r} unknown; choose one of {', '.join(SCORING_MODES)}")
        if self.method not in THRESHOLD_METHODS:
            raise ConfigError(f"threshold method {self.method!r} unknown; choose one of "
                              f"{', '.join(THRESHOLD_METHODS)}")
        if self.top_k < 1:
            raise ConfigError(f"enroll top_k must be >= 1, got {self.top_k}")
        for name in ("reject_rate", "accept_rate"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"enroll {name} must be in (0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.margin <= 1.0:
            raise ConfigError(f"enroll margin must be in [0, 1], got {self.margin}")
        if self.min_clips < 4:
            raise ConfigError(f"enroll min_clips must be >= 4 (2 speakers x 2 clips), got {self.min_clips}")
        if self.outlier_z <= 0 or self.min_spread <= 0:
            raise ConfigError("enroll outlier_z and min_spread must be > 0")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _clips(clips, what: str = "gallery") -> list[np.ndarray]:
    out = []
    for k, c in enumerate(clips):
        c = np.asarray(c.detach().cpu().numpy() if hasattr(c, "detach") else c, dtype=np.float64)
        if c.ndim != 2 or c.shape[0] == 0:
            raise DataError(f"{what}: speaker {k}: expected a non-empty (n, E) array, got shape {c.shape}")
        norms = np.linalg.norm(c, axis=1)
        if not np.all(np.isfinite(c)) or np.any(norms == 0):
            raise DataError(f"{what}: speaker {k}: embeddings must be finite and non-zero")
        out.append(c / norms[:, None])
    if out and len({c.shape[1] for c in out}) != 1:
        raise DataError(f"{what}: speakers have embeddings of different sizes {sorted({c.shape[1] for c in out})}")
    return out


_GATHER = 4_000_000                  # values per gathered (rows, K, L) block in Gallery._aggregate (32 MB)


class Gallery:
    """K enrolled speakers' clips ``[(n_k, E)]`` (normalised here), scored by ``cfg.scoring``, optionally AS-normed.

    Cohort statistics of every clip and centroid are computed once, here.
    """

    def __init__(self, clips, cfg: EnrollConfig | None = None, asnorm: ASNorm | None = None):
        self.cfg = cfg or EnrollConfig()
        self.clips = _clips(clips)
        if not self.clips:
            raise DataError("gallery: no speakers enrolled")
        self.asnorm = asnorm
        self.x = np.concatenate(self.clips)                          # (n, E) every clip
        self.owner = np.repeat(np.arange(len(self.clips)), [len(c) for c in self.clips])   # (n,)
        counts = np.array([len(c) for c in self.clips])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        lane = np.arange(counts.max())
        # (K, L): speaker k's clip indices, then len(x) (a column of -inf that _aggregate appends) as padding
        self._slots = np.where(lane < counts[:, None], starts[:, None] + lane, len(self.x))
        self.sums = np.stack([c.sum(0) for c in self.clips])         # (K, E)
        self.centroids = _unit(self.sums)                            # (K, E)
        # cohort statistics, once per clip and per centroid: ((n,), (n,)) and ((K,), (K,)), or None
        self.clip_stats = asnorm.stats(self.x) if asnorm is not None else None
        self.centroid_stats = asnorm.stats(self.centroids) if asnorm is not None else None

    @property
    def n_speakers(self) -> int:
        return len(self.clips)

    # scoring ---------------------------------------------------------------------------------

    def _pair(self, test: np.ndarray, models: np.ndarray, model_stats, test_stats) -> np.ndarray:
        s = test @ models.T                                          # (M, E) x (E, X) -> (M, X)
        if self.asnorm is None:
            return s
        return self.asnorm.normalise(s, model_stats, test_stats)

    def _aggregate(self, clip_scores: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """``(M, n)`` clip scores -> ``(M, K)`` per speaker by ``best``/``topk_mean``; ``mask`` (M, n) drops clips.

        Vectorised over speakers: each speaker's clips are gathered into ``(M, K, L)`` (L = most clips of any
        speaker, the rest padded with -inf), in row chunks of about ``_GATHER`` values (bounded memory)."""
        s = np.concatenate([clip_scores, np.full((clip_scores.shape[0], 1), -np.inf)], axis=1)   # (M, n + 1)
        if mask is not None:
            s[:, :-1][mask] = -np.inf
        slots = self._slots                                          # (K, L) clip index, n = the -inf pad
        out = np.empty((s.shape[0], self.n_speakers))
        step = max(1, _GATHER // slots.size)
        for a in range(0, s.shape[0], step):
            block = s[a:a + step][:, slots]                          # (m, K, L)
            if self.cfg.scoring == "best":
                out[a:a + step] = block.max(-1)
                continue
            top = -np.sort(-block, axis=-1)[..., :self.cfg.top_k]   # (m, K, <=top_k), -inf where dropped/padded
            valid = np.isfinite(top)
            cnt = valid.sum(-1)
            tot = np.where(valid, top, 0.0).sum(-1)
            out[a:a + step] = np.where(cnt > 0, tot / np.maximum(cnt, 1), -np.inf)
        return out

    def scores(self, test) -> np.ndarray:
        """Scores ``(M, K)`` of test embeddings ``(M, E)`` against every enrolled speaker."""
        t = _clips([test], "test embeddings")[0]
        if t.shape[1] != self.x.shape[1]:
            raise DataError(f"test embeddings are {t.shape[1]}-dim, the gallery {self.x.shape[1]}-dim")
        t_stats = self.asnorm.stats(t) if self.asnorm is not None else None
        if self.cfg.scoring == "centroid":
            return self._pair(t, self.centroids, self.centroid_stats, t_stats)
        return self._aggregate(self._pair(t, self.x, self.clip_stats, t_stats))

    def enrollment_scores(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores of the enrollment clips themselves: ``(target (n,), stranger (n, K-1), owner (n,))``.

        ``target[i]``: clip i against its own speaker's model without clip i (NaN when the speaker has no other
        clip); ``stranger[i]``: clip i against each other speaker's full model (leave one speaker out).
        """
        if self.n_speakers < 2:
            raise DataError("gallery: stranger scores need at least 2 enrolled speakers")
        x, own = self.x, self.owner
        t_stats = self.clip_stats
        if self.cfg.scoring == "centroid":
            full = self._pair(x, self.centroids, self.centroid_stats, t_stats)      # (n, K)
            rest = self.sums[own] - x                                                         # (n, E)
            has_rest = np.linalg.norm(rest, axis=1) > 1e-9
            loo = _unit(np.where(has_rest[:, None], rest, x))       # a lone clip gets a placeholder, NaN below
            if self.asnorm is None:
                target = (x * loo).sum(1)
            else:
                mu_e, sd_e = self.asnorm.stats(loo)
                s = (x * loo).sum(1)
                target = 0.5 * ((s - mu_e) / sd_e + (s - t_stats[0]) / t_stats[1])
            target = np.where(has_rest, target, np.nan)
        else:
            pair = self._pair(x, x, t_stats, t_stats)                # (n, n) clip vs clip
            full = self._aggregate(pair, mask=np.eye(len(x), dtype=bool))   # never a clip against itself
            target = full[np.arange(len(x)), own]
            target = np.where(np.isfinite(target), target, np.nan)
        others = ~np.eye(self.n_speakers, dtype=bool)[own]          # (n, K): True for the other speakers
        stranger = full[others].reshape(len(x), self.n_speakers - 1)
        return target, stranger, own


# operating point -----------------------------------------------------------------------------

@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    target_accept: float              # enrolled clips (leave one out) accepted at the threshold
    stranger_reject: float            # estimated strangers rejected, against all K speakers
    overlap: bool                     # True: reject_rate and accept_rate could not both be met
    n_speakers: int
    n_clips: int
    method: str

    @property
    def source(self) -> str:
        note = "; overlap: minimax of both errors" if self.overlap else ""
        return (f"enrollment ({self.n_speakers} speakers, {self.n_clips} clips, {self.method}): "
                f"est. strangers rejected {self.stranger_reject:.3f}, enrolled accepted {self.target_accept:.3f}{note}")


def clips_needed(counts, cfg: EnrollConfig | None = None) -> int:
    """More enrollment clips needed before ``estimate_threshold`` answers (0: enough).

    Usable clips are those of speakers with at least 2 (leave one out needs another); at least 2 such
    speakers and ``cfg.min_clips`` usable clips in all are needed.
    """
    cfg = cfg or EnrollConfig()
    counts = sorted((int(c) for c in counts), reverse=True)
    usable = sum(c for c in counts if c >= 2)
    two_best = (counts + [0, 0])[:2]                                 # a missing speaker counts as 0 clips
    short = sum(max(0, 2 - c) for c in two_best)                     # clips that make 2 speakers usable
    return max(cfg.min_clips - usable, short, 0)


def _stranger_accept(stranger: np.ndarray, k: int, method: str):
    """``fa(t)`` ``(T,) -> (T,)``: estimated fraction of strangers whose best of ``k`` scores reaches ``t``."""
    if method == "gaussian":
        mu, sd = float(stranger.mean()), max(float(stranger.std()), 1e-9)
        return lambda t: 1.0 - _gauss.cdf((t - mu) / sd) ** k
    best = np.sort(stranger.max(1))                                  # best of K-1 per clip
    power = k / (k - 1)
    return lambda t: 1.0 - (np.searchsorted(best, t, side="left") / best.size) ** power


def estimate_threshold(gallery: Gallery, strangers=None) -> tuple[OperatingPoint | None, int]:
    """The gallery's operating point from its own enrollment clips, or ``(None, clips still needed)``.

    ``strangers`` ``(S, E)``: optional embeddings of people known not to be enrolled (e.g. a background
    set); their best-of-K scores are direct samples, and the threshold must reject ``reject_rate`` of them
    as well as of the left-out enrolled speakers (the larger of the two acceptance estimates counts).
    """
    cfg = gallery.cfg
    counts = [len(c) for c in gallery.clips]
    needed = clips_needed(counts, cfg)
    if needed > 0:
        return None, needed
    target, stranger, _ = gallery.enrollment_scores()
    target = np.sort(target[np.isfinite(target)])
    fa_loso = _stranger_accept(stranger, gallery.n_speakers, cfg.method)
    cand = [target, stranger.ravel()]
    if cfg.method == "gaussian":                                     # its stranger end is exact: a candidate too
        cand.append([_gaussian_end(stranger, gallery.n_speakers, cfg.reject_rate)])
    if strangers is not None and len(strangers):
        ext = np.sort(gallery.scores(strangers).max(1))             # (S,) best of K, no correction needed
        cand.append(ext)
        fa = lambda t: np.maximum(fa_loso(t), 1.0 - np.searchsorted(ext, t, side="left") / ext.size)  # noqa: E731
    else:
        fa = fa_loso
    miss = lambda t: np.searchsorted(target, t, side="left") / target.size     # noqa: E731  target < t rejected
    # Candidate thresholds: every observed score and just above it (the empirical errors only change there).
    cand = np.unique(np.concatenate([np.asarray(c, dtype=np.float64).ravel() for c in cand]))
    cand = np.unique(np.r_[cand, np.nextafter(cand, np.inf)])
    f, m = fa(cand), miss(cand)
    both = (f <= 1.0 - cfg.reject_rate + 1e-12) & (m <= 1.0 - cfg.accept_rate + 1e-12)
    if both.any():
        lo, hi = float(cand[both].min()), float(cand[both].max())
        thr, overlap = lo + cfg.margin * (hi - lo), False
    else:
        thr, overlap = float(cand[int(np.argmin(np.maximum(f, m)))]), True
    t = np.array([thr])
    return OperatingPoint(threshold=thr, target_accept=float(1.0 - miss(t)[0]),
                          stranger_reject=float(1.0 - fa(t)[0]), overlap=overlap,
                          n_speakers=gallery.n_speakers, n_clips=int(sum(counts)), method=cfg.method), 0


def _gaussian_end(stranger: np.ndarray, k: int, reject_rate: float) -> float:
    mu, sd = float(stranger.mean()), max(float(stranger.std()), 1e-9)
    return mu + sd * float(_gauss.ppf(reject_rate ** (1.0 / k)))


# outliers ------------------------------------------------------------------------------------

def flag_outliers(clips, cfg: EnrollConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(flagged (n,) bool, z (n,))`` for one speaker's clips ``(n, E)``.

    ``z`` is the robust z-score of each clip's cosine to the centroid of the speaker's OTHER clips:
    ``(s - median) / max(1.4826 * MAD, min_spread)``. A clip with ``z < -outlier_z`` is flagged. Fewer
    than 3 clips give no reference spread: nothing is flagged (z = 0).
    """
    cfg = cfg or EnrollConfig()
    x = _clips([clips], "speaker clips")[0]
    n = x.shape[0]
    if n < 3:
        return np.zeros(n, dtype=bool), np.zeros(n)
    loo = _unit(x.sum(0)[None] - x)                                  # (n, E) centroid without each clip
    s = (x * loo).sum(1)
    med = float(np.median(s))
    spread = max(1.4826 * float(np.median(np.abs(s - med))), cfg.min_spread)
    z = (s - med) / spread
    return z < -cfg.outlier_z, z


def clip_count_message(needed: int, cfg: EnrollConfig | None = None) -> str:
    """The warning a caller shows when ``estimate_threshold`` returned None."""
    cfg = cfg or EnrollConfig()
    return (f"no threshold from enrollment yet: {needed} more clip{'s' if needed != 1 else ''} needed "
            f"(at least 2 speakers with 2 clips each, {cfg.min_clips} clips in all)")
