"""2-D map of embeddings for the report: t-SNE (scikit-learn) on a fixed-seed subsample."""
from __future__ import annotations

import numpy as np

from spkid.errors import ConfigError

MIN_POINTS = 5                   # t-SNE needs perplexity < N; fewer points make no useful map


def tsne_2d(emb, *, cap: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """t-SNE of L2-normalised embeddings ``(N, E)`` -> ``(xy (M, 2), rows (M,))``.

    ``rows`` are the embedded rows of ``emb`` (ascending): all of them, or ``cap`` drawn uniformly with
    ``seed`` when ``N > cap`` (t-SNE time grows as N log N and a map of thousands of dots is unreadable anyway).
    Cosine distance, PCA initialisation and a fixed ``random_state``: the same input gives the same map.
    """
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ConfigError("the embedding map needs scikit-learn: pip install 'spkid[report]' "
                          "(scikit-learn==1.9.1)") from None
    x = np.asarray(emb, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < MIN_POINTS:
        raise ValueError(f"need (N, E) embeddings with N >= {MIN_POINTS}, got shape {x.shape}")
    rows = np.arange(x.shape[0])
    if x.shape[0] > cap:
        rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=cap, replace=False))
    perplexity = float(min(30.0, (rows.size - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed,
              max_iter=1000).fit_transform(x[rows])
    return xy.astype(np.float32), rows
