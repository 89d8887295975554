"""Enrollment scoring modes, the gallery's own operating point, outlier clips (spkid.scoring.enrollment)."""
from __future__ import annotations

import numpy as np
import pytest

from spkid.errors import ConfigError, DataError
from spkid.scoring.enrollment import (EnrollConfig, Gallery, clip_count_message, clips_needed, estimate_threshold,
                                      flag_outliers)
from spkid.scoring.norm import ASNorm, asnorm

E = 32


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _speaker(rng, n, noise=0.25):
    """n clips of one random speaker: a random direction plus isotropic noise."""
    return _unit(_unit(rng.normal(size=E)) + noise * rng.normal(size=(n, E)))


def test_scoring_modes_match_direct_definitions():
    rng = np.random.default_rng(0)
    clips = [_speaker(rng, n) for n in (4, 2, 7)]
    test = _speaker(rng, 5)
    cent = np.stack([_unit(c.sum(0)) for c in clips])
    np.testing.assert_allclose(Gallery(clips).scores(test), test @ cent.T)
    best = Gallery(clips, EnrollConfig(scoring="best")).scores(test)
    np.testing.assert_allclose(best, np.stack([(test @ c.T).max(1) for c in clips], 1))
    topk = Gallery(clips, EnrollConfig(scoring="topk_mean", top_k=3)).scores(test)
    ref = np.stack([np.sort(test @ c.T, axis=1)[:, ::-1][:, :3].mean(1) for c in clips], 1)   # 2 clips: mean of 2
    np.testing.assert_allclose(topk, ref)
    cohort = _unit(rng.normal(size=(30, E)))
    norm = ASNorm(cohort, top_n=10)
    got = Gallery(clips, asnorm=norm).scores(test)
    np.testing.assert_allclose(got, asnorm(test @ cent.T, cent, test, cohort, top_n=10))
    got = Gallery(clips, EnrollConfig(scoring="best"), norm).scores(test)
    per_clip = asnorm(test @ np.concatenate(clips).T, np.concatenate(clips), test, cohort, top_n=10)
    np.testing.assert_allclose(got, np.stack([b.max(1) for b in np.split(per_clip, [4, 6], axis=1)], 1))


@pytest.mark.parametrize("scoring", ["centroid", "best", "topk_mean"])
@pytest.mark.parametrize("with_norm", [False, True])
def test_enrollment_scores_leave_one_out_and_one_speaker_out(scoring, with_norm):
    rng = np.random.default_rng(1)
    clips = [_speaker(rng, n) for n in (5, 3, 1, 4)]
    cfg = EnrollConfig(scoring=scoring, top_k=2)
    norm = ASNorm(_unit(rng.normal(size=(25, E))), top_n=8) if with_norm else None
    g = Gallery(clips, cfg, norm)
    target, stranger, owner = g.enrollment_scores()
    assert target.shape == (13,) and stranger.shape == (13, 3) and owner.tolist() == [0] * 5 + [1] * 3 + [2] + [3] * 4
    assert np.isnan(target[8]) and np.isfinite(np.delete(target, 8)).all()   # a lone clip has no leave-one-out
    # clip 1 of speaker 0 against speaker 0 built without it: a gallery whose speaker 0 lacks that clip
    without = Gallery([np.delete(clips[0], 1, axis=0)] + clips[1:], cfg, norm)
    assert target[1] == pytest.approx(without.scores(clips[0][1:2])[0, 0])
    # clip 0 of speaker 1 against the other speakers' full models
    np.testing.assert_allclose(stranger[5], np.delete(g.scores(clips[1][:1])[0], 1))


def _strangers_rejected(cfg, seeds=range(8), k=8, n=12):
    rates, estimates = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        g = Gallery([_speaker(rng, n) for _ in range(k)], cfg)
        op, needed = estimate_threshold(g)
        assert needed == 0 and not op.overlap
        strangers = np.concatenate([_speaker(rng, 4) for _ in range(150)])   # 150 never-enrolled speakers
        rates.append(float((g.scores(strangers).max(1) < op.threshold).mean()))
        estimates.append(op.stranger_reject)
    return float(np.mean(rates)), float(np.mean(estimates))


@pytest.mark.parametrize("method", ["gaussian", "empirical"])
def test_threshold_rejects_strangers_at_requested_rate(method):
    """margin 0 puts the threshold exactly at the stranger end: the requested share of new speakers is rejected."""
    hi, est_hi = _strangers_rejected(EnrollConfig(method=method, reject_rate=0.95, accept_rate=0.5, margin=0.0))
    lo, _ = _strangers_rejected(EnrollConfig(method=method, reject_rate=0.75, accept_rate=0.5, margin=0.0))
    assert 0.9 <= hi <= 0.99
    assert 0.65 <= lo <= 0.85 and lo < hi - 0.1
    assert est_hi >= 0.95 - 1e-9


def test_threshold_keeps_enrolled_speakers_and_margin():
    rng = np.random.default_rng(9)
    centres = _unit(rng.normal(size=(6, E)))
    clips = [_unit(c + 0.2 * rng.normal(size=(12, E))) for c in centres]
    points = {m: estimate_threshold(Gallery(clips, EnrollConfig(margin=m)))[0] for m in (0.0, 0.5, 1.0)}
    assert points[0.0].threshold < points[0.5].threshold < points[1.0].threshold
    for op in points.values():
        assert not op.overlap and op.target_accept >= 0.95 and op.stranger_reject >= 0.95
    # new clips of the enrolled speakers are identified and accepted at the default threshold
    g = Gallery(clips)
    op, _ = estimate_threshold(g)
    new = np.concatenate([_unit(c + 0.2 * rng.normal(size=(20, E))) for c in centres])
    s = g.scores(new)
    assert ((s.argmax(1) == np.repeat(np.arange(6), 20)) & (s.max(1) >= op.threshold)).mean() >= 0.95


def test_background_strangers_raise_the_threshold_to_reject_them():
    """Known non-members that resemble enrolled speakers: the threshold must reject reject_rate of them too."""
    rng = np.random.default_rng(7)
    centres = _unit(rng.normal(size=(6, E)))
    g = Gallery([_unit(c + 0.2 * rng.normal(size=(12, E))) for c in centres], EnrollConfig(accept_rate=0.5))
    alone, _ = estimate_threshold(g)
    lookalikes = np.concatenate([_unit(c + 0.35 * rng.normal(size=(30, E))) for c in centres])
    with_bg, _ = estimate_threshold(g, lookalikes)
    assert with_bg.threshold > alone.threshold
    assert (g.scores(lookalikes).max(1) < with_bg.threshold).mean() >= 0.95
    far = _unit(-centres.sum(0) + 0.1 * rng.normal(size=(50, E)))   # voices unlike any enrolled: no change
    assert estimate_threshold(g, far)[0].threshold == pytest.approx(alone.threshold)


def test_overlapping_speakers_use_minimax_rule():
    rng = np.random.default_rng(4)
    base = _unit(rng.normal(size=E))
    clips = [_unit(base + 0.2 * _unit(rng.normal(size=E)) + 0.3 * rng.normal(size=(10, E))) for _ in range(5)]
    op, _ = estimate_threshold(Gallery(clips, EnrollConfig(reject_rate=0.99, accept_rate=0.99)))
    assert op.overlap and "overlap" in op.source
    assert abs((1 - op.target_accept) - (1 - op.stranger_reject)) < 0.15   # the errors are balanced
    assert op.target_accept < 0.99 or op.stranger_reject < 0.99


def test_too_few_clips_returns_none_and_count():
    rng = np.random.default_rng(5)
    cfg = EnrollConfig(min_clips=20)
    assert estimate_threshold(Gallery([_speaker(rng, 3), _speaker(rng, 3)], cfg)) == (None, 14)
    assert estimate_threshold(Gallery([_speaker(rng, 25)], cfg)) == (None, 2)        # a second speaker, 2 clips
    assert clips_needed([25, 1], cfg) == 1 and clips_needed([1, 1, 1], cfg) == 20
    assert clips_needed([10, 10], cfg) == 0
    op, needed = estimate_threshold(Gallery([_speaker(rng, 10), _speaker(rng, 10)], cfg))
    assert needed == 0 and op.n_clips == 20 and op.n_speakers == 2
    assert "14 more clips needed" in clip_count_message(14, cfg)


def test_outlier_clip_is_flagged():
    rng = np.random.default_rng(6)
    clips = _speaker(rng, 10, noise=0.3)
    stray = _speaker(rng, 1, noise=0.3)                        # another speaker's recording
    flagged, z = flag_outliers(np.concatenate([clips[:4], stray, clips[4:]]))
    assert flagged.tolist() == [False] * 4 + [True] + [False] * 6
    assert z[4] < -3.5
    flagged, _ = flag_outliers(clips)
    assert not flagged.any()
    assert not flag_outliers(np.concatenate([clips[:2], stray]))[0].any()    # < 3 clips: no reference spread


def test_bad_config_and_input():
    with pytest.raises(ConfigError, match="centroid, best, topk_mean"):
        EnrollConfig(scoring="mean")
    with pytest.raises(ConfigError, match="empirical, gaussian"):
        EnrollConfig(method="bayes")
    with pytest.raises(ConfigError, match="reject_rate"):
        EnrollConfig(reject_rate=1.0)
    with pytest.raises(DataError, match="no speakers"):
        Gallery([])
    with pytest.raises(DataError, match="speaker 1"):
        Gallery([np.ones((2, 4)), np.zeros((2, 4))])
    with pytest.raises(DataError, match="different sizes"):
        Gallery([np.ones((2, 4)), np.ones((2, 5))])
    with pytest.raises(DataError, match="5-dim"):
        Gallery([np.ones((2, 4))]).scores(np.ones((1, 5)))
