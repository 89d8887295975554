import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spkid.errors import DataError
from spkid.data.hw4 import read_answers_csv
from spkid.scoring.metrics import (accuracy, eer, make_trials, min_dcf, score_trials,
                           threshold_at_far)

SHARED = Path(__file__).resolve().parents[3] / "shared"
ANSWERS = SHARED / "data" / "speechocean762" / "answers.csv"


# helpers: direct error rates at a threshold (accept when score >= t) ---------------------------

def _rates(scores, labels, t):
    s, y = np.asarray(scores, float), np.asarray(labels).astype(bool)
    return float(np.mean(s[y] < t)), float(np.mean(s[~y] >= t))    # (p_miss, p_fa)


def _random_trials(seed, n_tar=40, n_non=60, sep=1.0, quantise=False):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(sep, 1, n_tar), rng.normal(0, 1, n_non)]
    if quantise:                                    # many ties
        s = np.round(s, 1)
    y = np.r_[np.ones(n_tar, int), np.zeros(n_non, int)]
    perm = rng.permutation(s.size)
    return s[perm], y[perm]


# accuracy ------------------------------------------------------------------------------------

def test_accuracy_counts_matches():
    answers = {"a": "S1", "b": "S2", "c": "S3"}
    assert accuracy(answers, {"a": "S1", "b": "S1", "c": "S3"}) == pytest.approx(2 / 3)
    assert accuracy(answers, dict(answers)) == 1.0


def test_accuracy_mismatched_ids_names_counts_and_examples():
    answers = {f"u{i}": "S" for i in range(10)}
    preds = {f"u{i}": "S" for i in range(3, 10)} | {"x1": "S", "x2": "S"}
    with pytest.raises(DataError) as e:
        accuracy(answers, preds)
    msg = str(e.value)
    assert "3 answer ids missing" in msg and "'u0'" in msg
    assert "2 predicted ids not in answers" in msg and "'x1'" in msg


def test_accuracy_empty_answers():
    with pytest.raises(DataError, match="no answers"):
        accuracy({}, {})


# read_answers_csv ----------------------------------------------------------------------------

def _write(tmp_path, text, name="answers.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_read_answers_round_trip_with_bom_and_blank_lines(tmp_path):
    p = tmp_path / "a.csv"
    p.write_bytes("\ufeffId,Category\r\nu1.pt,SPK1\r\n\r\nu2.pt,SPK2\r\n".encode("utf-8"))
    assert read_answers_csv(p) == {"u1.pt": "SPK1", "u2.pt": "SPK2"}


@pytest.mark.parametrize("text, needle", [
    ("", "line 1: missing header"),
    ("Id,Speaker\nu1,S\n", "line 1: expected header 'Id,Category', found 'Id,Speaker'"),
    ("u1,S1\nu2,S2\n", "line 1: expected header"),
    ("Id,Category\nu1,S1\nu2,S2,extra\n", "line 3: expected 2 fields (Id,Category), found 3"),
    ("Id,Category\nu1\n", "line 2: expected 2 fields"),
    ("Id,Category\nu1,S1\n,S2\n", "line 3: empty Id"),
    ("Id,Category\nu1,\n", "line 2: empty Category for id 'u1'"),
    ("Id,Category\nu1,S1\nu2,S2\n\nu1,S3\n", "line 5: duplicate id 'u1' (first on line 2)"),
])
def test_read_answers_errors_name_file_and_line(tmp_path, text, needle):
    p = _write(tmp_path, text)
    with pytest.raises(DataError) as e:
        read_answers_csv(p)
    assert str(e.value).startswith(str(p) + ": ")
    assert needle in str(e.value)


def test_read_answers_missing_file(tmp_path):
    p = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="nope.csv: cannot read answers CSV"):
        read_answers_csv(p)


@pytest.mark.skipif(not ANSWERS.is_file(), reason="needs ../shared/data")
def test_read_answers_real_file():
    answers = read_answers_csv(ANSWERS)
    assert len(answers) == 500
    assert all(k.startswith("uttr-") and k.endswith(".pt") for k in answers)
    assert len(set(answers.values())) == 250            # 2 test utterances per speaker
    assert accuracy(answers, answers) == 1.0


# eer -----------------------------------------------------------------------------------------

def test_eer_perfectly_separable_is_zero():
    s = [0.9, 0.1, 0.8, 0.2]
    y = [1, 0, 1, 0]
    rate, thr = eer(s, y)
    assert rate == 0.0
    assert 0.2 < thr <= 0.8
    assert _rates(s, y, thr) == (0.0, 0.0)


def test_eer_perfectly_reversed_is_one():
    rate, _ = eer([0.1, 0.9, 0.2, 0.8], [1, 0, 1, 0])
    assert rate == 1.0


def test_eer_hand_computed_crossing_on_a_point():
    # desc: .9T .8T .7N .6T .5N .4T .3N .1N -> at t=.6 p_miss = p_fa = 1/4
    s = [0.4, 0.6, 0.8, 0.9, 0.1, 0.3, 0.5, 0.7]
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    rate, thr = eer(s, y)
    assert rate == pytest.approx(0.25)
    assert thr == pytest.approx(0.6)
    assert _rates(s, y, thr) == (0.25, 0.25)


def test_eer_hand_computed_interpolated():
    # desc: .9T .7N .6N .5T .1N; (p_miss, p_fa) at .7 = (1/2, 1/3), at .6 = (1/2, 2/3):
    # p_miss - p_fa goes 1/6 -> -1/6, halfway: EER 1/2, threshold .65.
    s = [0.5, 0.9, 0.1, 0.6, 0.7]
    y = [1, 1, 0, 0, 0]
    rate, thr = eer(s, y)
    assert rate == pytest.approx(0.5)
    assert thr == pytest.approx(0.65)


def test_eer_all_tied_is_half():
    assert eer([0.3, 0.3, 0.3, 0.3], [1, 0, 1, 0])[0] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("quantise", [False, True])
def test_eer_symmetric_and_within_grid_bounds(seed, quantise):
    s, y = _random_trials(seed, quantise=quantise)
    rate, thr = eer(s, y)
    # swapping the roles of targets and non-targets (negated scores) gives the same EER
    rate_sw, thr_sw = eer(-s, 1 - y)
    assert rate_sw == pytest.approx(rate, abs=1e-12)
    # brute force over every threshold: max_t min(pm, pfa) <= EER <= min_t max(pm, pfa)
    pts = [_rates(s, y, t) for t in np.r_[np.unique(s), np.inf]]
    assert max(min(p) for p in pts) - 1e-12 <= rate <= min(max(p) for p in pts) + 1e-12
    # affine score changes move the threshold with them and keep the rate
    rate2, thr2 = eer(3 * s + 1, y)
    assert rate2 == pytest.approx(rate) and thr2 == pytest.approx(3 * thr + 1)
    # order of the trials does not matter
    perm = np.random.default_rng(seed + 100).permutation(s.size)
    assert eer(s[perm], y[perm]) == pytest.approx((rate, thr))


def test_eer_gaussian_matches_theory():
    rng = np.random.default_rng(0)
    n = 20000
    s = np.r_[rng.normal(1, 1, n), rng.normal(-1, 1, n)]
    y = np.r_[np.ones(n), np.zeros(n)]
    rate, thr = eer(s, y)
    expected = 0.5 * math.erfc(1 / math.sqrt(2))   # Phi(-1) = 0.1587
    assert rate == pytest.approx(expected, abs=0.006)
    assert thr == pytest.approx(0.0, abs=0.03)


@pytest.mark.parametrize("s, y, err", [
    ([0.1, 0.2], [1, 1], DataError),
    ([0.1, 0.2], [0, 0], DataError),
    ([0.1, 0.2], [1, 2], ValueError),
    ([0.1, float("nan")], [1, 0], ValueError),
    ([0.1, 0.2, 0.3], [1, 0], ValueError),
])
def test_eer_rejects_bad_input(s, y, err):
    with pytest.raises(err):
        eer(s, y)


# min_dcf -------------------------------------------------------------------------------------

def test_min_dcf_hand_computed():
    s = [0.5, 0.9, 0.1, 0.6, 0.7]
    y = [1, 1, 0, 0, 0]
    # p_target .5: cost = p_miss + p_fa, best at t=.9 (1/2 + 0)
    assert min_dcf(s, y, p_target=0.5) == pytest.approx((0.5, 0.9))
    # p_target .01: cost = p_miss + 99 p_fa, best at t=.9 again
    assert min_dcf(s, y) == pytest.approx((0.5, 0.9))
    # p_target .9: cost = 9 p_miss + p_fa, best at t=.5 (0 + 2/3)
    assert min_dcf(s, y, p_target=0.9) == pytest.approx((2 / 3, 0.5))
    # costs change the balance: c_fa 10 at p_target .5 -> cost = (p_miss + 10 p_fa) / 1
    assert min_dcf(s, y, p_target=0.5, c_fa=10) == pytest.approx((0.5, 0.9))
    # c_miss 10 at p_target .5 -> cost = (10 p_miss + p_fa) / 1, best accepting everything from .5
    assert min_dcf(s, y, p_target=0.5, c_miss=10) == pytest.approx((2 / 3, 0.5))


def test_min_dcf_separable_is_zero():
    assert min_dcf([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0])[0] == 0.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p_target", [0.01, 0.05, 0.5])
def test_min_dcf_matches_brute_force_and_is_at_most_one(seed, p_target):
    s, y = _random_trials(seed, sep=0.3, quantise=seed % 2 == 1)
    value, thr = min_dcf(s, y, p_target=p_target)
    norm = min(p_target, 1 - p_target)

    def cost(t):
        pm, pfa = _rates(s, y, t)
        return (p_target * pm + (1 - p_target) * pfa) / norm
    brute = min(cost(t) for t in np.r_[np.unique(s), np.inf])
    assert value == pytest.approx(brute)
    assert value <= 1.0
    assert cost(thr) == pytest.approx(value)      # the threshold reproduces the cost


def test_min_dcf_uninformative_scores_cost_one():
    s, y = _random_trials(0, sep=-3.0)              # targets score below non-targets
    assert min_dcf(s, y, p_target=0.01)[0] == pytest.approx(1.0)


# threshold_at_far ----------------------------------------------------------------------------

def test_threshold_at_far_hand_cases():
    s = [0.1, 0.2, 0.3, 0.4, 0.35, 0.9]
    y = [0, 0, 0, 0, 1, 1]
    t = threshold_at_far(s, y, 0.25)              # one false accept allowed: only 0.4 may pass
    assert 0.3 < t <= 0.35
    assert _rates(s, y, t) == (0.0, 0.25)
    t0 = threshold_at_far(s, y, 0.0)
    assert 0.4 < t0 < 0.41 and _rates(s, y, t0) == (0.5, 0.0)


def test_threshold_at_far_float_rounding():
    non = np.arange(100) / 100                     # 0.29 * 100 rounds below 29 in floats
    s, y = np.r_[non, [2.0]], np.r_[np.zeros(100), [1]]
    t = threshold_at_far(s, y, 0.29)
    assert _rates(s, y, t)[1] == pytest.approx(0.29)


def test_threshold_at_far_ties():
    s, y = [0.5, 0.5, 0.5, 0.1, 0.7], [0, 0, 0, 0, 1]
    t = threshold_at_far(s, y, 0.5)               # the tied .5s can only go together: none pass
    assert _rates(s, y, t) == (0.0, 0.0)
    assert _rates(s, y, np.nextafter(t, -np.inf))[1] == 0.75


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("far", [0.0, 0.01, 0.1, 0.333, 0.5])
def test_threshold_at_far_is_smallest_meeting_target(seed, far):
    s, y = _random_trials(seed, n_non=97, quantise=seed % 2 == 1)
    t = threshold_at_far(s, y, far)
    assert _rates(s, y, t)[1] <= far
    assert _rates(s, y, np.nextafter(t, -np.inf))[1] > far     # any smaller threshold breaks it


@pytest.mark.parametrize("far", [-0.1, 1.0, 1.5])
def test_threshold_at_far_rejects_bad_far(far):
    with pytest.raises(ValueError):
        threshold_at_far([0.1, 0.2], [0, 1], far)


# make_trials / score_trials ------------------------------------------------------------------

def test_make_trials_all_pairs():
    labels = ["a", "b", "a", "c", "b", "a"]
    i, j, tgt = make_trials(labels)
    pairs = list(zip(i.tolist(), j.tolist()))
    assert pairs == [(p, q) for p in range(6) for q in range(p + 1, 6)]
    assert tgt.dtype == bool and i.dtype == np.int64
    assert {pq for pq, t in zip(pairs, tgt) if t} == {(0, 2), (0, 5), (2, 5), (1, 4)}


def test_make_trials_subsamples_nontargets_uniformly():
    labels = ["a", "b", "a", "c", "b", "a"]      # 4 target pairs, 11 non-target pairs
    i, j, tgt = make_trials(labels, max_nontarget=5, seed=3)
    assert tgt.sum() == 4 and (~tgt).sum() == 5
    assert all(labels[p] != labels[q] for p, q, t in zip(i, j, tgt) if not t)
    assert len(set(zip(i.tolist(), j.tolist()))) == 9 and np.all(i < j)
    again = make_trials(labels, max_nontarget=5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((i, j, tgt), again))
    counts: dict = {}
    n_draws = 1500
    for seed in range(n_draws):
        a, b, t = make_trials(labels, max_nontarget=5, seed=seed)
        for pq in zip(a[~t].tolist(), b[~t].tolist()):
            counts[pq] = counts.get(pq, 0) + 1
    assert len(counts) == 11
    freqs = np.array(list(counts.values())) / n_draws
    assert np.all(np.abs(freqs - 5 / 11) < 0.05)   # std of each is ~0.013


def test_make_trials_large_sample_without_enumeration():
    rng = np.random.default_rng(0)
    labels = [f"S{k}" for k in rng.integers(0, 200, 3000)]
    i, j, tgt = make_trials(labels, max_nontarget=20000, seed=1)
    lab = np.array(labels)
    assert (~tgt).sum() == 20000
    assert np.array_equal(lab[i] == lab[j], tgt)
    assert np.all(i < j) and np.all(j < 3000)
    expected_targets = sum(c * (c - 1) // 2 for c in np.unique(lab, return_counts=True)[1])
    assert tgt.sum() == expected_targets
    lin = i * 3000 + j
    assert np.all(np.diff(lin) > 0)               # sorted, no duplicate pair


def test_make_trials_bad_input():
    with pytest.raises(DataError):
        make_trials(["a"])
    with pytest.raises(ValueError):
        make_trials(["a", "b"], max_nontarget=-1)


def test_score_trials_cosine_numpy_and_torch():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(7, 5)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    i, j, _ = make_trials(list("abcabca"))
    s = score_trials(emb, i, j)
    np.testing.assert_allclose(s, [emb[p] @ emb[q] for p, q in zip(i, j)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score_trials(torch.from_numpy(emb), i, j), s)
    with pytest.raises(ValueError, match="L2-normalised"):
        score_trials(emb * 2, i, j)
