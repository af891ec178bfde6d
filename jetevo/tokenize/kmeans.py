"""Lloyd's k-means with exact nearest-centroid search by k-d tree.

Used twice: to initialise the VQ codebook on a large sample (the quantizer's own k-means
sees one batch only, fewer points than codes), and to measure the k-means floor, the best
reconstruction any single-token-per-node quantizer can reach with K codes on these features.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from jetevo.errors import SettingError


def nearest(centroids: np.ndarray, x: np.ndarray, workers: int = -1) -> np.ndarray:
    """Index of the nearest centroid (Euclidean) for every row of ``x``."""
    return cKDTree(centroids).query(x, k=1, workers=workers)[1].astype(np.int64)


def kmeans(x: np.ndarray, k: int, iters: int = 20, seed: int = 0) -> np.ndarray:
    """Centroids (k, d) of ``x`` (n, d); empty clusters are re-seeded at the worst-fit points."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float64)
    if len(x) < k:
        raise SettingError(f"k-means needs at least as many points ({len(x)}) as codes ({k})")
    centroids = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iters):
        dist, assign = cKDTree(centroids).query(x, k=1, workers=-1)
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        empty = np.flatnonzero(~filled)
        if len(empty):
            centroids[empty] = x[np.argsort(dist)[-len(empty) :]]
    return centroids
