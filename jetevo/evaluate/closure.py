"""Tokenizer closure: real trees rebuilt from their own tokens, against the trees themselves.

Every node is tokenized, and the whole tree is decoded back exactly as generated trees are
decoded (:func:`jetevo.tokenize.decode.decode_tokens`): a tree tokenizer's top-down with
four-momentum conservation at every split, a flat one's particles alone, each in the jet
frame, with the pseudojets their sums (there are no splits to rebuild: the report says
``split_kinematics`` ``flat``). The tree structure is the true one, so
what the jet observables lose here is what the tokenizer alone costs: no generated jet can
come closer to the truth than this.

Per observable: W1 between all rebuilt and all true jets (0 for a perfect tokenizer: both
samples are the same jets, so there is no sampling floor to subtract), the median of
rebuilt - true over jets (signed: a bias) and of its absolute value, and, as a scale, the
truth-vs-truth W1 floor that ``jetevo evaluate`` puts next to generated samples of this size.
``compare``'s resampled W1 would be wrong here: its random half of the truth shares about
half its jets with the rebuilt sample, which pulls the distance below its floor.
"""

from __future__ import annotations

import awkward as ak
import numpy as np
from scipy.stats import wasserstein_distance

from jetevo.evaluate.metrics import compare
from jetevo.evaluate.observables import OBSERVABLES, SPACELIKE_TOL, observables
from jetevo.kinematics import pt
from jetevo.tokenize.decode import decode_tokens
from jetevo.trees.format import NODE_FLOAT_FIELDS, Topology, load, tree_files

COLUMNS = ["px", "py", "pz", "E", "left", "right", "parent", "depth"]


def rebuilt_trees(
    tokenizer, trees: ak.Array, split_kinematics: str = "two-body", particle_mass: str = "pion"
) -> ak.Array:
    """The trees decoded from their own tokens: the tree format's node columns and
    ``n_constituents``, in the jet frame (``trees`` needs px, py, pz, E, left, right, parent,
    depth; ``split_kinematics`` does not apply to a flat tokenizer)."""
    topology = Topology.of(trees)
    tokens = tokenizer.encode_trees(trees)
    p = decode_tokens(tokenizer, tokens, topology, split_kinematics, particle_mass)
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
    split_kinematics: str = "two-body",
    particle_mass: str = "pion",
    n_resamples: int = 5,
    seed: int = 0,
    massless: bool = False,
) -> dict:
    """Observables of the rebuilt trees against the true ones (see the module docstring)."""
    files = tree_files(tree_paths)
    trees = load(files, columns=COLUMNS)
    true_obs, _, true_parts = observables(trees, str(files[0]), massless)
    rebuilt = rebuilt_trees(tokenizer, trees, split_kinematics, particle_mass)
    rebuilt_obs, _, rebuilt_parts = observables(rebuilt, "rebuilt", massless)
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
    particles = {
        who: {
            "mean_mass": float(p["particle_mass"].mean()),
            "spacelike_fraction": float(np.mean(p["m2_over_e2"] < -SPACELIKE_TOL)),
        }
        for who, p in (("rebuilt", rebuilt_parts), ("true", true_parts))
    }
    return {
        "split_kinematics": "flat" if tokenizer.features.particles_only else split_kinematics,
        "particle_mass": particle_mass,
        "massless": massless,
        "n_jets": len(trees),
        "observables": out,
        "particles": particles,
    }
