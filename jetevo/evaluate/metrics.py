"""Distances between an observable's generated and reference distributions, with floors.

Per resample r (``n_resamples`` >= 5): m = min(n_generated, n_reference // 2) jets are
drawn without replacement from the generated sample, and the reference is split at random
into two disjoint halves R1, R2 of m jets. Reported are mean and standard deviation over
resamples of

- ``w1``: Wasserstein-1 (``scipy.stats.wasserstein_distance``) between generated and R1;
- ``kl``: KL(generated || R1) on ``n_bins`` bins whose edges are quantiles of R1 (equally
  populated in the reference), the outermost bins open to ±inf so nothing falls outside.
  Bin contents are probabilities (counts / total), not densities, so unequal bin widths
  weigh nothing wrongly. Empty bins: 0.5 is added to every bin's count of both samples
  before normalising (a finite, documented smoothing; no bin is dropped and no infinity
  is returned). Observables with repeated values (multiplicity, depth) get the distinct
  quantile edges only;
- ``w1_floor`` / ``kl_floor``: the same metric between R2 and R1, i.e. what two samples of
  the same truth differ by at this sample size: the truth-vs-truth floor.

Non-finite values (e.g. z_g of jets that never pass soft drop) are excluded and counted
per sample (``n_nonfinite_generated``, ``n_nonfinite_reference``).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import wasserstein_distance

N_BINS = 20
SMOOTHING = 0.5


def quantile_edges(reference: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Inner bin edges: distinct quantiles of the reference (outer bins open)."""
    q = np.quantile(reference, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.unique(q)


def binned_kl(p_sample: np.ndarray, q_sample: np.ndarray, edges: np.ndarray) -> float:
    """KL(p || q) over the bins defined by inner ``edges`` (see the module docstring)."""
    n = len(edges) + 1
    cp = np.bincount(np.searchsorted(edges, p_sample, side="right"), minlength=n) + SMOOTHING
    cq = np.bincount(np.searchsorted(edges, q_sample, side="right"), minlength=n) + SMOOTHING
    p, q = cp / cp.sum(), cq / cq.sum()
    return float(np.sum(p * np.log(p / q)))


def compare(
    generated: np.ndarray,
    reference: np.ndarray,
    n_resamples: int = 5,
    rng: np.random.Generator | None = None,
    n_bins: int = N_BINS,
) -> dict:
    """Metrics of one observable (see the module docstring)."""
    rng = rng or np.random.default_rng(0)
    g_all, r_all = np.asarray(generated, np.float64), np.asarray(reference, np.float64)
    g, r = g_all[np.isfinite(g_all)], r_all[np.isfinite(r_all)]
    out: dict[str, float] = {
        "n_nonfinite_generated": int(len(g_all) - len(g)),
        "n_nonfinite_reference": int(len(r_all) - len(r)),
    }
    m = min(len(g), len(r) // 2)
    if m < 2:
        nan = float("nan")
        return {
            **out,
            "w1": nan,
            "w1_std": nan,
            "kl": nan,
            "kl_std": nan,
            "w1_floor": nan,
            "w1_floor_std": nan,
            "kl_floor": nan,
            "kl_floor_std": nan,
            "n_per_sample": m,
        }
    vals: dict[str, list[float]] = {"w1": [], "kl": [], "w1_floor": [], "kl_floor": []}
    for _ in range(n_resamples):
        gs = rng.choice(g, m, replace=False)
        perm = rng.permutation(len(r))
        r1, r2 = r[perm[:m]], r[perm[m : 2 * m]]
        edges = quantile_edges(r1, n_bins)
        vals["w1"].append(wasserstein_distance(gs, r1))
        vals["kl"].append(binned_kl(gs, r1, edges))
        vals["w1_floor"].append(wasserstein_distance(r2, r1))
        vals["kl_floor"].append(binned_kl(r2, r1, edges))
    for k, v in vals.items():
        out[k] = float(np.mean(v))
        out[f"{k}_std"] = float(np.std(v))
    out["n_per_sample"] = int(m)
    return out


LUND_RANGE = ((0.0, 6.0), (-4.0, 7.0))  # ln 1/Δ, ln kt/GeV
LUND_BINS = (12, 11)


def _lund_density(points: np.ndarray, jets: np.ndarray) -> np.ndarray:
    """Counts of the Lund points of the chosen ``jets`` (points: jet index, x, y), one
    overflow bin for points outside the plotted range."""
    sel = points[np.isin(points[:, 0], jets)]
    h, _, _ = np.histogram2d(sel[:, 1], sel[:, 2], bins=LUND_BINS, range=LUND_RANGE)
    outside = len(sel) - h.sum()
    return np.append(h.ravel(), outside)


def binned_kl_2d(
    gen_points: np.ndarray,
    n_gen: int,
    ref_points: np.ndarray,
    n_ref: int,
    n_resamples: int = 5,
    rng: np.random.Generator | None = None,
) -> dict:
    """KL(generated || reference) of the shape of the primary Lund-plane density (12 x 11
    bins plus one for points outside the range), resampled by jets as :func:`compare` does
    (m jets of each, disjoint reference halves for the floor), with the same smoothing. The
    number of emissions per jet is the separate observable ``n_primary``."""
    rng = rng or np.random.default_rng(0)
    m = min(n_gen, n_ref // 2)
    vals: dict[str, list[float]] = {"kl": [], "kl_floor": []}
    for _ in range(n_resamples):
        g = rng.choice(n_gen, m, replace=False)
        perm = rng.permutation(n_ref)
        hg = _lund_density(gen_points, g)
        h1 = _lund_density(ref_points, perm[:m])
        h2 = _lund_density(ref_points, perm[m : 2 * m])
        vals["kl"].append(_kl_counts(hg, h1))
        vals["kl_floor"].append(_kl_counts(h2, h1))
    out = {}
    for k, v in vals.items():
        out[k] = float(np.mean(v))
        out[f"{k}_std"] = float(np.std(v))
    out["n_per_sample"] = int(m)
    return out


def _kl_counts(cp: np.ndarray, cq: np.ndarray) -> float:
    cp, cq = cp + SMOOTHING, cq + SMOOTHING
    p, q = cp / cp.sum(), cq / cq.sum()
    return float(np.sum(p * np.log(p / q)))
