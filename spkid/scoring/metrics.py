"""Identification accuracy and verification metrics (EER, minDCF) for ``spkid evaluate`` and the scorers.

Verification convention throughout: a trial is *accepted* when ``score >= threshold``;
``labels`` are 1 for target trials (same speaker) and 0 for non-target trials.
Every threshold returned here reproduces, under that rule, the error rates it was found for.

- ``scores``: ``(P,)`` float, one per trial.
- ``labels``: ``(P,)`` 0/1 (or bool).
- ``emb``: ``(N, E)`` L2-normalised embeddings; trials index into its rows.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from spkid.errors import DataError

# identification ------------------------------------------------------------------------------

def accuracy(answers: dict[str, str], predictions: dict[str, str]) -> float:
    """Fraction of ids whose predicted speaker equals the answer; both dicts must hold the same ids."""
    if not answers:
        raise DataError("no answers to score against")
    missing = sorted(answers.keys() - predictions.keys())
    extra = sorted(predictions.keys() - answers.keys())
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} answer ids missing from predictions ({_examples(missing)})")
        if extra:
            parts.append(f"{len(extra)} predicted ids not in answers ({_examples(extra)})")
        raise DataError("predictions and answers differ: " + "; ".join(parts))
    correct = sum(predictions[k] == v for k, v in answers.items())
    return correct / len(answers)


def _examples(items: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return f"e.g. {shown}" + (", ..." if len(items) > n else "")


# verification --------------------------------------------------------------------------------

def _check_trials(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(scores float64, labels bool)``, both ``(P,)``, with both kinds of trial present."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must have the same length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (non-target) or 1 (target)")
    y = y.astype(bool)
    n_tar, n_non = int(y.sum()), int((~y).sum())
    if n_tar == 0 or n_non == 0:
        raise DataError(f"verification needs target and non-target trials, got {n_tar} target and {n_non} non-target")
    return s, y


def _roc(scores, labels):
    """Operating points of the exact ROC sweep.

    Returns ``(thresholds, p_miss, p_fa)``, each ``(K + 1,)`` for K distinct scores: point 0
    rejects every trial (threshold just above the top score), point k accepts every trial
    with ``score >= thresholds[k]``, the k-th largest distinct score. Tied scores move together.
    """
    s, y = _check_trials(scores, labels)
    n_tar, n_non = int(y.sum()), int((~y).sum())
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[s[1:] != s[:-1], True]            # last index of each run of tied scores
    tar_acc = np.cumsum(y)[last]                    # targets accepted at each distinct threshold
    non_acc = np.cumsum(~y)[last]
    thresholds = np.r_[np.nextafter(s[0], np.inf), s[last]]
    p_miss = np.r_[1.0, 1.0 - tar_acc / n_tar]
    p_fa = np.r_[0.0, non_acc / n_non]
    return thresholds, p_miss, p_fa


def eer(scores, labels) -> tuple[float, float]:
    """Equal error rate and its threshold.

    Sweeps the exact ROC over the sorted scores and linearly interpolates between the two
    adjacent operating points where ``p_miss - p_fa`` changes sign; the threshold is
    interpolated between their scores with the same weight.
    """
    thr, p_miss, p_fa = _roc(scores, labels)
    d = p_miss - p_fa                               # 1 at point 0, -1 at the last point, non-increasing
    k = int(np.argmax(d <= 0))                      # first point at or past the crossing; k >= 1
    a = d[k - 1] / (d[k - 1] - d[k])                # weight of point k in the interpolation
    rate = p_fa[k - 1] + a * (p_fa[k] - p_fa[k - 1])
    lo = thr[k] if k == 1 else thr[k - 1]           # point 0's threshold is only a sentinel
    threshold = lo + a * (thr[k] - lo)
    return float(rate), float(threshold)


def min_dcf(scores, labels, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> tuple[float, float]:
    """Minimum normalised detection cost (NIST SRE) and the threshold reaching it.

    ``DCF(t) = c_miss * p_target * p_miss(t) + c_fa * (1 - p_target) * p_fa(t)``, divided by
    the cost of the best trivial system ``min(c_miss * p_target, c_fa * (1 - p_target))``;
    so the result is at most 1 (accept-all and reject-all are among the points swept).
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be positive, got {c_miss} and {c_fa}")
    thr, p_miss, p_fa = _roc(scores, labels)
    cost = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    cost = cost / min(c_miss * p_target, c_fa * (1.0 - p_target))
    k = int(np.argmin(cost))
    return float(cost[k]), float(thr[k])


def threshold_at_far(scores, labels, far: float) -> float:
    """Smallest threshold whose false-accept rate on these trials is at most ``far`` (``0 <= far < 1``)."""
    if not 0.0 <= far < 1.0:
        raise ValueError(f"far must be in [0, 1), got {far}")
    s, y = _check_trials(scores, labels)
    non = np.sort(s[~y])[::-1]
    n = non.size
    m = math.floor(far * n)                         # most false accepts allowed; fix float rounding both ways
    while (m + 1) / n <= far:
        m += 1
    while m / n > far:
        m -= 1
    # Accepting >= t lets in the non-targets above t; the (m+1)-th largest must stay out.
    return float(np.nextafter(non[m], np.inf))


# trials --------------------------------------------------------------------------------------

def make_trials(labels: list[str], *, max_nontarget: int | None = None, seed: int = 0):
    """Verification trials over utterances with speaker ``labels`` ``(N,)``.

    Returns ``(i_idx, j_idx, is_target)``, each ``(P,)`` (int64, int64, bool), ordered by
    ``(i, j)`` with ``i < j``: every same-speaker pair, and every different-speaker pair or,
    with ``max_nontarget``, a uniform random subset of that many (reproducible by ``seed``).
    All non-target pairs number about ``N**2 / 2``: pass ``max_nontarget`` for large ``N``.
    """
    n = len(labels)
    if n < 2:
        raise DataError(f"verification trials need at least 2 utterances, got {n}")
    if max_nontarget is not None and max_nontarget < 0:
        raise ValueError(f"max_nontarget must be >= 0, got {max_nontarget}")
    _, spk = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    spk = spk.reshape(-1)
    # Pair (i, j), i < j, has linear index offset[i] + (j - i - 1) in row-major upper-triangle order.
    offset = np.r_[0, np.cumsum(np.arange(n - 1, 0, -1, dtype=np.int64))]
    total = int(offset[-1])
    counts = np.bincount(spk)
    n_target = int((counts * (counts - 1) // 2).sum())
    n_nontarget = total - n_target

    groups = np.split(np.argsort(spk, kind="stable"), np.cumsum(counts)[:-1])   # each speaker's rows, ascending
    tar = [_pair_index(g, offset) for g in groups if g.size > 1]
    tar = np.concatenate(tar) if tar else np.zeros(0, dtype=np.int64)

    if max_nontarget is None or max_nontarget >= n_nontarget:
        i, j = np.triu_indices(n, k=1)
        non = (offset[i] + (j - i - 1))[spk[i] != spk[j]]
    else:
        non = _sample_nontarget(spk, offset, total, n_nontarget, max_nontarget, np.random.default_rng(seed))

    lin = np.concatenate([tar, non]).astype(np.int64)
    is_target = np.r_[np.ones(tar.size, bool), np.zeros(non.size, bool)]
    order = np.argsort(lin, kind="stable")
    i_idx, j_idx = _unrank(lin[order], offset)
    return i_idx, j_idx, is_target[order]


def _pair_index(idx: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Linear indices of all pairs within ``idx`` (sorted utterance indices)."""
    a, b = np.triu_indices(idx.size, k=1)
    i, j = idx[a], idx[b]
    return offset[i] + (j - i - 1)


def _unrank(lin: np.ndarray, offset: np.ndarray):
    i = np.searchsorted(offset, lin, side="right") - 1
    j = lin - offset[i] + i + 1
    return i.astype(np.int64), j.astype(np.int64)


def _sample_nontarget(spk, offset, total, n_nontarget, k, rng) -> np.ndarray:
    """``k`` distinct non-target pair indices, uniform, without enumerating all pairs."""
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    # Draw pairs without replacement in random order and keep the first k non-targets:
    # a uniform subset. Oversample by the non-target share; redraw bigger if short.
    size = min(total, int(k * total / n_nontarget * 1.1) + 16)
    while True:
        lin = rng.choice(total, size=size, replace=False)
        i, j = _unrank(lin, offset)
        lin = lin[spk[i] != spk[j]]
        if lin.size >= k:
            return np.sort(lin[:k])
        size = min(total, size * 2)


def score_trials(emb, i_idx, j_idx) -> np.ndarray:
    """Cosine scores ``(P,)`` float32 of trials ``(i_idx[p], j_idx[p])`` over ``emb`` ``(N, E)`` L2-normalised."""
    if isinstance(emb, torch.Tensor):
        emb = emb.detach().cpu().numpy()
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"emb must be (N, E), got shape {emb.shape}")
    norms = np.linalg.norm(emb, axis=1)
    if emb.shape[0] and not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(f"emb rows must be L2-normalised, norms range {norms.min():.4g}..{norms.max():.4g}")
    i_idx, j_idx = np.asarray(i_idx, dtype=np.int64), np.asarray(j_idx, dtype=np.int64)
    if i_idx.shape != j_idx.shape:
        raise ValueError(f"i_idx {i_idx.shape} and j_idx {j_idx.shape} must have the same shape")
    out = np.empty(i_idx.shape, dtype=np.float32)
    step = 1 << 16                                  # bounds the (step, E) gathers, not all P at once
    for a in range(0, i_idx.size, step):
        out[a:a + step] = np.einsum("pe,pe->p", emb[i_idx[a:a + step]], emb[j_idx[a:a + step]])
    return out
