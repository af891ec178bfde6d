"""Tokenizer closure: real trees rebuilt from their own tokens, against the trees themselves.

Every node is tokenized, and the whole tree is decoded back exactly as generated trees are
decoded (:func:`jetevo.tokenize.decode.decode_tokens`): a tree tokenizer's top-down, every
split an exact two-body decay of its decoded parent, a flat one's particles alone, each in
the jet frame, with the pseudojets their sums (there are no splits to rebuild: the report
says ``decoding`` ``flat``). The tree structure is the true one, so
what the jet observables lose here is what the tokenizer alone costs: no generated jet can
come closer to the truth than this.

Per observable: W1 between all rebuilt and all true jets (0 for a perfect tokenizer: both
samples are the same jets, so there is no sampling floor to subtract), the median of
rebuilt - true over jets (signed: a bias) and of its absolute value, and, as a scale, the
truth-vs-truth W1 floor that ``jetevo evaluate`` puts next to generated samples of this size.
``compare``'s resampled W1 would be wrong here: its random half of the truth shares about
half its jets with the rebuilt sample, which pulls the distance below its floor. The same
holds for the primary Lund plane: its KL is taken between all rebuilt and all true jets,
beside evaluate's floor.

Split by split (:func:`split_table`, on the trees as they are, kt for reclustered jets): the
share of collinear splits (children closer than ``COLLINEAR_DR``) and, per depth of the
parent, the median momentum sharing z, the median opening and the share of splits that open
wider than their parent's split (angular ordering), for the true and the rebuilt trees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import awkward as ak
import numpy as np
from scipy.stats import wasserstein_distance

from jetevo.evaluate.metrics import _kl_counts, _lund_density, binned_kl_2d, compare
from jetevo.evaluate.observables import OBSERVABLES, SPACELIKE_TOL, observables
from jetevo.kinematics import pt, pt_y_phi_m, wrap_phi
from jetevo.tokenize.decode import decode_tokens
from jetevo.trees.format import NODE_FLOAT_FIELDS, Topology, load, tree_files

COLUMNS = ["px", "py", "pz", "E", "left", "right", "parent", "depth"]
COLLINEAR_DR = 1e-3  # children closer than this (rapidity-azimuth) make a collinear split
MAX_DEPTH = 12  # deepest parent level the per-depth table reports


def split_table(trees: ak.Array) -> dict[str, np.ndarray]:
    """Per split (internal node) of ``trees`` (px, py, pz, E, left, right, parent, depth):
    the parent's ``depth``, the momentum sharing ``z`` (softer child's pT over the pair's),
    the ``opening`` between the children, ``wider``: whether it opens wider than its
    parent's split (False for the root's), ``ln_kt`` (softer pT x opening) and ``leaves``
    (leaf children, 0-2)."""
    counts = ak.to_numpy(ak.num(trees["px"], axis=1)).astype(np.int64)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    col = {k: ak.to_numpy(ak.flatten(trees[k])) for k in COLUMNS}
    p = np.stack([col[k].astype(np.float64) for k in ("px", "py", "pz", "E")], axis=1)
    node_pt, y, phi, _ = pt_y_phi_m(p)
    internal = np.flatnonzero(col["left"] >= 0)
    li = first[internal] + col["left"][internal]
    ri = first[internal] + col["right"][internal]
    pair_pt = np.maximum(node_pt[li] + node_pt[ri], 1e-300)
    opening = np.hypot(y[li] - y[ri], wrap_phi(phi[li] - phi[ri]))
    node_opening = np.full(len(p), np.nan)
    node_opening[internal] = opening
    parent = col["parent"][internal]
    has_parent = parent >= 0
    parent_opening = np.full(len(internal), np.nan)
    parent_opening[has_parent] = node_opening[first[internal][has_parent] + parent[has_parent]]
    soft = np.minimum(node_pt[li], node_pt[ri])
    return {
        "depth": col["depth"][internal].astype(np.int64),
        "z": soft / pair_pt,
        "opening": opening,
        "wider": has_parent & (opening > parent_opening),
        "ln_kt": np.log(np.maximum(soft * opening, 1e-300)),
        "leaves": (col["left"][li] < 0).astype(np.int64) + (col["left"][ri] < 0),
    }


def split_closure(true: dict[str, np.ndarray], rebuilt: dict[str, np.ndarray]) -> dict:
    """Collinear-split shares and the per-depth table of true and rebuilt splits."""
    return {
        "collinear_dr": COLLINEAR_DR,
        "collinear_fraction": {
            who: float(np.mean(s["opening"] < COLLINEAR_DR))
            for who, s in (("true", true), ("rebuilt", rebuilt))
        },
        "per_depth": per_depth({"true": true, "rebuilt": rebuilt}),
    }


def per_depth(tables: dict[str, dict[str, np.ndarray]]) -> list[dict]:
    """Per depth of the parent (0..MAX_DEPTH, rows with a split in some table), for every
    named split table: the number of splits, the median z, the median opening, the share
    opening wider than the parent's split (None at the root), and where the table has them
    the median ln kt and the share of leaf children."""
    optional: dict[str, tuple[str, Callable[[np.ndarray], Any]]] = {
        "ln_kt_median": ("ln_kt", np.median),
        "leaf_fraction": ("leaves", np.mean),
    }
    rows = []
    for d in range(MAX_DEPTH + 1):
        row: dict = {"depth": d}
        for name, t in tables.items():
            at = t["depth"] == d
            n = int(at.sum())
            row[name] = {
                "n_splits": n,
                "z_median": float(np.median(t["z"][at])) if n else None,
                "opening_median": float(np.median(t["opening"][at])) if n else None,
                "wider_fraction": float(np.mean(t["wider"][at])) if n and d > 0 else None,
            }
            for key, (column, stat) in optional.items():
                if column in t:
                    value = float(stat(t[column][at])) if n else None
                    # leaves: 0-2 per split, as a share of the children
                    row[name][key] = (
                        value / 2 if value is not None and column == "leaves" else value
                    )
        if any(row[name]["n_splits"] for name in tables):
            rows.append(row)
    return rows


def lund_closure(
    true_points: np.ndarray, rebuilt_points: np.ndarray, n_jets: int, n_resamples: int, rng
) -> dict:
    """KL(rebuilt || true) of the primary Lund-plane shape over all jets, beside evaluate's
    truth-vs-truth floor for a sample of this size."""
    jets = np.arange(n_jets)
    kl = _kl_counts(_lund_density(rebuilt_points, jets), _lund_density(true_points, jets))
    floor = binned_kl_2d(true_points, n_jets, true_points, n_jets, n_resamples, rng)
    return {"kl": kl, "evaluate_kl_floor": floor["kl_floor"]}


def rebuilt_trees(tokenizer, trees: ak.Array, particle_mass: str = "pion") -> ak.Array:
    """The trees decoded from their own tokens: the tree format's node columns and
    ``n_constituents``, in the jet frame (``trees`` needs px, py, pz, E, left, right, parent,
    depth; ``particle_mass`` applies to a flat tokenizer's particles)."""
    topology = Topology.of(trees)
    tokens = tokenizer.encode_trees(trees)
    p = decode_tokens(tokenizer, tokens, topology, particle_mass)
    # in the tree format's order, as generated trees are written
    order, topology, leaf_index = topology.harder_first(pt(p))
    counts = np.diff(topology.offsets)
    q = p[order].astype(np.float32)
    nodes = {k: q[:, i] for i, k in enumerate(NODE_FLOAT_FIELDS)}
    nodes.update(topology.int_columns(leaf_index))
    return ak.Array(
        {
            **{k: ak.unflatten(v, counts) for k, v in nodes.items()},
            "n_constituents": ((counts + 1) // 2).astype(np.int32),
        }
    )


def tokenizer_closure(
    tokenizer,
    tree_paths,
    particle_mass: str = "pion",
    n_resamples: int = 5,
    seed: int = 0,
    massless: bool = False,
) -> dict:
    """Observables of the rebuilt trees against the true ones (see the module docstring)."""
    files = tree_files(tree_paths)
    trees = load(files, columns=COLUMNS)
    rebuilt = rebuilt_trees(tokenizer, trees, particle_mass)
    return {
        "decoding": "flat" if tokenizer.features.particles_only else "exact splits",
        "particle_mass": particle_mass if tokenizer.features.particles_only else "decoded",
        **closure_metrics(trees, rebuilt, str(files[0]), n_resamples, seed, massless),
    }


def closure_metrics(
    trees: ak.Array,
    rebuilt: ak.Array,
    source: str = "trees",
    n_resamples: int = 5,
    seed: int = 0,
    massless: bool = False,
) -> dict:
    """The closure of ``rebuilt`` against the same jets ``trees`` (node for node the same
    jets, in the same order; both need :data:`COLUMNS`): however they were rebuilt."""
    true_obs, true_lund, true_parts = observables(trees, source, massless)
    rebuilt_obs, rebuilt_lund, rebuilt_parts = observables(rebuilt, "rebuilt", massless)
    rng = np.random.default_rng(seed)
    nan = float("nan")
    out = {}
    for name in OBSERVABLES:
        g, r = rebuilt_obs[name], true_obs[name]
        gf, rf, both = np.isfinite(g), np.isfinite(r), np.isfinite(g) & np.isfinite(r)
        diff = g[both] - r[both]
        out[name] = {
            "w1": float(wasserstein_distance(g[gf], r[rf])) if gf.any() and rf.any() else nan,
            "paired_diff_median": float(np.median(diff)) if len(diff) else nan,
            "paired_abs_diff_median": float(np.median(np.abs(diff))) if len(diff) else nan,
            "n_nonfinite_rebuilt": int(np.count_nonzero(~gf)),
            "n_nonfinite_true": int(np.count_nonzero(~rf)),
            "evaluate_w1_floor": compare(r, r, n_resamples, rng)["w1_floor"],
        }
        floor = out[name]["evaluate_w1_floor"]
        out[name]["w1_over_floor"] = out[name]["w1"] / floor if floor > 0 else nan
    particles = {
        who: {
            "mean_mass": float(p["particle_mass"].mean()),
            "spacelike_fraction": float(np.mean(p["m2_over_e2"] < -SPACELIKE_TOL)),
        }
        for who, p in (("rebuilt", rebuilt_parts), ("true", true_parts))
    }
    return {
        "massless": massless,
        "n_jets": len(trees),
        "observables": out,
        "lund_plane": lund_closure(true_lund, rebuilt_lund, len(trees), n_resamples, rng),
        "splits": split_closure(split_table(trees), split_table(rebuilt)),
        "particles": particles,
    }
