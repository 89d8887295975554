"""Clustering window embeddings: the count found automatically, forced or bounded; the HMM refinement; merging;
compaction of long recordings."""
import numpy as np
import pytest

from spkid.diarization import cluster as C


def _blobs(sizes, dim=16, spread=0.35, seed=0):
    """Runs of windows of ``len(sizes)`` speakers in time order: ``(N, E)`` and the true labels ``(N,)``."""
    rng = np.random.default_rng(seed)
    centres = C._unit(rng.standard_normal((len(sizes), dim)))
    x, y = [], []
    for k, n in enumerate(sizes):
        x.append(centres[k] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim))
        y += [k] * n
    return C._unit(np.concatenate(x)), np.array(y)


def _agree(a, b):
    """Share of windows on which two labellings agree after the best one-to-one relabelling."""
    from scipy.optimize import linear_sum_assignment
    m = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(m, (a, b), 1)
    r, c = linear_sum_assignment(-m)
    return m[r, c].sum() / len(a)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_ahc_finds_the_count(k):
    x, y = _blobs([23, 31, 17, 29, 19][:k])
    labels = C.ahc(x, 0.5)
    assert labels.max() + 1 == k and _agree(labels, y) == 1.0
    assert list(labels[:1]) == [0]                           # numbered in order of first appearance


def test_ahc_forced_and_bounded_counts():
    x, y = _blobs([20, 20, 20])
    assert C.ahc(x, 0.5, n_speakers=2).max() + 1 == 2
    assert C.ahc(x, 1.9, min_speakers=3).max() + 1 == 3      # a cut at 1 cluster, raised to the minimum
    assert C.ahc(x, 0.01, max_speakers=4).max() + 1 == 4     # a cut at ~60 clusters, lowered to the maximum
    assert C.ahc(x[:1], 0.5).tolist() == [0]


@pytest.mark.parametrize("k", [2, 3, 4])
def test_spectral_eigengap_count(k):
    x, y = _blobs([25, 30, 20, 35][:k], seed=k)
    labels = C.spectral(x)
    assert labels.max() + 1 == k and _agree(labels, y) == 1.0
    assert C.spectral(x, n_speakers=2).max() + 1 == 2


def test_merge_close_joins_one_speaker_split_in_two():
    x, _ = _blobs([40], spread=0.3)
    split = np.r_[np.zeros(20, int), np.ones(20, int)]
    assert C.merge_close(x, split, 0.3).max() == 0
    x2, y2 = _blobs([20, 20])
    assert C.merge_close(x2, y2, 0.3).max() == 1             # two real speakers stay apart


def test_hmm_resegment_fixes_isolated_errors_and_drops_empty_speakers():
    x, y = _blobs([30, 30, 30], spread=0.6, seed=1)
    noisy = y.copy()
    flips = [5, 17, 44, 70]
    noisy[flips] = (noisy[flips] + 1) % 3
    fixed = C.hmm_resegment(x, noisy, scale=12.0, loop=0.9)
    assert _agree(fixed, y) > _agree(noisy, y) and _agree(fixed, y) >= 0.98
    spurious = y.copy()
    spurious[[10]] = 3                                        # a one-window "speaker"
    assert C.hmm_resegment(x, spurious, min_share=0.05).max() + 1 == 3
    assert C.hmm_resegment(x, spurious, min_share=0.05, n_speakers=4).max() + 1 >= 3


def test_compact_bounds_the_points_and_keeps_the_mapping():
    x, _ = _blobs([500, 700])
    reps, group = C.compact(x, 100)
    assert len(reps) <= 100 and group.shape == (1200,) and group.max() == len(reps) - 1
    assert np.all(np.diff(group) >= 0)
    assert np.allclose(np.linalg.norm(reps, axis=1), 1.0)


def test_merge_same_speaker_keeps_one_voice_whole_and_two_apart():
    rng = np.random.default_rng(3)
    common = C._unit(rng.standard_normal(16))                  # what every window of a recording shares (raw)
    one = C._unit(common + 0.6 * C._unit(rng.standard_normal(16)) + 0.25 * rng.standard_normal((60, 16)))
    split = rng.integers(0, 2, 60)                              # one speaker cut in two by noise
    assert C.merge_same_speaker(one, split, 0.08).max() == 0
    two_x = np.concatenate([one[:30], C._unit(common + 0.6 * C._unit(rng.standard_normal(16))
                                              + 0.25 * rng.standard_normal((30, 16)))])
    two_y = np.r_[np.zeros(30, int), np.ones(30, int)]
    assert C.merge_same_speaker(two_x, two_y, 0.08).max() == 1
    assert C.merge_same_speaker(one, split, 0.08, min_speakers=2).max() == 1


def test_raw_merge_keeps_one_speaker_whole_and_two_apart():
    """Centring removes a lone speaker and the spectral step splits what is left; the merge of clusters whose
    uncentred means are alike (``merge_raw``) puts them back together, and leaves two real speakers apart."""
    from spkid.diarization.pipeline import DiarizeConfig, _cluster, _space
    rng = np.random.default_rng(0)
    e, n = 32, 80
    a, b = np.eye(e)[0], np.eye(e)[1]
    one = 3 * a + 0.3 * rng.standard_normal((n, e))        # windows at cosine ~0.87 to their speaker
    two = np.concatenate([3 * a + 0.3 * rng.standard_normal((n // 2, e)),
                          3 * b + 0.3 * rng.standard_normal((n // 2, e))])
    win = np.stack([np.arange(n) * 12000, np.arange(n) * 12000 + 24000], 1)

    def count(raw, merge_raw):
        x = _space(raw, (raw / np.linalg.norm(raw, axis=1, keepdims=True)).mean(0))
        cfg = DiarizeConfig(method="spectral", merge_raw=merge_raw, hmm=False)
        return int(_cluster(x, win, cfg, None, 1, None, raw).max()) + 1

    assert count(one, 0.0) >= 2                    # without it the lone speaker is split
    assert count(one, 0.88) == 1
    assert count(two, 0.88) == 2


def test_spectral_count_is_bounded_by_the_windows():
    """Noise with no speaker structure: the eigengap alone may land anywhere up to 20; the count stays at most one
    speaker per WINDOWS_PER_SPEAKER points."""
    from spkid.diarization.cluster import WINDOWS_PER_SPEAKER, spectral
    x = np.random.default_rng(1).standard_normal((36, 16))
    assert spectral(x).max() + 1 <= 36 // WINDOWS_PER_SPEAKER
    assert spectral(x, max_speakers=3).max() + 1 <= 3


def test_spectral_counts_asked_for_beyond_the_cap_or_the_points():
    """A minimum or an exact count above the windows' cap is honoured; one above the points available gives N - 1
    clusters, never an error."""
    from spkid.diarization.cluster import spectral
    x = np.random.default_rng(0).standard_normal((12, 8))            # cap: 12 // 6 = 2 speakers
    assert spectral(x, min_speakers=4).max() + 1 == 4
    assert spectral(x, n_speakers=5).max() + 1 == 5
    assert spectral(x, min_speakers=20).max() + 1 == 11
    assert spectral(x, n_speakers=30).max() + 1 == 11
    assert spectral(np.random.default_rng(0).standard_normal((60, 8)), n_speakers=25).max() + 1 == 25


def test_settled_clusters_merge_only_when_much_closer():
    """Two clusters that each hold much speech stay apart at a distance where a fragment still merges: with
    ``settled``, such a pair needs ``settled_threshold``; the fragment (fewer windows) keeps ``threshold``."""
    rng = np.random.default_rng(0)
    a, b = C._unit(rng.standard_normal(16)), C._unit(rng.standard_normal(16))
    b = C._unit(a + 0.9 * C._unit(b - (b @ a) * a))                 # centres at cosine distance ~0.26
    big = C._unit(np.concatenate([a + 0.05 * rng.standard_normal((40, 16)), b + 0.05 * rng.standard_normal((40, 16))]))
    y = np.r_[np.zeros(40, int), np.ones(40, int)]
    assert C.merge_close(big, y, 0.5).max() == 0                                   # plain: merged
    assert C.merge_close(big, y, 0.5, settled=30, settled_threshold=0.1).max() == 1  # both settled: apart
    assert C.merge_close(big, y, 0.5, settled=30).max() == 0        # no settled limit given: the threshold's
    pts, frag = big[:50], np.r_[np.zeros(40, int), np.ones(10, int)]    # 40 windows of a, a 10-window cluster of b
    assert C.merge_close(pts, frag, 0.5, settled=30, settled_threshold=0.1).max() == 0      # a fragment: merged
    assert C.merge_close(pts, frag, 0.5, settled=5, settled_threshold=0.1).max() == 1       # both settled: apart
    w = np.full(80, 2.0)                                            # points that average 2 windows each
    assert C.merge_close(big, y, 0.5, weights=w, settled=60, settled_threshold=0.1).max() == 1
    assert C.merge_close(big, y, 0.5, weights=w, settled=100, settled_threshold=0.1).max() == 0


def test_settled_settings_are_checked():
    from spkid.diarization.pipeline import DiarizeConfig
    from spkid.errors import ConfigError
    with pytest.raises(ConfigError, match="settled clusters"):
        DiarizeConfig(settled_threshold=0.0)
    with pytest.raises(ConfigError, match="settled clusters"):
        DiarizeConfig(settled_s=-1.0)
    with pytest.raises(ConfigError, match="merge_raw_settled"):
        DiarizeConfig(merge_raw_settled=1.0)
    for bad in ({"settled_s": float("nan")}, {"raw_settled_s": float("nan")}, {"settled_threshold": float("nan")}):
        with pytest.raises(ConfigError, match="settled clusters"):
            DiarizeConfig(**bad)
    DiarizeConfig(settled_s=0.0, raw_settled_s=0.0)                  # 0: the rule off


def _dominant(seed=0, sizes=(80, 12, 12, 12), e=32, channel=1.5, noise=0.25):
    """Uncentred window embeddings ``(N, E)`` of one dominant and three minor speakers who share a channel
    (their means at cosine ~0.65 to each other), and the true labels ``(N,)``."""
    rng = np.random.default_rng(seed)
    x, y = [], []
    for k, n in enumerate(sizes):
        x.append(channel * np.eye(e)[0] + np.eye(e)[k + 1] + noise * rng.standard_normal((n, e)))
        y += [k] * n
    return np.concatenate(x), np.array(y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_dominant_speaker_leaves_the_others_together_and_the_resplit_parts_them(seed):
    """Centred on the recording's mean (mostly the dominant speaker), the three minor speakers point away from it
    alike and cluster as one; clustered again around their own mean they come apart (pipeline, spectral)."""
    from spkid.diarization.pipeline import DiarizeConfig, _cluster, _space
    raw, y = _dominant(seed)
    win = np.stack([np.arange(len(y)) * 12000, np.arange(len(y)) * 12000 + 24000], 1)
    x = _space(raw, C._unit(raw).mean(0))
    before = _cluster(x, win, DiarizeConfig(resplit=0.0, hmm=False), None, 1, None, raw)
    after = _cluster(x, win, DiarizeConfig(resplit=0.75, hmm=False), None, 1, None, raw)
    assert before.max() + 1 == 2
    assert after.max() + 1 == 4 and _agree(after, y) >= 0.9
    minor = y > 0
    assert _agree(after[minor] - after[minor].min(), y[minor] - 1) >= 0.9      # one cluster before: 1/3


def test_split_recentred_keeps_one_voice_whole_and_respects_its_limits():
    """A cluster of one noisy voice is never split (its parts' raw means score above ``accept``); a split whose
    parts are not clearly apart (``accept`` below their cosine), one that would pass ``max_speakers``, and one of
    a cluster under ``min_windows`` are not made."""
    raw, y = _dominant(0)
    two = (y > 0).astype(int)                                   # the dominant speaker; the three minor ones
    split = C.split_recentred(raw, two, 0.75, 12, 1.0)
    assert split.max() + 1 == 4
    assert (split[y == 0] == split[0]).all()                    # 80 windows of one voice: whole
    assert C.split_recentred(raw, two, 0.5, 12, 1.0).max() + 1 == 2         # parts at cosine ~0.65 >= 0.5
    assert C.split_recentred(raw, two, 0.75, 12, 1.0, max_speakers=3).max() + 1 == 2
    assert C.split_recentred(raw, two, 0.75, 37, 1.0).max() + 1 == 2        # the minor cluster holds 36 windows
    one = _dominant(1, sizes=(300,))[0]
    assert C.split_recentred(one, np.zeros(300, int), 0.75, 12, 1.0, max_points=50).max() == 0


def test_resplit_settings_are_checked():
    from spkid.diarization.pipeline import DiarizeConfig
    from spkid.errors import ConfigError
    for bad in ({"resplit": 1.0}, {"resplit": -0.1}, {"resplit_s": -1.0}, {"resplit": float("nan")},
                {"resplit_s": float("inf")}, {"resplit_s": float("nan")}):
        with pytest.raises(ConfigError, match="resplit"):
            DiarizeConfig(**bad)
    assert DiarizeConfig().resplit == 0.75 and DiarizeConfig(resplit=0.0).resplit == 0.0


def test_split_recentred_count_limits_across_clusters():
    """Two clusters that each hold three voices: both split (6); under a limit the first takes what fits and the
    second only what is left (4 -> 3 + 1; 5 -> 3 + 2); exactly the limit is allowed; the cluster of exactly
    ``min_windows`` windows is split, one window fewer is not."""
    a, _ = _dominant(0, sizes=(0, 15, 15, 15))
    b, _ = _dominant(1, sizes=(0, 0, 0, 0, 15, 15, 15))
    raw, two = np.concatenate([a, b]), np.r_[np.zeros(45, int), np.ones(45, int)]
    assert C.split_recentred(raw, two, 0.75, 12, 1.0).max() + 1 == 6
    for limit in (4, 5, 6):
        assert C.split_recentred(raw, two, 0.75, 12, 1.0, max_speakers=limit).max() + 1 == limit
    assert C.split_recentred(raw, two, 0.75, 12, 1.0, max_speakers=2).max() + 1 == 2
    assert C.split_recentred(raw, two, 0.75, 45, 1.0).max() + 1 == 6          # 45 windows each: split
    assert C.split_recentred(raw, two, 0.75, 46, 1.0).max() + 1 == 2          # under 46: left alone


def test_split_recentred_leaves_directionless_parts_alone():
    """Parts whose raw mean has no direction (silence embedded as zeros) are no evidence of two voices."""
    assert C.split_recentred(np.zeros((40, 16)), np.zeros(40, int), 0.75, 12, 1.0).max() == 0
    raw, y = _dominant(0)
    raw[y == 0] = 0.0                                          # a silent "speaker" beside the three voices
    two = (y > 0).astype(int)
    assert C.split_recentred(raw, two, 0.75, 12, 1.0).max() + 1 == 4            # the voices still part


@pytest.mark.parametrize("hmm", [False, True])
def test_resplit_in_the_pipeline_honours_method_and_counts(hmm):
    """``_cluster``: the re-split survives the HMM; it is skipped with AHC and with a given count, and the count
    never passes ``max_speakers``."""
    from spkid.diarization.pipeline import DiarizeConfig, _cluster, _space
    raw, y = _dominant(0)
    win = np.stack([np.arange(len(y)) * 12000, np.arange(len(y)) * 12000 + 24000], 1)
    x = _space(raw, C._unit(raw).mean(0))

    def run(n=None, hi=None, **kw):
        return _cluster(x, win, DiarizeConfig(hmm=hmm, **kw), n, 1, hi, raw)
    assert run().max() + 1 == 4 and _agree(run(), y) >= 0.9
    assert run(hi=3).max() + 1 <= 3
    assert run(n=2).max() + 1 == 2
    assert np.array_equal(run(method="ahc"), run(method="ahc", resplit=0.0))


def test_cluster_records_the_count_after_each_step_it_runs():
    """``_cluster(stages=)``: the number of speakers after every step that ran (benchmarks/diarization_stages.py
    blames a wrong count on one), the last one the result's; asking for them changes nothing."""
    from spkid.diarization.pipeline import DiarizeConfig, _cluster, _space
    raw, y = _dominant(0)
    win = np.stack([np.arange(len(y)) * 12000, np.arange(len(y)) * 12000 + 24000], 1)
    x = _space(raw, C._unit(raw).mean(0))
    stages: dict[str, int] = {}
    labels = _cluster(x, win, DiarizeConfig(), None, 1, None, raw, stages)
    assert np.array_equal(labels, _cluster(x, win, DiarizeConfig(), None, 1, None, raw))
    assert list(stages) == ["spectral", "merge", "resplit", "raw_merge", "hmm"]
    assert stages["hmm"] == labels.max() + 1 == 4
    assert stages["merge"] < stages["resplit"]                # the dominant voice's case: the re-split parts them
    stages = {}
    _cluster(x, win, DiarizeConfig(hmm=False), 3, 1, None, raw, stages)      # a given count: spectral alone
    assert stages == {"spectral": 3}
    stages = {}
    _cluster(x, win, DiarizeConfig(method="ahc", same_speaker=0.05), None, 1, None, raw, stages)
    assert list(stages) == ["ahc", "raw_merge", "same_speaker", "hmm"]


def _inertia(x, labels):
    return sum(((x[labels == k] - x[labels == k].mean(0)) ** 2).sum() for k in np.unique(labels))


def test_kmeans_keeps_its_best_start():
    """``kmeans(restarts=)``: never worse than its first start (the single start of before), strictly better on
    some of these overlapping 6-cluster sets (one start's local minimum), and the same with one restart."""
    from scipy.cluster.vq import kmeans2
    better = 0
    for seed in range(12):
        x, _ = _blobs([30, 25, 20, 35, 15, 25], dim=6, spread=1.2, seed=seed)
        one, best = C.kmeans(x, 6, restarts=1), C.kmeans(x, 6, restarts=10)
        assert _inertia(x, best) <= _inertia(x, one) + 1e-9
        better += _inertia(x, best) < _inertia(x, one) - 1e-6
        if len(np.unique(one)) == 6:                         # no empty cluster: what kmeans2 alone gives
            assert np.array_equal(one, kmeans2(x, 6, minit="++", seed=0, missing="warn")[1])
    assert better >= 1


def test_kmeans_with_too_few_distinct_points_gives_fewer_clusters_and_no_warning():
    import warnings
    x = np.repeat(np.eye(3)[:2], 5, axis=0)                 # two distinct points, three clusters asked for
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = C.kmeans(x, 3, restarts=4)
    assert labels.shape == (10,) and len(np.unique(labels)) <= 2 and len(np.unique(labels[:5])) == 1


def test_a_given_count_takes_the_best_of_several_kmeans_starts(monkeypatch):
    """``_cluster``: with the count given, spectral's k-means keeps the best of ``RESTARTS_COUNT_GIVEN`` starts;
    with the count found, one start (the merges after it were measured on that; docs/diarization.md)."""
    from spkid.diarization.pipeline import DiarizeConfig, _cluster, _space
    raw, y = _dominant(0)
    win = np.stack([np.arange(len(y)) * 12000, np.arange(len(y)) * 12000 + 24000], 1)
    x = _space(raw, C._unit(raw).mean(0))
    seen, kmeans = [], C.kmeans
    monkeypatch.setattr(C, "kmeans", lambda *a, **kw: seen.append(kw["restarts"]) or kmeans(*a, **kw))
    _cluster(x, win, DiarizeConfig(hmm=False), 3, 1, None, raw)
    assert seen == [C.RESTARTS_COUNT_GIVEN] and C.RESTARTS_COUNT_GIVEN > 1
    seen.clear()
    _cluster(x, win, DiarizeConfig(hmm=False, resplit=0.0), None, 1, None, raw)
    assert seen == [1]
