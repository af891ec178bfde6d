"""Calibration and sharpness of completions of real jets (``jetevo generate --prefix``).

For a jet and an observable, the real value and the values of its M completions: if the
model is calibrated, the real value is one more draw from the completions' distribution,
so its rank among them is uniform on 0..M (ties broken at random, so that integer
observables such as the multiplicity do not pile up ranks). Sharpness is how narrow the
completions are: their spread per jet, against the spread of the real jets themselves, and
how well the completions' mean follows the real value (correlation, rising toward 1 as
more of the jet's history is kept).
"""

from __future__ import annotations

import numpy as np


def ranks(real: np.ndarray, completions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of each real value (n,) among its completions (n, M): the number of completions
    below it, plus a uniform share of those equal to it."""
    real = np.asarray(real, np.float64)[:, None]
    completions = np.asarray(completions, np.float64)
    below = np.count_nonzero(completions < real, axis=1)
    ties = np.count_nonzero(completions == real, axis=1)
    return below + rng.integers(0, ties + 1)


def rank_histogram(rank: np.ndarray, m: int) -> np.ndarray:
    """Counts of the ranks 0..M."""
    return np.bincount(np.asarray(rank, np.int64), minlength=m + 1)


def ks_uniform(rank: np.ndarray, m: int) -> float:
    """Kolmogorov-Smirnov distance between the ranks' distribution and the uniform one on
    0..M (largest gap between the two CDFs)."""
    counts = rank_histogram(rank, m)
    cdf = np.cumsum(counts) / max(len(rank), 1)
    uniform = np.arange(1, m + 2) / (m + 1)
    return float(np.max(np.abs(cdf - uniform)))


def sharpness(real: np.ndarray, completions: np.ndarray) -> dict:
    """Spread of the completions per jet (mean standard deviation), that spread over the
    real jets' own standard deviation, and the correlation of the real value with the
    completions' mean (None where either does not vary)."""
    real = np.asarray(real, np.float64)
    completions = np.asarray(completions, np.float64)
    spread = float(np.mean(np.std(completions, axis=1)))
    marginal = float(np.std(real))
    mean = completions.mean(axis=1)
    varies = np.std(mean) > 0 and marginal > 0
    return {
        "spread": spread,
        "spread_over_marginal": spread / marginal if marginal > 0 else None,
        "correlation": float(np.corrcoef(real, mean)[0, 1]) if varies else None,
    }


def calibration(real: np.ndarray, completions: np.ndarray, seed: int = 0) -> dict:
    """Rank histogram, KS distance from uniform and sharpness of one observable."""
    m = completions.shape[1]
    r = ranks(real, completions, np.random.default_rng(seed))
    return {
        "rank_histogram": rank_histogram(r, m).tolist(),
        "ks": ks_uniform(r, m),
        # the distance n truly uniform ranks stay below 95% of the time (asymptotic
        # Kolmogorov value; conservative for ranks, which are discrete)
        "ks_95": float(1.36 / np.sqrt(len(r))) if len(r) else None,
        **sharpness(real, completions),
    }
