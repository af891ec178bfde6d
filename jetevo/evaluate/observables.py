"""Jet observables computed from the final-state particles alone, as for real jets.

Every physics observable here is a function of the particles (the leaves of a tree) and
nothing else, computed by the same code for generated and real jets, so a generated jet
cannot score through the tree it was generated as. Through FastJet's awkward multi-event
API (C++):

- jet pT, mass (of the summed particles), multiplicity;
- N-subjettiness ratios τ21, τ32 (fjcontrib ``Nsubjettiness``: normalized measure, β = 1,
  R0 = 0.8, one-pass kt axes) and D2 (fjcontrib ``EnergyCorrelator``, β = 1);
- on the Cambridge/Aachen reclustering of the particles, as fjcontrib defines them: soft
  drop (``exclusive_jets_softdrop_grooming``: zcut 0.1, β 0, R0 0.8) z_g, R_g and the groomed
  mass ``mass_sd`` (four-momentum conservation makes a generated jet's plain mass its
  decoded root's, fixed before any splitting is sampled; the groomed mass depends on the
  splittings), the
  primary Lund plane (``exclusive_jets_lund_declusterings``: ln 1/Δ, ln kt along the harder
  branch) with its number of primary declusterings ``n_primary``. Jets groomed down to one
  particle have z_g = R_g = NaN (the metrics leave them out of W1/KL and count them).

Per-particle distributions: ``particle_pt`` and ``particle_mass`` (signed: -sqrt(-m²) for
four-vectors spacelike beyond float32 rounding, so an unphysical particle is visible).

Diagnostics of the stored tree itself, under their own names and not physics: its maximum
depth ``tree_depth`` and the length of its harder branch ``tree_n_primary``; and
:func:`kt_self_consistent`, the share of the stored tree's clusters that kt reclustering of
a jet's particles makes too (1 for every E-scheme reclustered real jet).

``massless=True`` replaces every particle's energy by |p| before anything is computed.
"""

from __future__ import annotations

import awkward as ak
import numba
import numpy as np

from jetevo.errors import InputError
from jetevo.kinematics import ALL_IN_ONE_R, JET_R, SOFT_DROP_BETA, SOFT_DROP_ZCUT

JET_OBSERVABLES = (
    "pt",
    "mass",
    "mass_sd",
    "multiplicity",
    "tau21",
    "tau32",
    "d2",
    "zg",
    "rg",
    "n_primary",
)
TREE_DIAGNOSTICS = ("tree_depth", "tree_n_primary")
PARTICLE_OBSERVABLES = ("particle_pt", "particle_mass")
OBSERVABLES = JET_OBSERVABLES + TREE_DIAGNOSTICS
R0 = JET_R
ZCUT = SOFT_DROP_ZCUT
SOFTDROP_BETA = SOFT_DROP_BETA
SPACELIKE_TOL = 1e-6  # m² < -tol E²: beyond float32 rounding of a massless four-vector
CHUNK = 20_000


def particles(trees: ak.Array, massless: bool = False) -> ak.Array:
    """The leaves of every tree as float64 ``Momentum4D`` records (E = |p| if ``massless``)."""
    leaf = trees["left"] < 0
    p = {k: ak.values_astype(trees[k][leaf], np.float64) for k in ("px", "py", "pz", "E")}
    if massless:
        p["E"] = np.sqrt(p["px"] ** 2 + p["py"] ** 2 + p["pz"] ** 2)
    return ak.zip(p, with_name="Momentum4D")


def particle_arrays(parts: ak.Array) -> dict[str, np.ndarray]:
    """Flat per-particle pT, signed mass and m²/E² (for the spacelike test)."""
    px, py, pz, e = (ak.to_numpy(ak.flatten(parts[k])) for k in ("px", "py", "pz", "E"))
    m2 = e**2 - px**2 - py**2 - pz**2
    m2_over_e2 = m2 / np.maximum(e**2, 1e-300)
    spacelike = m2_over_e2 < -SPACELIKE_TOL  # beyond rounding: a real -sqrt(-m²)
    return {
        "particle_pt": np.hypot(px, py),
        "particle_mass": np.where(spacelike, -np.sqrt(np.abs(m2)), np.sqrt(np.maximum(m2, 0.0))),
        "m2_over_e2": m2_over_e2,
    }


def particle_observables(parts: ak.Array) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Jet observables of :data:`JET_OBSERVABLES` and the C/A primary Lund points (n, 3):
    jet index in ``parts``, ln 1/Δ, ln kt."""
    import fastjet

    px, py, pz, e = (ak.to_numpy(ak.sum(parts[k], axis=1)) for k in ("px", "py", "pz", "E"))
    n = ak.to_numpy(ak.num(parts, axis=1))
    out = {
        "pt": np.hypot(px, py),
        "mass": np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0)),
        "multiplicity": n.astype(np.float64),
    }
    kt = fastjet.ClusterSequence(parts, fastjet.JetDefinition(fastjet.kt_algorithm, ALL_IN_ONE_R))
    tau = ak.to_numpy(kt.njettiness(njets=[1, 2, 3], beta=1.0, R0=R0)).reshape(len(n), 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["tau21"] = np.where(tau[:, 0] > 0, tau[:, 1] / tau[:, 0], np.nan)
        out["tau32"] = np.where(tau[:, 1] > 0, tau[:, 2] / tau[:, 1], np.nan)
    d2 = ak.to_numpy(kt.exclusive_jets_energy_correlator(njets=1, func="D2", beta=1))
    out["d2"] = np.where(n >= 3, d2.astype(np.float64).reshape(-1), np.nan)

    ca = fastjet.ClusterSequence(
        parts, fastjet.JetDefinition(fastjet.cambridge_algorithm, ALL_IN_ONE_R)
    )
    sd = ca.exclusive_jets_softdrop_grooming(njets=1, beta=SOFTDROP_BETA, symmetry_cut=ZCUT, R0=R0)
    rg = ak.to_numpy(sd.deltaRsoftdrop).astype(np.float64).reshape(-1)
    zg = ak.to_numpy(sd.symmetrysoftdrop).astype(np.float64).reshape(-1)
    groomed_to_one = ~(rg > 0)
    out["mass_sd"] = ak.to_numpy(sd.msoftdrop).astype(np.float64).reshape(-1)
    out["zg"] = np.where(groomed_to_one, np.nan, zg)
    out["rg"] = np.where(groomed_to_one, np.nan, rg)
    lund = ca.exclusive_jets_lund_declusterings(njets=1)[:, 0]
    n_lund = ak.to_numpy(ak.num(lund, axis=1))
    out["n_primary"] = n_lund.astype(np.float64)
    delta = ak.to_numpy(ak.flatten(lund.Delta))
    ktv = ak.to_numpy(ak.flatten(lund.kt))
    jet = np.repeat(np.arange(len(n)), n_lund)
    ok = (delta > 0) & (ktv > 0)
    points = np.column_stack([jet[ok], np.log(1.0 / delta[ok]), np.log(ktv[ok])])
    return out, points


@numba.njit(cache=True)
def _walk_primary(px, py, left, right, depth, offsets):
    """Per stored tree: maximum depth and the length of its harder branch."""
    n_jets = len(offsets) - 1
    max_depth = np.zeros(n_jets)
    n_primary = np.zeros(n_jets)
    for j in range(n_jets):
        a = offsets[j]
        m = 0
        for i in range(a, offsets[j + 1]):
            m = max(m, depth[i])
        max_depth[j] = m
        node = 0
        while left[a + node] >= 0:
            h, s = a + left[a + node], a + right[a + node]
            if np.hypot(px[s], py[s]) > np.hypot(px[h], py[h]):
                h = s
            n_primary[j] += 1
            node = h - a
    return max_depth, n_primary


def _flat(trees: ak.Array, k: str, dtype) -> np.ndarray:
    return ak.to_numpy(ak.flatten(trees[k])).astype(dtype)


def _offsets(trees: ak.Array) -> np.ndarray:
    counts = ak.to_numpy(ak.num(trees["left"], axis=1)).astype(np.int64)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def tree_diagnostics(trees: ak.Array) -> dict[str, np.ndarray]:
    """:data:`TREE_DIAGNOSTICS` of the trees as stored (not physics: see the module docstring)."""
    depth, n_primary = _walk_primary(
        _flat(trees, "px", np.float64), _flat(trees, "py", np.float64),
        _flat(trees, "left", np.int64), _flat(trees, "right", np.int64),
        _flat(trees, "depth", np.int64), _offsets(trees),
    )  # fmt: skip
    return {"tree_depth": depth, "tree_n_primary": n_primary}


@numba.njit(cache=True)
def _cluster_hashes(left, right, leaf_id, offsets, keys, out, out_offsets):
    """Per jet, the hash of every internal node's set of particles (xor of random 64-bit
    keys of its particles), sorted; ``leaf_id < 0`` means: number leaves in stored order."""
    for j in range(len(offsets) - 1):
        a, b = offsets[j], offsets[j + 1]
        h = np.zeros(b - a, np.uint64)
        ordinal = 0
        ids = np.empty(b - a, np.int64)
        for i in range(a, b):  # leaf ordinals in stored (pre-)order
            if left[i] < 0:
                ids[i - a] = leaf_id[i] if leaf_id[i] >= 0 else ordinal
                ordinal += 1
        for i in range(b - 1, a - 1, -1):  # children come after their parent
            if left[i] < 0:
                h[i - a] = keys[ids[i - a]]
            else:
                h[i - a] = h[left[i]] ^ h[right[i]]
        k = out_offsets[j]
        for i in range(a, b):
            if left[i] >= 0:
                out[k] = h[i - a]
                k += 1
        out[out_offsets[j] : k].sort()


def _internal_hashes(left, right, leaf_id, offsets, keys) -> tuple[np.ndarray, np.ndarray]:
    n_internal = (np.diff(offsets) - 1) // 2
    out_offsets = np.zeros(len(n_internal) + 1, np.int64)
    np.cumsum(n_internal, out=out_offsets[1:])
    out = np.zeros(out_offsets[-1], np.uint64)
    _cluster_hashes(left, right, leaf_id, offsets, keys, out, out_offsets)
    return out, out_offsets


def kt_self_consistent(trees: ak.Array, parts: ak.Array) -> np.ndarray:
    """Per jet: the fraction of the stored tree's clusters (the particle set under each
    internal node) that kt (E scheme) reclustering of its particles ``parts`` (the stored
    leaves, in stored order) makes too; 1 when the stored tree is their kt history.
    A graded score: one swapped merge among 70 particles costs a few clusters, not the jet."""
    from jetevo.trees.recluster import cluster_flat

    offsets = _offsets(trees)
    max_leaves = int(ak.max(ak.num(parts, axis=1), initial=1))
    keys = np.random.default_rng(12345).integers(0, 2**63, max_leaves, dtype=np.int64)
    keys = keys.astype(np.uint64)
    left, right = _flat(trees, "left", np.int64), _flat(trees, "right", np.int64)
    stored, stored_off = _internal_hashes(
        left, right, np.full(len(left), -1, np.int64), offsets, keys
    )
    flat = [ak.to_numpy(ak.flatten(parts[k])) for k in ("px", "py", "pz", "E")]
    counts = ak.to_numpy(ak.num(parts, axis=1)).astype(np.int64)
    p_off = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=p_off[1:])
    try:
        rc = cluster_flat(flat[0], flat[1], flat[2], flat[3], p_off, "E", ALL_IN_ONE_R)
    except RuntimeError:  # FastJet could not make one binary tree (e.g. zero-pT particles)
        return np.full(len(counts), np.nan)
    again, _ = _internal_hashes(
        rc["left"].astype(np.int64), rc["right"].astype(np.int64),
        rc["leaf_index"].astype(np.int64), rc["node_offsets"].astype(np.int64), keys,
    )  # fmt: skip
    # per jet, the share of the stored tree's clusters (particle sets of its internal
    # nodes) that the reclustering also makes; keys mix in the jet so jets never match
    n_internal = np.diff(stored_off)
    jet = np.repeat(np.arange(len(counts)), n_internal).astype(np.uint64)
    salt = jet * np.uint64(0x9E3779B97F4A7C15)
    hits = np.isin(stored ^ salt, again ^ salt)
    found = np.bincount(jet[hits].astype(np.int64), minlength=len(counts))
    return np.where(n_internal > 0, found / np.maximum(n_internal, 1), 1.0)


def observables(
    trees: ak.Array, source: str = "trees", massless: bool = False, self_consistency: bool = False
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Per jet: :data:`OBSERVABLES` (and ``kt_self_consistent`` if asked); the C/A primary
    Lund points (n, 3: jet index, ln 1/Δ, ln kt) of all jets; per particle: :data:`PARTICLE_OBSERVABLES` and m²/E².

    ``trees`` needs px, py, pz, E, left, right, depth.
    """
    if len(trees) == 0:
        raise InputError(source, "no jets to evaluate")
    jets, lunds, parts_out = [], [], []
    for a in range(0, len(trees), CHUNK):  # bounded memory for FastJet on large samples
        chunk = trees[a : a + CHUNK]
        parts = particles(chunk, massless)
        obs, lund = particle_observables(parts)
        lund[:, 0] += a
        obs.update(tree_diagnostics(chunk))
        if self_consistency:  # on the particles as stored: massless would move rapidities
            stored = parts if not massless else particles(chunk)
            obs["kt_self_consistent"] = kt_self_consistent(chunk, stored)
        jets.append(obs)
        lunds.append(lund)
        parts_out.append(particle_arrays(parts))
    return (
        {k: np.concatenate([j[k] for j in jets]) for k in jets[0]},
        np.concatenate(lunds),
        {k: np.concatenate([p[k] for p in parts_out]) for k in parts_out[0]},
    )
