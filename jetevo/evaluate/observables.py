"""Jet observables of tree files, for comparing generated and real jets.

From the leaves (the constituents), through FastJet's awkward multi-event API in C++:
jet pT and mass (of the summed constituents), multiplicity, N-subjettiness ratios τ21 and
τ32 (fjcontrib ``Nsubjettiness``: normalized measure, β=1, R0=0.8, one-pass kt axes, i.e.
exclusive-kt axes refined by one minimisation pass) and D2 (fjcontrib ``EnergyCorrelator``
D2, β=1, pT-ΔR measure). From the tree as stored (the kt declustering tree of real jets,
or the generated tree): maximum depth, number of internal nodes (N-1 for any full binary
tree), the primary Lund plane along the harder branch (ln 1/Δ, ln kt with Δ the rapidity-
azimuth distance of the two children and kt = pT(softer) Δ), the number of primary
splittings, and soft drop (zcut=0.1, β=0) along the same branch: z_g and R_g of the first
splitting with z = pT(softer)/(pT(a)+pT(b)) > zcut. Note that the usual soft-drop and Lund
conventions decluster a Cambridge/Aachen tree; here the tree is jetevo's kt tree, since the
point is to test the trees the model generates. Jets whose branch never passes soft drop
have z_g = R_g = NaN (counted by the metrics as non-finite, not silently dropped).
"""

from __future__ import annotations

import awkward as ak
import numba
import numpy as np

from jetevo.errors import InputError

OBSERVABLES = (
    "pt",
    "mass",
    "multiplicity",
    "tau21",
    "tau32",
    "d2",
    "depth",
    "n_internal",
    "n_primary",
    "zg",
    "rg",
)
R0 = 0.8
ZCUT = 0.1
CHUNK = 20_000


def _constituents(trees: ak.Array) -> ak.Array:
    leaf = trees["left"] < 0
    return ak.zip(
        {k: ak.values_astype(trees[k][leaf], np.float64) for k in ("px", "py", "pz", "E")}
    )


def leaf_observables(trees: ak.Array) -> dict[str, np.ndarray]:
    import fastjet

    parts = _constituents(trees)
    px, py, pz, e = (ak.to_numpy(ak.sum(parts[k], axis=1)) for k in ("px", "py", "pz", "E"))
    n = ak.to_numpy(ak.num(parts, axis=1))
    out = {
        "pt": np.hypot(px, py),
        "mass": np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0)),
        "multiplicity": n.astype(np.float64),
    }
    # one cluster sequence per batch; R large enough that every jet clusters into one
    cs = fastjet.ClusterSequence(parts, fastjet.JetDefinition(fastjet.kt_algorithm, 100.0))
    tau = ak.to_numpy(cs.njettiness(njets=[1, 2, 3], beta=1.0, R0=R0)).reshape(len(n), 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["tau21"] = np.where(tau[:, 0] > 0, tau[:, 1] / tau[:, 0], np.nan)
        out["tau32"] = np.where(tau[:, 1] > 0, tau[:, 2] / tau[:, 1], np.nan)
    d2 = (
        ak.to_numpy(cs.exclusive_jets_energy_correlator(njets=1, func="D2", beta=1))
        .astype(np.float64)
        .reshape(-1)
    )
    out["d2"] = np.where(n >= 3, d2, np.nan)
    return out


@numba.njit(cache=True)
def _walk_primary(px, py, pz, e, left, right, depth, offsets, zcut, lund_out):
    """Per jet: max depth, primary splittings along the harder branch, soft drop z_g/R_g,
    and the primary Lund-plane points (ln 1/Δ, ln kt)."""
    n_jets = len(offsets) - 1
    max_depth = np.zeros(n_jets)
    n_primary = np.zeros(n_jets)
    zg = np.full(n_jets, np.nan)
    rg = np.full(n_jets, np.nan)
    n_lund = 0
    for j in range(n_jets):
        a = offsets[j]
        m = 0
        for i in range(a, offsets[j + 1]):
            m = max(m, depth[i])
        max_depth[j] = m
        node = 0
        groomed = False
        while left[a + node] >= 0:
            h, s = a + left[a + node], a + right[a + node]
            pth, pts = np.hypot(px[h], py[h]), np.hypot(px[s], py[s])
            if pts > pth:  # harder child first, whatever the stored order
                h, s = s, h
                pth, pts = pts, pth
            yh = 0.5 * np.log((e[h] + pz[h]) / (e[h] - pz[h]))
            ys = 0.5 * np.log((e[s] + pz[s]) / (e[s] - pz[s]))
            dphi = np.arctan2(py[h], px[h]) - np.arctan2(py[s], px[s])
            dphi = (dphi + np.pi) % (2 * np.pi) - np.pi
            delta = np.hypot(yh - ys, dphi)
            z = pts / (pth + pts)
            if not groomed and z > zcut:
                zg[j] = z
                rg[j] = delta
                groomed = True
            if delta > 0 and pts > 0:
                lund_out[n_lund, 0] = np.log(1.0 / delta)
                lund_out[n_lund, 1] = np.log(pts * delta)
                n_lund += 1
            n_primary[j] += 1
            node = h - a
    return max_depth, n_primary, zg, rg, n_lund


def tree_observables(trees: ak.Array) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tree observables per jet, and the primary Lund-plane points (n, 2) of all jets."""
    counts = ak.to_numpy(ak.num(trees["left"], axis=1)).astype(np.int64)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = {
        k: ak.to_numpy(ak.flatten(trees[k]))
        for k in ("px", "py", "pz", "E", "left", "right", "depth")
    }
    p = [flat[k].astype(np.float64) for k in ("px", "py", "pz", "E")]
    lund = np.empty((len(flat["left"]), 2))
    max_depth, n_primary, zg, rg, n_lund = _walk_primary(
        *p, flat["left"].astype(np.int64), flat["right"].astype(np.int64), flat["depth"].astype(np.int64),
        offsets, ZCUT, lund,
    )  # fmt: skip
    obs = {
        "depth": max_depth,
        "n_internal": ((counts - 1) // 2).astype(np.float64),
        "n_primary": n_primary,
        "zg": zg,
        "rg": rg,
    }
    return obs, lund[:n_lund]


def observables(trees: ak.Array, source: str = "trees") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All observables of :data:`OBSERVABLES` per jet, and the primary Lund-plane points."""
    if len(trees) == 0:
        raise InputError(source, "no jets to evaluate")
    parts, lunds = [], []
    for a in range(0, len(trees), CHUNK):  # bounded memory for FastJet on large samples
        chunk = trees[a : a + CHUNK]
        tree, lund = tree_observables(chunk)
        parts.append({**leaf_observables(chunk), **tree})
        lunds.append(lund)
    return {k: np.concatenate([p[k] for p in parts]) for k in OBSERVABLES}, np.concatenate(lunds)
