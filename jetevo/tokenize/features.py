"""Per-node features for the tokenizer, and their exact inverse: two feature sets.

A tokenizer uses one :class:`FeatureSet` (``FEATURE_SETS``, keyed by the name its
checkpoint records); code asks it for names, default weights, context and inverse.

``split-exact-v2`` (tree mode, ``FEATURES``): a split is the 1 -> 2 decay of its parent,
as in a parton shower. Given the parent's four-momentum it has four degrees of freedom;
each child describes its own side of the decay, in the parent's rest frame
(:func:`jetevo.kinematics.to_split_frame`, which does not depend on the jet's rapidity and
azimuth, so a jet decoded in the jet frame is the real one moved there):

- ``log_u``: log of u = (1 + cos theta*) / 2, theta* the child's polar angle about the
  parent's direction of flight (u is the energy fraction of a massless child of a fast
  parent, so it plays the momentum fraction z);
- ``cos_psi, sin_psi``: the azimuth of the child about that direction, from the direction
  of larger rapidity towards larger azimuth;
- ``logit_xi``: logit of xi = m / E*, the child's mass over its rest-frame energy.

Decoding a pair (:func:`decode_split`) normalises what both children say:
u_left / (u_left + u_right), the direction of their azimuth vectors' difference, and the
rest-frame momentum p* = m_parent / (1/beta_left + 1/beta_right) with beta = sqrt(1 - xi^2).
Every pair of tokens is therefore a valid decay of exactly its parent (the children add up
to it, no node is spacelike), with no repair; and for a real pair the normalisations are the
identity, so the features are the exact inverse. The opening angle is not a feature: it
follows from the parent's mass, which its own decay fixed one level up. The root has no
parent: its pT and mass are quantized by a codebook of their own
(:mod:`jetevo.tokenize.root`); decoded jets live in the jet frame (axis at rapidity 0,
azimuth 0).

Why: the parent-relative set before it (``parent-relative-v1``: pT fraction, offset, mass
per child, ten numbers for four degrees of freedom) decoded to children heavier than their
parents in 14% of splits and needed a repair that made deep splits collinear and symmetric
(docs/results/exact_representation.md).

``jet-relative-v1`` (flat mode, ``JET_FEATURES``): pT-ordered particles have no parent, so,
as in OmniJet-alpha, a particle is described relative to its jet's axis (the tree's root):
``log_pt`` (GeV), ``deta`` (pseudorapidity) and ``dphi``. Mass is not a feature: decoded
particles are massless, in the jet frame (axis at pseudorapidity 0, azimuth 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import awkward as ak
import numpy as np

from jetevo.errors import SettingError
from jetevo.kinematics import (
    eta,
    four_momentum_eta,
    from_split_frame,
    mass,
    pt_y_phi_m,
    to_split_frame,
    wrap_phi,
)

FEATURES = ("log_u", "cos_psi", "sin_psi", "logit_xi")
FEATURE_SET = "split-exact-v2"
# representations this jetevo no longer decodes, and why (checkpoints of them are refused)
RETIRED_FEATURE_SETS = {
    "parent-relative-v1": "its splits did not conserve four-momentum and were repaired when "
    "decoded; retrain the tokenizer (and the models on its tokens) with this jetevo",
}
U_MIN = 1e-6  # floor of u: a child emitted exactly backwards in its parent's rest frame
XI_MIN = 1e-4  # floor of xi: a massless child
XI_MAX = 1.0 - 1e-9  # ceiling of xi: a child at rest in its parent's frame
COLLINEAR = 1e-9  # parent mass / energy below which a split is taken as collinear
LEAF_MASS_TOL = 1e-6  # m^2 / E^2 of a stored particle below which it is massless (float32)


def node_arrays(trees: ak.Array) -> dict[str, np.ndarray]:
    """Flat per-node arrays of a tree batch: four-momenta, global parent index, leaf flag, depth."""
    counts = ak.to_numpy(ak.num(trees["px"], axis=1)).astype(np.int64)
    if counts.sum() == 0:
        raise SettingError("no nodes to tokenize (empty input)")
    first = np.repeat(np.cumsum(counts) - counts, counts)
    p = np.stack(
        [ak.to_numpy(ak.flatten(trees[k])).astype(np.float64) for k in ("px", "py", "pz", "E")],
        axis=1,
    )
    if not np.all(np.isfinite(p)):
        bad = int(np.repeat(np.arange(len(counts)), counts)[~np.all(np.isfinite(p), axis=1)][0])
        raise SettingError(f"non-finite node kinematics in jet {bad}")
    parent_local = ak.to_numpy(ak.flatten(trees["parent"])).astype(np.int64)
    parent = np.where(parent_local >= 0, first + parent_local, -1)
    is_leaf = ak.to_numpy(ak.flatten(trees["left"])) < 0
    return {"p": p, "parent": parent, "is_leaf": is_leaf, "counts": counts}


def root_rows(n: int) -> np.ndarray:
    """(n, 4) context of roots: NaN rows (a root has no parent)."""
    return np.full((n, 4), np.nan)


def summed_nodes(a: dict) -> np.ndarray:
    """(n, 4) four-momenta of every node of :func:`node_arrays` as the float64 sum of its
    particles (E-scheme), each particle on its mass shell: massless where its stored m^2 is
    within float32 rounding of 0 (|m^2| < LEAF_MASS_TOL E^2, spacelike ones included).

    Stored float32 four-vectors lose ~1e-7 E^2 of m^2: a light pseudojet's mass, and with it
    the rest frame of its split, is then rounding noise (a 0.05 GeV pseudojet of 200 GeV
    had a child with negative rest-frame energy). The tree set describes every node by these
    sums, so that decoding gives them back."""
    parent = a["parent"]
    depth = node_depths(parent)
    q = a["p"]
    p3 = (q[:, :3] ** 2).sum(axis=1)
    m2 = q[:, 3] ** 2 - p3
    energy = np.where(m2 < LEAF_MASS_TOL * q[:, 3] ** 2, np.sqrt(p3), q[:, 3])
    p = np.where(a["is_leaf"][:, None], np.column_stack([q[:, :3], energy]), 0.0)
    for d in range(int(depth.max(initial=0)), 0, -1):
        at = np.flatnonzero(depth == d)
        np.add.at(p, parent[at], p[at])
    return p


def node_depths(parent: np.ndarray) -> np.ndarray:
    """Depth of every node from global parent indices (-1 for roots): one vectorised step
    per tree level."""
    depth = np.zeros(len(parent), np.int64)
    has = parent >= 0
    while True:
        new = np.where(has, depth[np.maximum(parent, 0)] + 1, 0)
        if np.array_equal(new, depth):
            return depth
        depth = new


def sibling_pairs(parent: np.ndarray) -> np.ndarray:
    """(n_splits, 2) indices of every split's two children, from parent indices (-1 for
    roots; of a full binary tree: every parent has exactly two children)."""
    child = np.flatnonzero(parent >= 0)
    return child[np.argsort(parent[child], kind="stable")].reshape(-1, 2)


def split_parents(a: dict) -> np.ndarray:
    """(n, 4) context of every node of :func:`node_arrays` (with ``p`` from
    :func:`summed_nodes`): its parent's four-momentum, NaN rows for roots."""
    has = a["parent"] >= 0
    ctx = root_rows(len(a["p"]))
    ctx[has] = a["p"][a["parent"][has]]
    return ctx


def given_parents(parent: np.ndarray | None, n: int) -> np.ndarray:
    """(n, 4) context from the parents' four-momenta (NaN rows or ``None``: roots)."""
    return root_rows(n) if parent is None else np.asarray(parent, np.float64)


def _collinear(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The parents' masses, and where they are too light to have a rest frame."""
    m = mass(parent)
    return m, m <= COLLINEAR * np.abs(parent[:, 3])


def split_features(p: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """(n, 4) float64 features of children ``p`` of parents ``parent`` (both (n, 4))."""
    p, parent = np.asarray(p, np.float64), np.asarray(parent, np.float64)
    m_parent, light = _collinear(parent)
    # in the split frame (kinematics.to_split_frame): flight along x, z to larger rapidity,
    # y to larger azimuth; psi is measured from z towards y
    star = to_split_frame(p, parent, np.where(light, 1.0, m_parent))
    q = np.linalg.norm(star[:, :3], axis=1)
    cos_theta = np.where(q > 0, star[:, 0] / np.maximum(q, 1e-300), 0.0)
    psi = np.arctan2(star[:, 1], star[:, 2])
    u = np.clip((1.0 + cos_theta) / 2.0, 0.0, 1.0)
    xi = mass(p) / np.maximum(star[:, 3], 1e-300)
    # a parent without a rest frame shares its energy collinearly (the limit m -> 0)
    u = np.where(light, p[:, 3] / np.maximum(parent[:, 3], 1e-300), u)
    psi = np.where(light, 0.0, psi)
    xi = np.clip(np.where(light, XI_MIN, xi), XI_MIN, XI_MAX)
    u = np.maximum(u, U_MIN)
    return np.stack([np.log(u), np.cos(psi), np.sin(psi), np.log(xi) - np.log1p(-xi)], axis=1)


def decode_split(
    parent: np.ndarray, f_left: np.ndarray, f_right: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Four-momenta (n, 4) of the two children of ``parent`` (n, 4) from their features: a
    two-body decay of exactly the parent for every pair of feature rows (see the module
    docstring), the right child the parent minus the left one."""
    parent = np.asarray(parent, np.float64)
    f_left, f_right = np.asarray(f_left, np.float64), np.asarray(f_right, np.float64)
    u_l, u_r = np.exp(f_left[:, 0]), np.exp(f_right[:, 0])
    u = u_l / (u_l + u_r)
    cos_theta = 2.0 * u - 1.0
    sin_theta = 2.0 * np.sqrt(u * (1.0 - u))
    a = f_left[:, 1:3] - f_right[:, 1:3]  # left's azimuth vector minus right's
    a = np.where(np.linalg.norm(a, axis=1, keepdims=True) > 1e-12, a, f_left[:, 1:3])
    a_norm = np.linalg.norm(a, axis=1, keepdims=True)
    a = np.where(a_norm > 1e-12, a / np.maximum(a_norm, 1e-300), [1.0, 0.0])
    xi_l, xi_r = 1.0 / (1.0 + np.exp(-f_left[:, 3])), 1.0 / (1.0 + np.exp(-f_right[:, 3]))
    beta_l, beta_r = np.sqrt((1.0 - xi_l) * (1.0 + xi_l)), np.sqrt((1.0 - xi_r) * (1.0 + xi_r))
    m_parent, light = _collinear(parent)
    p_star = m_parent * beta_l * beta_r / (beta_l + beta_r)
    direction = np.column_stack([cos_theta, sin_theta * a[:, 1], sin_theta * a[:, 0]])
    left_star = np.column_stack([p_star[:, None] * direction, p_star / beta_l])
    left = from_split_frame(left_star, parent, np.where(light, 1.0, m_parent))
    left[light] = u[light, None] * parent[light]
    return left, parent - left


# ------------------------------------------------------------------ jet-relative (flat mode)
JET_FEATURES = ("log_pt", "deta", "dphi")
JET_FEATURE_SET = "jet-relative-v1"
MIN_PT = 1e-9  # GeV: keeps log_pt finite for a node without transverse momentum


def jet_frame_context(n: int) -> np.ndarray:
    """(n, 2) pseudorapidity and azimuth of the jet-frame axis (both 0)."""
    return np.zeros((n, 2))


def axis_context(axis: np.ndarray | None, n: int) -> np.ndarray:
    """(n, 2) pseudorapidity and azimuth of jet axes given as four-momenta ``axis`` (NaN
    rows or ``None``: the jet frame)."""
    if axis is None:
        return jet_frame_context(n)
    frame = np.isnan(axis[:, 0])
    axis = np.where(frame[:, None], 0.0, axis)
    ctx = np.column_stack([eta(axis), pt_y_phi_m(axis)[2]])
    ctx[frame] = 0.0
    return ctx


def jet_tree_context(a: dict) -> np.ndarray:
    """(n, 2) axis of every node of :func:`node_arrays`: its jet's root, so a root is
    described relative to itself."""
    counts = a["counts"][a["counts"] > 0]
    roots = a["p"][np.cumsum(counts) - counts]
    return np.repeat(axis_context(roots, len(roots)), counts, axis=0)


def jet_features(p: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    """(n, 3) float64 ``log_pt, deta, dphi`` of four-momenta ``p`` around the axes ``ctx``."""
    pt, _, phi, _ = pt_y_phi_m(p)
    return np.stack(
        [np.log(np.maximum(pt, MIN_PT)), eta(np.asarray(p, np.float64)) - ctx[:, 0],
         wrap_phi(phi - ctx[:, 1])],
        axis=1,
    )  # fmt: skip


def jet_invert(f: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    """Massless four-momenta from jet-relative features around the axes ``ctx`` (the exact
    inverse of :func:`jet_features` for massless nodes; a massive one keeps its momentum)."""
    f = np.asarray(f, np.float64)
    phi = wrap_phi(ctx[:, 1] + f[:, 2])
    return four_momentum_eta(np.exp(f[:, 0]), ctx[:, 0] + f[:, 1], phi, np.zeros(len(f)))


# ------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class FeatureSet:
    """What a tokenizer's features are, so that callers never branch on the set's name.

    ``node_momenta`` gives the four-momenta a set describes the nodes of
    :func:`node_arrays` by (as stored, or summed from the particles), ``tree_context`` the
    context of every node (after ``node_momenta``); ``context``
    the context from reference four-momenta (the parent, or the jet axis; NaN rows or
    ``None``: roots, or the jet frame); ``forward`` maps four-momenta and context to
    features. Back: ``inverse`` decodes a node alone (flat set: a particle in its jet),
    ``split_inverse`` a parent's two children together (tree set: a split, the root
    quantized apart). ``particles_only``: the set describes particles, so it trains and is
    evaluated on the leaves alone.
    """

    name: str
    names: tuple[str, ...]
    default_weights: tuple[float, ...]
    particles_only: bool
    node_momenta: Callable[[dict], np.ndarray]
    tree_context: Callable[[dict], np.ndarray]
    context: Callable[[np.ndarray | None, int], np.ndarray]
    frame_context: Callable[[int], np.ndarray]
    forward: Callable[[np.ndarray, np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    split_inverse: Callable[..., tuple[np.ndarray, np.ndarray]] | None

    @property
    def n_features(self) -> int:
        return len(self.names)


SPLIT_EXACT = FeatureSet(
    name=FEATURE_SET,
    names=FEATURES,
    # u (the momentum sharing) most, then xi (the masses, which fix the openings below)
    default_weights=(3.0, 1.0, 1.0, 2.0),
    particles_only=False,
    node_momenta=summed_nodes,
    tree_context=split_parents,
    context=given_parents,
    frame_context=root_rows,
    forward=split_features,
    inverse=None,
    split_inverse=decode_split,
)
JET_RELATIVE = FeatureSet(
    name=JET_FEATURE_SET,
    names=JET_FEATURES,
    # pT most: it fixes the particle's share of the jet; deta and dphi alike (no preferred axis)
    default_weights=(3.0, 1.0, 1.0),
    particles_only=True,
    node_momenta=lambda a: a["p"],
    tree_context=jet_tree_context,
    context=axis_context,
    frame_context=jet_frame_context,
    forward=jet_features,
    inverse=jet_invert,
    split_inverse=None,
)
FEATURE_SETS = {s.name: s for s in (SPLIT_EXACT, JET_RELATIVE)}


def feature_set(name: str) -> FeatureSet:
    """The feature set called ``name`` (one-line error for an unknown one)."""
    if name in RETIRED_FEATURE_SETS:
        raise SettingError(f"feature set {name} is retired: {RETIRED_FEATURE_SETS[name]}")
    if name not in FEATURE_SETS:
        raise SettingError(f"feature_set takes one of {', '.join(FEATURE_SETS)}, got {name!r}")
    return FEATURE_SETS[name]


class Standardizer:
    """Invertible affine preprocessing: (x - mean) / std * weight, stored in the checkpoint.

    The weights let the quantizer spend resolution where the physics needs it (pT).
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, weight: np.ndarray):
        self.mean = np.asarray(mean, np.float64)
        self.std = np.asarray(std, np.float64)
        self.weight = np.asarray(weight, np.float64)

    @classmethod
    def fit(cls, x: np.ndarray, weight) -> Standardizer:
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 0, std, 1.0), np.asarray(weight, np.float64))

    def forward(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std * self.weight

    def inverse(self, t: np.ndarray) -> np.ndarray:
        return np.asarray(t, np.float64) / self.weight * self.std + self.mean

    def state(self) -> dict:
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "weight": self.weight.tolist(),
        }
