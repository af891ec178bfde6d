"""Decoding a token tree into four-momenta: the one home of what a "decoded tree" is.

A tree tokenizer's trees are decoded by :func:`decode_tree`: top-down in the jet frame
(the root at rapidity 0 and azimuth 0, from its own grid), each split's two children from
their tokens as a two-body decay of their *decoded* parent, so four-momentum is conserved
at every split by construction (:func:`jetevo.tokenize.features.decode_split`), over a
:class:`~jetevo.trees.format.Topology` (pre-order or generation order: children after their
parent). Particles keep the masses their tokens decode to. A flat tokenizer's particles
need no parent: :func:`decode_flat` decodes them alone in the jet frame and sums them up
the tree. :func:`decode_tokens` picks the one the tokenizer's feature set calls for
(generation, the tokenizer closure, ``jetevo tokenizer decode`` and ``predict`` all come
here). No torch here: the tokenizer's decoded code table, root grid and feature set are
all this module reads from it.
"""

from __future__ import annotations

import numpy as np

from jetevo.errors import SettingError
from jetevo.kinematics import with_mass
from jetevo.trees.format import Topology

PARTICLE_MASSES = {"pion": 0.13957, "massless": 0.0, "decoded": None}

# (mask, four-momenta) of nodes whose kinematics are given, not decoded: a real jet's
# prefix. Closed upwards (a known node's parent and sibling are known), so every decoded
# node hangs below a known or decoded parent.
Known = tuple[np.ndarray, np.ndarray]


def _keep_known(p: np.ndarray, at: np.ndarray, known: Known | None) -> None:
    """Nodes ``at`` whose four-momenta are known take them (exactly)."""
    if known is not None:
        mask, p_known = known
        k = at[mask[at]]
        p[k] = p_known[k]


def _features(tokenizer, tokens: np.ndarray) -> np.ndarray:
    return tokenizer.features_from_codes(tokenizer.vocab.code(np.asarray(tokens, np.int64)))


def _sum_up(p: np.ndarray, trees: Topology) -> np.ndarray:
    """``p`` with every internal node set to the sum of its children, bottom-up (the
    leaves' rows are what is summed)."""
    first = trees.jet_start
    internal = np.flatnonzero(trees.left >= 0)
    for d in range(int(trees.depth.max(initial=0)) - 1, -1, -1):
        par = internal[trees.depth[internal] == d]
        p[par] = p[first[par] + trees.left[par]] + p[first[par] + trees.right[par]]
    return p


def decode_tokens(
    tokenizer, tokens: np.ndarray, trees: Topology, particle_mass: str = "pion"
) -> np.ndarray:
    """Four-momenta (n, 4) of every node, decoded as the tokenizer's feature set calls for:
    :func:`decode_tree` for a tree tokenizer (whose particles keep their decoded masses:
    ``particle_mass`` is checked but does not apply to it), :func:`decode_flat` for a flat
    one."""
    if particle_mass not in PARTICLE_MASSES:
        raise SettingError(f"particle mass must be one of {tuple(PARTICLE_MASSES)}")
    if tokenizer.features.particles_only:
        return decode_flat(tokenizer, tokens, trees, particle_mass)
    return decode_tree(tokenizer, tokens, trees)


def decode_tree(
    tokenizer, tokens: np.ndarray, trees: Topology, known: Known | None = None
) -> np.ndarray:
    """Four-momenta (n, 4) of every node of a tree tokenizer's trees, top-down: the roots
    from their grid, then level by level each pair of children as a decay of its decoded
    parent (exact four-momentum conservation). ``known``: nodes that keep given
    four-momenta (a real jet's prefix); the subtrees below them are decoded relative to
    them."""
    if tokenizer.features.particles_only:
        raise SettingError(
            f"decode_tree decodes split tokens; tokenizer feature set "
            f"{tokenizer.features.name} is decoded by decode_flat (or decode_tokens)"
        )
    tokens = np.asarray(tokens, np.int64)
    first = trees.jet_start
    p = np.zeros((len(tokens), 4))
    roots = trees.offsets[:-1]
    if len(roots):
        p[roots] = tokenizer.decode(tokens[roots])
    _keep_known(p, roots, known)
    internal = np.flatnonzero(trees.left >= 0)
    depth = trees.depth
    for d in range(int(depth.max(initial=0))):
        par = internal[depth[internal] == d]
        if len(par) == 0:
            continue
        li, ri = first[par] + trees.left[par], first[par] + trees.right[par]
        p[li], p[ri] = tokenizer.decode_split(p[par], tokens[li], tokens[ri])
        _keep_known(p, np.concatenate([li, ri]), known)
    return p


def decode_flat(
    tokenizer, tokens: np.ndarray, topology: Topology, particle_mass: str = "pion"
) -> np.ndarray:
    """Four-momenta (n, 4) of every node of a flat (jet-relative) tokenizer's trees.

    Each particle is decoded from its token alone, in the jet frame (its features are
    relative to the jet axis, not to a parent), and given ``particle_mass`` (``pion``,
    ``massless``, or ``decoded``: as the token decodes, which is massless since mass is not
    a feature); every pseudojet is the sum of its particles, so four-momentum is conserved
    by construction and the internal nodes' own tokens are not read.
    """
    if particle_mass not in PARTICLE_MASSES:
        raise SettingError(f"particle mass must be one of {tuple(PARTICLE_MASSES)}")
    features = tokenizer.features
    if not features.particles_only:
        raise SettingError(
            f"decode_flat decodes jet-relative tokens; tokenizer feature set {features.name} "
            "is decoded by decode_tree (or decode_tokens)"
        )
    leaf = topology.left < 0
    p = np.zeros((len(topology.left), 4))
    p[leaf] = decode_particles(tokenizer, np.asarray(tokens, np.int64)[leaf], particle_mass)
    return _sum_up(p, topology)


def decode_particles(tokenizer, tokens: np.ndarray, particle_mass: str = "pion") -> np.ndarray:
    """Four-momenta (n, 4) of particles of a flat (jet-relative) tokenizer, each from its
    token alone, in the jet frame, with ``particle_mass`` (see :func:`decode_flat`): what
    flat-mode generation makes of its sampled particles before reclustering them."""
    if particle_mass not in PARTICLE_MASSES:
        raise SettingError(f"particle mass must be one of {tuple(PARTICLE_MASSES)}")
    features = tokenizer.features
    if not features.particles_only:
        raise SettingError(
            f"decode_particles decodes jet-relative tokens, not feature set {features.name}"
        )
    f = _features(tokenizer, np.asarray(tokens, np.int64))
    p = features.inverse(f, features.frame_context(len(f)))
    leaf_mass = PARTICLE_MASSES[particle_mass]
    if leaf_mass is not None:
        p = with_mass(p, np.full(len(f), leaf_mass))
    return p
