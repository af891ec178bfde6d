"""Per-node features for the tokenizer, and their exact inverse: two feature sets.

A tokenizer uses one :class:`FeatureSet` (``FEATURE_SETS``, keyed by the name its
checkpoint records); code asks it for names, default weights, context and inverse.

``parent-relative-v1`` (tree mode, ``FEATURES``): a node is described relative to its
parent, which generation always knows:

- ``log_z``: log of pT / pT(parent), the momentum fraction;
- ``log_dr``: log of the (rapidity, azimuth) distance to the parent axis;
- ``cos_psi, sin_psi``: the direction of that offset around the parent axis;
- ``log_mass``: log(m / pT + MASS_EPS), the node's mass scale.

The root has no parent: it is described relative to a virtual parent of pT ``ROOT_PT_REF``
on the jet axis, so its offset is zero and only its pT and mass are encoded; decoded jets
live in the jet frame (axis at rapidity 0, azimuth 0).

Why relative to the parent: pseudojets near the jet axis all share nearly the same
axis-relative position and collapsed onto a few tokens in the 2025 thesis, while their
offset from their own parent, in log scale, is resolved at every depth. The feature set is
recorded in the checkpoint; the alternatives that were measured are in
docs/results/readme_history.md (section "Tokenizer").

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
from jetevo.kinematics import eta, four_momentum, four_momentum_eta, pt_y_phi_m, wrap_phi

FEATURES = ("log_z", "log_dr", "cos_psi", "sin_psi", "log_mass")
FEATURE_SET = "parent-relative-v1"
ROOT_PT_REF = 1000.0
MIN_DR = 1e-6
MASS_EPS = 1e-3


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


def root_context(n: int) -> np.ndarray:
    """(n, 3) context of roots decoded in the jet frame: the virtual parent of pT
    ``ROOT_PT_REF`` on the jet axis (rapidity 0, azimuth 0)."""
    return np.column_stack([np.full(n, ROOT_PT_REF), np.zeros(n), np.zeros(n)])


def parent_context(p: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """(n, 3) pT, rapidity, azimuth of each node's parent; the virtual root parent for roots."""
    pt, y, phi, _ = pt_y_phi_m(p)
    ctx = np.empty((len(p), 3))
    has = parent >= 0
    ctx[has] = np.stack([pt, y, phi], axis=1)[parent[has]]
    # roots: a virtual parent on the root's own axis (the jet frame)
    ctx[~has] = np.stack([np.full((~has).sum(), ROOT_PT_REF), y[~has], phi[~has]], axis=1)
    return ctx


def features(p: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    """(n, 5) float64 features of nodes with four-momenta ``p`` given parent context ``ctx``."""
    pt, y, phi, m = pt_y_phi_m(p)
    pt = np.maximum(pt, 1e-9)
    dy, dphi = y - ctx[:, 1], wrap_phi(phi - ctx[:, 2])
    dr = np.hypot(dy, dphi)
    psi = np.arctan2(dphi, dy)
    return np.stack(
        [
            np.log(pt / ctx[:, 0]),
            np.log(np.maximum(dr, MIN_DR)),
            np.cos(psi),
            np.sin(psi),
            np.log(m / pt + MASS_EPS),
        ],
        axis=1,
    )


def invert(f: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    """Four-momenta from features and parent context (exact inverse of :func:`features`
    for nodes with dR >= MIN_DR; closer nodes come back on the parent axis)."""
    f = np.asarray(f, np.float64)
    pt = ctx[:, 0] * np.exp(f[:, 0])
    dr = np.exp(f[:, 1])
    dr = np.where(dr <= MIN_DR * (1 + 1e-6), 0.0, dr)
    norm = np.maximum(np.hypot(f[:, 2], f[:, 3]), 1e-12)
    y = ctx[:, 1] + dr * f[:, 2] / norm
    phi = wrap_phi(ctx[:, 2] + dr * f[:, 3] / norm)
    m = pt * np.maximum(np.exp(f[:, 4]) - MASS_EPS, 0.0)
    return four_momentum(pt, y, phi, m)


def given_parent_context(parent: np.ndarray | None, n: int) -> np.ndarray:
    """(n, 3) context from the parents' four-momenta ``parent`` (NaN rows or ``None``: roots,
    decoded in the jet frame)."""
    if parent is None:
        return root_context(n)
    is_root = np.isnan(parent[:, 0])
    pt, y, phi, _ = pt_y_phi_m(np.where(is_root[:, None], 1.0, parent))
    ctx = np.column_stack([pt, y, phi])
    ctx[is_root] = root_context(int(is_root.sum()))
    return ctx


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

    ``tree_context`` gives the context of every node of :func:`node_arrays`; ``context``
    the context from reference four-momenta (the parent, or the jet axis; NaN rows or
    ``None``: the jet frame); ``forward``/``inverse`` map four-momenta and context to
    features and back. ``particles_only``: the set describes particles, so it trains and
    is evaluated on the leaves alone.
    """

    name: str
    names: tuple[str, ...]
    default_weights: tuple[float, ...]
    particles_only: bool
    tree_context: Callable[[dict], np.ndarray]
    context: Callable[[np.ndarray | None, int], np.ndarray]
    frame_context: Callable[[int], np.ndarray]
    forward: Callable[[np.ndarray, np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray, np.ndarray], np.ndarray]

    @property
    def n_features(self) -> int:
        return len(self.names)


PARENT_RELATIVE = FeatureSet(
    name=FEATURE_SET,
    names=FEATURES,
    default_weights=(3.0, 1.0, 0.7, 0.7, 1.5),
    particles_only=False,
    tree_context=lambda a: parent_context(a["p"], a["parent"]),
    context=given_parent_context,
    frame_context=root_context,
    forward=features,
    inverse=invert,
)
JET_RELATIVE = FeatureSet(
    name=JET_FEATURE_SET,
    names=JET_FEATURES,
    # pT most: it fixes the particle's share of the jet; deta and dphi alike (no preferred axis)
    default_weights=(3.0, 1.0, 1.0),
    particles_only=True,
    tree_context=jet_tree_context,
    context=axis_context,
    frame_context=jet_frame_context,
    forward=jet_features,
    inverse=jet_invert,
)
FEATURE_SETS = {s.name: s for s in (PARENT_RELATIVE, JET_RELATIVE)}


def feature_set(name: str) -> FeatureSet:
    """The feature set called ``name`` (one-line error for an unknown one)."""
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
