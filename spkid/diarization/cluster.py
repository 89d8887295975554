"""Clustering window embeddings into speakers, with the speaker count found automatically.

Three pieces, each a plain function of L2-normalised embeddings ``x`` ``(N, E)`` (time order) to labels ``(N,)``:

- ``ahc``: agglomerative clustering (average linkage on cosine distance), cut at a calibrated distance, or at
  ``k`` clusters when the count is known or bounded;
- ``spectral``: spectral clustering of the pruned cosine affinity, the count from the largest gap between
  Laplacian eigenvalues, the pruning chosen per recording by the normalised maximum eigengap (Park et al.,
  "Auto-tuning spectral clustering for speaker diarization", 2019), the spectral embedding cut by ``kmeans`` (the
  best of several k-means++ starts);
- ``split_recentred``: each large cluster clustered again around its own mean (speakers that centring on the
  recording's mean left together), kept only where the parts are clearly different voices;
- ``split_by_scores``: each cluster split where its windows' scores against known speakers (an enrollment) say
  it holds several of them, smoothed in time by the same HMM;
- ``hmm_resegment``: a VBx-style refinement (Landini et al., 2022): an HMM whose states are the speakers, with a
  loop probability between consecutive windows, run forward-backward; speaker centres re-estimated from the
  posteriors and speakers whose share vanishes dropped, a few times over.

``compact`` averages runs of consecutive windows so that a long recording clusters a bounded number of points
(``(N, E) -> (M, E)``); the labels of the representatives are carried back to the windows and refined there.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.cluster.vq import ClusterError, kmeans2


WINDOWS_PER_SPEAKER = 6      # spectral's count is at most N / 6 (4.5 s of speech per speaker on average)
RESTARTS_COUNT_GIVEN = 10    # k-means starts when the count is given: the partition is then k-means' alone, and its
                             # best start scored lower DER with the count given; with the count found, the merges
                             # after it took one start's partitions better (docs/diarization.md)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0, 1, ... in order of first appearance ``(N,) -> (N,)``."""
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inv].reshape(labels.shape)


def centroids(x: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """L2-normalised mean embedding per label ``(K, E)`` (labels 0..K-1)."""
    k = int(labels.max()) + 1
    w = np.ones(len(x)) if weights is None else weights
    c = np.zeros((k, x.shape[1]))
    np.add.at(c, labels, x * w[:, None])
    return _unit(c)


def _bounded(k: int, lo: int, hi: int, n: int) -> int:
    return max(1, min(max(k, lo), hi, n))


def ahc(x: np.ndarray, threshold: float, *, n_speakers: int | None = None, min_speakers: int = 1,
        max_speakers: int | None = None) -> np.ndarray:
    """Average-linkage clustering on cosine distance ``(N, E) -> (N,)``.

    Cut where merging would join clusters further apart than ``threshold`` (cosine distance), unless
    ``n_speakers`` is given or the cut's count falls outside ``[min_speakers, max_speakers]``: then cut at that
    many clusters."""
    n = len(x)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    z = linkage(_unit(x), method="average", metric="cosine")
    hi = max_speakers or n
    if n_speakers is not None:
        return relabel(fcluster(z, _bounded(n_speakers, 1, n, n), criterion="maxclust") - 1)
    labels = fcluster(z, threshold, criterion="distance") - 1
    k = int(labels.max()) + 1
    if not min_speakers <= k <= hi:
        labels = fcluster(z, _bounded(k, min_speakers, hi, n), criterion="maxclust") - 1
    return relabel(labels)


def spectral(x: np.ndarray, *, n_speakers: int | None = None, min_speakers: int = 1, max_speakers: int | None = None,
             prune: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4), seed: int = 0,
             restarts: int = 1) -> np.ndarray:
    """Spectral clustering ``(N, E) -> (N,)`` with the count from the eigengap (NME-tuned pruning).

    For each pruning fraction ``p`` only the ``p N`` largest similarities of each row are kept; the ``p`` whose
    largest eigengap is largest relative to ``p`` wins (NME). A count of 1 is only chosen when ``min_speakers``
    or ``n_speakers`` says so (an eigengap cannot tell one cluster from noise: pair with a merge threshold). The
    count is at most one speaker per ``WINDOWS_PER_SPEAKER`` points: on a short recording without structure (one
    speaker) the largest gap otherwise falls anywhere up to 20. The spectral embedding is cut by k-means, the best
    of ``restarts`` k-means++ starts (``kmeans``)."""
    n = len(x)
    cap = max(2, n // WINDOWS_PER_SPEAKER, min_speakers, n_speakers or 0)
    hi = min(max(max_speakers or 20, n_speakers or 0), cap, n - 1) if n > 2 else 1
    if n <= 2 or (n_speakers or 0) == 1 or hi < 2:
        return np.zeros(n, dtype=np.int64)
    sim = _unit(x) @ _unit(x).T
    best = None
    for p in prune:                                         # eigenvalues only: the vectors of the winner alone
        keep = max(2, int(round(p * n)))
        lap = _laplacian(sim, keep)
        vals = np.linalg.eigvalsh(lap)
        gaps = np.diff(vals[: hi + 1])
        lo = min(max(min_speakers, 2), hi)                  # a minimum above the points available: all of them
        k = min(n_speakers, hi) if n_speakers else int(np.argmax(gaps[lo - 1: hi]) + lo)
        ratio = (keep / n) / (gaps[k - 1] / max(vals[-1], 1e-10) + 1e-10)
        if best is None or ratio < best[0]:
            best = (ratio, k, keep)
    _, k, keep = best
    _, vecs = np.linalg.eigh(_laplacian(sim, keep))
    return relabel(kmeans(_unit(vecs[:, :k]), k, seed=seed, restarts=restarts))


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, restarts: int = 1) -> np.ndarray:
    """k-means labels ``(N, D) -> (N,)``: of ``restarts`` k-means++ starts (seeds ``seed``, ``seed + 1``, ...), the
    one with the least within-cluster sum of squares among those that leave no cluster empty; if every start does,
    the first start's labels (fewer than ``k`` clusters, renumbered by ``relabel`` where used)."""
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # scipy's notes on empty clusters and on points k-means++ cannot spread
        for s in range(max(1, restarts)):
            try:
                c, labels = kmeans2(x, k, minit="++", seed=seed + s, missing="raise")
            except ClusterError:
                continue
            inertia = float(((x - c[labels]) ** 2).sum())
            if best is None or inertia < best[0]:
                best = (inertia, labels)
        return best[1] if best is not None else kmeans2(x, k, minit="++", seed=seed, missing="warn")[1]


def _laplacian(sim: np.ndarray, keep: int) -> np.ndarray:
    """The graph Laplacian ``(N, N)`` of ``_pruned(sim, keep)``."""
    a = _pruned(sim, keep)
    return np.diag(a.sum(1)) - a


def _pruned(sim: np.ndarray, keep: int) -> np.ndarray:
    """Keep each row's ``keep`` largest similarities (others 0), symmetrised ``(N, N)``."""
    idx = np.argpartition(-sim, keep - 1, axis=1)[:, :keep]
    a = np.zeros_like(sim)
    np.put_along_axis(a, idx, np.clip(np.take_along_axis(sim, idx, 1), 0.0, None), 1)
    a = 0.5 * (a + a.T)
    np.fill_diagonal(a, 0.0)
    return a


def merge_close(x: np.ndarray, labels: np.ndarray, threshold: float, min_speakers: int = 1, *,
                weights: np.ndarray | None = None, settled: float = 0.0,
                settled_threshold: float | None = None) -> np.ndarray:
    """Merge pairs of clusters while their centres' cosine distance is below ``threshold`` (and more than
    ``min_speakers`` clusters remain), the pair furthest below its limit first ``(N,) -> (N,)``.

    ``weights`` ``(N,)`` counts the windows behind each point (``compact``'s averages; default 1). With
    ``settled`` > 0, two clusters that both hold at least ``settled`` windows merge only below
    ``settled_threshold`` (meant to be lower; default ``threshold``): a speaker split in two leaves a fragment,
    while two clusters that each hold much speech are rarely one speaker (docs/diarization.md)."""
    labels = relabel(labels)
    settled_threshold = threshold if settled_threshold is None else settled_threshold
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=float)
    while labels.max() + 1 > min_speakers:
        c = centroids(x, labels, w)
        d = 1.0 - c @ c.T
        if settled > 0:
            size = np.bincount(labels, weights=w)
            d = d - np.where(np.minimum.outer(size, size) >= settled, settled_threshold, threshold)
        else:
            d = d - threshold
        np.fill_diagonal(d, np.inf)
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] >= 0:
            break
        labels = relabel(np.where(labels == max(i, j), min(i, j), labels))
    return labels


def split_recentred(raw: np.ndarray, labels: np.ndarray, accept: float, min_windows: int, threshold: float, *,
                    settled: float = 0.0, settled_threshold: float | None = None, max_points: int = 2000,
                    max_speakers: int | None = None) -> np.ndarray:
    """Each cluster of at least ``min_windows`` windows clustered again in its own centred space ``(N,) -> (N,)``.

    Centring on the recording's mean embedding removes what all windows share; when one speaker dominates, that
    mean is mostly that speaker, and the others all point away from it alike and end up in one cluster. Centred
    on the cluster's own mean, its speakers spread apart: ``spectral`` then ``merge_close`` (``threshold``,
    ``settled``, ``settled_threshold`` as in the first pass) split it, and the split is kept only when every pair
    of its parts' uncentred ``raw`` ``(N, E)`` mean embeddings has a cosine below ``accept`` (two halves of one
    speaker score above it: one voice is not split by its noise). Each cluster gets its share of ``max_points``
    averaged points (all clusters together cost at most what the first pass did); the count stays at most
    ``max_speakers`` (without it, at most 20 or the count given, as the first pass)."""
    labels = relabel(labels)
    raw = _unit(raw)
    out, nxt = labels.copy(), int(labels.max()) + 1
    limit = max_speakers if max_speakers is not None else max(20, nxt)
    for k in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == k)
        room = limit - nxt + 1                             # parts this cluster may become
        if len(idx) < max(min_windows, 2) or room < 2:
            continue
        xc = _unit(raw[idx] - raw[idx].mean(0))
        reps, group = compact(xc, max(2, max_points * len(idx) // len(labels)))
        sub = spectral(reps, max_speakers=room)
        sub = merge_close(reps, sub, threshold, weights=np.bincount(group, minlength=len(reps)), settled=settled,
                          settled_threshold=settled_threshold)[group]
        parts = int(sub.max()) + 1
        if parts < 2:
            continue
        sums = np.zeros((parts, raw.shape[1]))
        np.add.at(sums, sub, raw[idx])
        if (np.linalg.norm(sums, axis=1) < 1e-6 * np.bincount(sub)).any():    # a part with no direction: no evidence
            continue
        c = _unit(sums)
        cos = c @ c.T
        np.fill_diagonal(cos, -1.0)
        if not cos.max() < accept:                         # NaN too: no split
            continue
        for j in range(1, parts):
            out[idx[sub == j]] = nxt
            nxt += 1
    return relabel(out)


def split_by_scores(scores: np.ndarray, labels: np.ndarray, min_windows: int, *, scale: float = 20.0,
                    loop: float = 0.9, candidates: int = 8) -> tuple[np.ndarray, dict[int, list[int]]]:
    """Each cluster split by the known speaker its windows score best against: ``scores`` ``(N, S)`` (window x
    speaker, e.g. a registry's back end), ``labels`` ``(N,)`` -> ``(labels (N,), parts)``.

    Within a cluster (its windows in time order), an HMM whose states are the ``candidates`` speakers with the
    highest mean score there (log-likelihood ``scale * score``, staying with probability ``loop``) gives each
    window a speaker; the speakers holding at least ``min_windows`` windows become the parts, and the windows of
    the others go to the part they score best against. ``parts`` maps each split cluster to its labels (the first
    is the cluster's own; the new ones follow the old labels): a caller keeps a split only where the parts prove
    to be those speakers (``names.Enrolled.split``)."""
    labels = relabel(labels)
    out, nxt, parts = labels.copy(), int(labels.max()) + 1 if labels.size else 0, {}
    for k in range(nxt):
        idx = np.flatnonzero(labels == k)
        if len(idx) < 2 * max(min_windows, 1) or scores.shape[1] < 2:
            continue
        s = scores[idx]
        cand = np.argsort(-s.mean(0), kind="stable")[:candidates]
        who = cand[_forward_backward(scale * s[:, cand], loop, np.zeros(len(idx) - 1, dtype=bool)).argmax(1)]
        big = np.array([j for j in cand if (who == j).sum() >= min_windows])
        if len(big) < 2:
            continue
        who = np.where(np.isin(who, big), who, big[np.argmax(s[:, big], axis=1)])
        ids = [k]
        for j in big[1:]:
            out[idx[who == j]] = nxt
            ids.append(nxt)
            nxt += 1
        parts[k] = ids
    return out, parts


def merge_same_speaker(raw: np.ndarray, labels: np.ndarray, margin: float, min_speakers: int = 1) -> np.ndarray:
    """Merge clusters that this recording says are one speaker: ``raw`` ``(N, E)`` uncentred embeddings.

    Each cluster's windows, split into their first and second half in time, give two centres whose cosine is what
    one speaker scores against itself here (same model, channel and room); two clusters whose centres score within
    ``margin`` of the lower of their two self-scores are merged, the closest pair first (``(N,) -> (N,)``). This
    catches one speaker split in two after centring (with one speaker, the mean removed is the speaker)."""
    labels = relabel(labels)
    raw = _unit(raw)
    while labels.max() + 1 > min_speakers:
        k = int(labels.max()) + 1
        self_score = np.full(k, np.nan)
        for j in range(k):
            idx = np.flatnonzero(labels == j)
            if len(idx) >= 4:
                a, b = _unit(raw[idx[: len(idx) // 2]].mean(0)), _unit(raw[idx[len(idx) // 2:]].mean(0))
                self_score[j] = a @ b
        c = centroids(raw, labels)
        gap = c @ c.T - np.fmin.outer(self_score, self_score)        # (K, K); NaN where a cluster is too small
        gap[np.isnan(gap)] = -np.inf
        np.fill_diagonal(gap, -np.inf)
        i, j = np.unravel_index(np.argmax(gap), gap.shape)
        if gap[i, j] <= -margin:
            break
        labels = relabel(np.where(labels == max(i, j), min(i, j), labels))
    return labels


def hmm_resegment(x: np.ndarray, labels: np.ndarray, *, gaps: np.ndarray | None = None, scale: float = 12.0,
                  loop: float = 0.9, iters: int = 3, min_share: float = 0.01, min_speakers: int = 1,
                  n_speakers: int | None = None) -> np.ndarray:
    """VBx-style refinement of ``labels`` ``(N,)`` for windows ``x`` ``(N, E)`` in time order.

    States are the speakers; a window's log-likelihood under speaker k is ``scale * cos(x_t, centre_k)``; between
    consecutive windows the speaker stays with probability ``loop`` (``gaps`` ``(N-1,)`` True where a pause
    separates two windows: there the next speaker is drawn afresh). Each iteration runs forward-backward,
    re-estimates the centres from the posteriors and drops speakers holding under ``min_share`` of the windows
    (never below ``min_speakers``, never when ``n_speakers`` is fixed). Returns the posterior's best labels.
    """
    x = _unit(x)
    labels = relabel(labels)
    n = len(x)
    gaps = np.zeros(max(n - 1, 0), dtype=bool) if gaps is None else gaps
    for _ in range(iters):
        c = centroids(x, labels)
        k = len(c)
        if k == 1 or n == 1:
            return np.zeros(n, dtype=np.int64)
        post = _forward_backward(scale * (x @ c.T), loop, gaps)               # (N, K)
        share = post.mean(0)
        keep = np.ones(k, dtype=bool)
        if n_speakers is None:
            for j in np.argsort(share):
                if share[j] < min_share and keep.sum() > max(min_speakers, 1):
                    keep[j] = False
        post = post[:, keep]
        new = relabel(post.argmax(1))
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def _forward_backward(loglik: np.ndarray, loop: float, gaps: np.ndarray) -> np.ndarray:
    """Posteriors ``(N, K)`` of a speaker-loop HMM with emissions ``loglik`` ``(N, K)`` (uniform start)."""
    n, k = loglik.shape
    stay = np.log(loop + (1 - loop) / k)
    move = np.log((1 - loop) / k)
    trans = np.full((k, k), move)
    np.fill_diagonal(trans, stay)
    free = np.full((k, k), -np.log(k))
    fwd = np.empty((n, k))
    fwd[0] = loglik[0] - np.log(k)
    for t in range(1, n):
        tr = free if gaps[t - 1] else trans
        fwd[t] = loglik[t] + _logsumexp(fwd[t - 1][:, None] + tr, axis=0)
    bwd = np.zeros((n, k))
    for t in range(n - 2, -1, -1):
        tr = free if gaps[t] else trans
        bwd[t] = _logsumexp(tr + (loglik[t + 1] + bwd[t + 1])[None, :], axis=1)
    lp = fwd + bwd
    return np.exp(lp - _logsumexp(lp, axis=1)[:, None])


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    """``log(sum(exp(a), axis))`` of finite ``a``, shifted by the maximum; scipy's costs 10x more per call in the
    HMM's per-window loop (its array-API checks)."""
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def compact(x: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` representatives: means of runs of ``ceil(N / max_points)`` consecutive windows.
    Returns ``(reps (M, E), group (N,))``, ``group[t]`` the representative of window ``t``."""
    n = len(x)
    g = max(1, -(-n // max_points))
    group = np.arange(n) // g
    reps = np.zeros((int(group[-1]) + 1 if n else 0, x.shape[1]))
    np.add.at(reps, group, x)
    return _unit(reps), group


__all__ = ["ahc", "spectral", "merge_close", "split_recentred", "split_by_scores", "hmm_resegment", "compact",
           "centroids", "relabel"]
