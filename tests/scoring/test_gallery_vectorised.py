"""``Gallery._aggregate`` (vectorised over speakers) gives the per-speaker loop's scores, masks and padding included."""
import numpy as np
import pytest

from spkid.scoring import enrollment
from spkid.scoring.enrollment import EnrollConfig, Gallery


def _loop(g: Gallery, s: np.ndarray, mask=None) -> np.ndarray:
    s = s.copy()
    if mask is not None:
        s[mask] = -np.inf
    out = np.full((s.shape[0], g.n_speakers), -np.inf)
    for k in range(g.n_speakers):
        block = s[:, g.owner == k]
        if g.cfg.scoring == "best":
            out[:, k] = block.max(1)
        else:
            top = -np.sort(-block, axis=1)[:, :g.cfg.top_k]
            valid = np.isfinite(top)
            out[:, k] = np.where(valid.sum(1) > 0, np.where(valid, top, 0.0).sum(1) / np.maximum(valid.sum(1), 1),
                                 -np.inf)
    return out


@pytest.mark.parametrize("scoring", ["best", "topk_mean"])
def test_vectorised_aggregate_matches_the_loop(scoring, monkeypatch):
    rng = np.random.default_rng(0)
    clips = [rng.normal(size=(n, 7)) for n in (1, 5, 2, 3, 1, 8)]         # uneven: padding matters
    g = Gallery(clips, EnrollConfig(scoring=scoring, top_k=3))
    test = rng.normal(size=(11, 7))
    s = test @ g.x.T
    mask = rng.random(s.shape) < 0.3
    monkeypatch.setattr(enrollment, "_GATHER", 50)                          # several row chunks
    for m in (None, mask):
        np.testing.assert_allclose(g._aggregate(s, m), _loop(g, s, m), rtol=0, atol=1e-12)
    unit = test / np.linalg.norm(test, axis=1, keepdims=True)
    np.testing.assert_allclose(g.scores(test), _loop(g, unit @ g.x.T), atol=1e-12)
    sq = g.x @ g.x.T
    np.testing.assert_allclose(g._aggregate(sq, np.eye(len(g.x), dtype=bool)),
                               _loop(g, sq, np.eye(len(g.x), dtype=bool)), atol=1e-12)
