"""spkid.report.analysis: the numbers behind the report, checked against hand counts and spkid.scoring.metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest

from spkid.report import analysis
from spkid.scoring.metrics import eer


# closed set ----------------------------------------------------------------------------------

@pytest.mark.parametrize("k,n,lo,hi", [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (5, 10, 0.2366, 0.7634),
                                       (491, 500, 0.9661, 0.9905)])
def test_wilson_interval_known_values(k, n, lo, hi):
    got = analysis.wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-4) and got[1] == pytest.approx(hi, abs=1e-4)


def test_wilson_interval_contains_the_proportion_and_narrows_with_n():
    for k, n in [(1, 3), (7, 9), (30, 100)]:
        lo, hi = analysis.wilson_interval(k, n)
        assert lo < k / n < hi
        lo10, hi10 = analysis.wilson_interval(10 * k, 10 * n)
        assert hi10 - lo10 < hi - lo
    for n in range(1, 600):                                      # rounding never leaves p outside
        lo, hi = analysis.wilson_interval(n, n)
        assert lo <= 1.0 == hi
        lo, hi = analysis.wilson_interval(0, n)
        assert lo == 0.0 <= hi
    with pytest.raises(ValueError):
        analysis.wilson_interval(3, 2)
    with pytest.raises(ValueError):
        analysis.wilson_interval(0, 0)


def test_confusion_matrix_counts_rows_true_columns_predicted():
    cm = analysis.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [2, 0, 1]]
    with pytest.raises(ValueError):
        analysis.confusion_matrix([0, 3], [0, 0], 3)


def test_per_speaker_accuracy_worst_first_with_most_common_mistake():
    names = ["a", "b", "c", "d"]
    cm = np.array([[2, 0, 0, 0], [0, 1, 2, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    rows = analysis.per_speaker_accuracy(cm, names)
    assert [r.name for r in rows] == ["b", "c", "a"]            # d has no test utterances
    assert (rows[0].n, rows[0].correct, rows[0].top_wrong) == (3, 1, "c")
    assert rows[0].accuracy == pytest.approx(1 / 3)
    assert rows[2].top_wrong is None


def test_confused_pairs_are_unordered_and_sorted_by_total():
    names = ["a", "b", "c", "d"]
    cm = np.zeros((4, 4), int)
    cm[0, 1], cm[1, 0] = 2, 1                                     # a<->b: 3
    cm[2, 3] = 4                                                  # c->d: 4
    cm[3, 0] = 1                                                  # d->a: 1
    pairs = analysis.confused_pairs(cm, names, top=2)
    assert [(p.a, p.b, p.a_as_b, p.b_as_a, p.total) for p in pairs] == [("c", "d", 4, 0, 4), ("a", "b", 2, 1, 3)]
    assert analysis.confused_pairs(np.eye(4, dtype=int), names) == []


def test_cluster_order_makes_confused_groups_contiguous():
    rng = np.random.default_rng(0)
    groups = [list(range(0, 4)), list(range(4, 9)), list(range(9, 12))]
    k = 12
    cm = np.diag(np.full(k, 5))
    for g in groups:                                              # confusions only inside each group
        for i in g:
            for j in g:
                if i != j:
                    cm[i, j] = rng.integers(1, 3)
    perm = rng.permutation(k)                                     # hide the grouping
    shuffled = cm[np.ix_(perm, perm)]
    order = analysis.cluster_order(shuffled)
    assert sorted(order.tolist()) == list(range(k))
    placed = perm[order]                                          # original ids in display order
    for g in groups:
        pos = sorted(int(np.nonzero(placed == i)[0][0]) for i in g)
        assert pos[-1] - pos[0] == len(g) - 1, f"group {g} split in display order {placed.tolist()}"


def test_cluster_order_without_confusions_is_identity():
    assert analysis.cluster_order(np.eye(5, dtype=int) * 2).tolist() == [0, 1, 2, 3, 4]


def test_heatmap_speakers_keeps_small_sets_and_trims_large_ones_to_the_confused():
    cm = np.diag(np.full(10, 2))
    idx, which = analysis.heatmap_speakers(cm)
    assert idx.tolist() == list(range(10)) and "10 speakers" in which
    big = np.diag(np.full(200, 2))
    big[5, 7] = big[7, 5] = 1
    big[100, 3] = 1
    idx, which = analysis.heatmap_speakers(big)
    assert idx.tolist() == [3, 5, 7, 100] and "4 of 200" in which
    idx, _ = analysis.heatmap_speakers(big, cap=2)
    assert sorted(idx.tolist()) == [5, 7]                         # the two most involved


def test_duration_bins_partition_the_utterances():
    rng = np.random.default_rng(1)
    sec = rng.uniform(1, 10, 203)
    ok = sec > 4                                                  # long ones right, short ones wrong
    bins = analysis.duration_bins(sec, ok, n_bins=5)
    assert sum(b.n for b in bins) == sec.size
    assert sum(b.correct for b in bins) == ok.sum()
    assert bins[0].lo <= sec.min() and bins[-1].hi >= sec.max()
    assert bins[0].accuracy == 0.0 and bins[-1].accuracy == 1.0
    assert all(a.hi == b.lo for a, b in zip(bins, bins[1:]))
    one = analysis.duration_bins([2.0, 2.0, 2.0], [True, False, True])
    assert len(one) == 1 and one[0].n == 3 and one[0].correct == 2


# verification --------------------------------------------------------------------------------

def _trials(seed=0, n_tar=300, n_non=3000):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(2, 1, n_tar), rng.normal(0, 1, n_non)]
    y = np.r_[np.ones(n_tar, bool), np.zeros(n_non, bool)]
    return s, y


def test_det_points_run_from_reject_all_to_accept_all_and_cross_at_the_eer():
    s, y = _trials()
    p_fa, p_miss = analysis.det_points(s, y)
    assert (p_fa[0], p_miss[0]) == (0.0, 1.0) and (p_fa[-1], p_miss[-1]) == (1.0, 0.0)
    assert np.all(np.diff(p_fa) >= 0) and np.all(np.diff(p_miss) <= 0)
    rate, _ = eer(s, y)
    k = int(np.argmax(p_miss - p_fa <= 0))                        # first point past the crossing
    assert min(p_fa[k - 1], p_fa[k]) <= rate + 1e-12 and rate <= max(p_miss[k - 1], p_miss[k]) + 1e-12


def test_operating_point_accepts_scores_at_the_threshold():
    s = np.array([0.9, 0.5, 0.5, 0.1])
    y = np.array([1, 0, 1, 0])
    assert analysis.operating_point(s, y, 0.5) == (0.5, 0.0)
    assert analysis.operating_point(s, y, 0.6) == (0.0, 0.5)


def test_verification_summary_agrees_with_metrics_and_its_own_thresholds():
    s, y = _trials(seed=2)
    v = analysis.verification_summary(s, y, p_target=0.05)
    assert v.eer == pytest.approx(eer(s, y)[0])
    assert (v.n_target, v.n_nontarget) == (300, 3000)
    fa, miss = analysis.operating_point(s, y, v.eer_threshold)
    assert abs(fa - v.eer) < 0.01 and abs(miss - v.eer) < 0.01     # the EER threshold reproduces the EER
    fa, miss = v.dcf_point
    cost = (0.05 * miss + 0.95 * fa) / 0.05
    assert cost == pytest.approx(v.min_dcf)
    assert 0 < v.min_dcf <= 1 and math.isfinite(v.dcf_threshold)


# embedding map -------------------------------------------------------------------------------

def test_tsne_subsamples_to_the_cap_reproducibly_and_separates_clusters():
    pytest.importorskip("sklearn")
    from spkid.report.projection import tsne_2d
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    emb = np.repeat(centres, 40, axis=0) + 0.05 * rng.normal(size=(120, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    xy, rows = tsne_2d(emb, cap=60)
    xy2, rows2 = tsne_2d(emb, cap=60)
    assert xy.shape == (60, 2) and rows.size == 60 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, rows2) and np.allclose(xy, xy2)          # fixed seed: the same map
    label = rows // 40
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    same, other = d[label[:, None] == label[None]], d[label[:, None] != label[None]]
    assert np.median(same) < np.median(other) / 3
    with pytest.raises(ValueError, match="N >= 5"):
        tsne_2d(emb[:4])
