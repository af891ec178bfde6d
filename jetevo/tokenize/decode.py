"""Decoding a token tree into four-momenta: the one home of what a "decoded tree" is.

A tree (parent-relative) tokenizer's trees are decoded by :func:`decode_physical`;
:func:`decode_free` is the plain inverse it starts from. Both work top-down in the jet frame
(the root at rapidity 0 and azimuth 0), every node decoded from its token relative to its
*decoded* parent, over a :class:`~jetevo.trees.format.Topology` (pre-order or generation
order: children after their parent). A flat (jet-relative) tokenizer's particles need no
parent: :func:`decode_flat` decodes them alone in the jet frame and sums them up the tree.
:func:`decode_tokens` picks the one the tokenizer's feature set calls for (the tokenizer
closure and ``jetevo tokenizer decode`` use it). No torch here: the tokenizer's decoded code
table and its feature set are all this module reads from it.
"""

from __future__ import annotations

import numpy as np

from jetevo.errors import SettingError
from jetevo.kinematics import boost, mass, pt_y_phi_m, velocity, with_mass
from jetevo.tokenize import features as F
from jetevo.trees.format import Topology

SPLIT_KINEMATICS = ("two-body", "share")
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


def _tree_only(tokenizer, what: str) -> None:
    """Refuse a flat tokenizer where parent-relative tokens are decoded (one line)."""
    features = getattr(tokenizer, "features", F.PARENT_RELATIVE)
    if features.particles_only:
        raise SettingError(
            f"{what} decodes parent-relative tokens; tokenizer feature set {features.name} "
            "is decoded by decode_flat (or decode_tokens)"
        )


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
    tokenizer,
    tokens: np.ndarray,
    trees: Topology,
    split_kinematics: str = "two-body",
    particle_mass: str = "pion",
) -> np.ndarray:
    """Four-momenta (n, 4) of every node, decoded as the tokenizer's feature set calls for:
    :func:`decode_physical` for a tree tokenizer, :func:`decode_flat` for a flat one (which
    has no splits to rebuild: ``split_kinematics`` is checked but does not apply to it)."""
    if split_kinematics not in SPLIT_KINEMATICS:
        raise SettingError(f"split kinematics must be one of {SPLIT_KINEMATICS}")
    if getattr(tokenizer, "features", F.PARENT_RELATIVE).particles_only:
        return decode_flat(tokenizer, tokens, trees, particle_mass)
    return decode_physical(tokenizer, tokens, trees, split_kinematics, particle_mass)


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
            "is decoded by decode_physical (or decode_tokens)"
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


def decode_free(
    tokenizer, tokens: np.ndarray, topology: Topology, known: Known | None = None
) -> np.ndarray:
    """Four-momenta (n, 4) of every node, each decoded relative to its decoded parent,
    without conservation: level by level, so that a node's parent is decoded first.
    ``known``: nodes that keep given four-momenta (see :func:`decode_physical`)."""
    _tree_only(tokenizer, "decode_free")
    f = _features(tokenizer, tokens)
    parent = topology.global_parent()
    depth = topology.depth
    p = np.zeros((len(f), 4))
    for d in range(int(depth.max(initial=0)) + 1):
        at = np.flatnonzero(depth == d)
        if d == 0:
            ctx = F.root_context(len(at))
        else:
            pt, y, phi, _ = pt_y_phi_m(p[parent[at]])
            ctx = np.column_stack([pt, y, phi])
        p[at] = F.invert(f[at], ctx)
        _keep_known(p, at, known)
    return p


def decode_physical(
    tokenizer,
    tokens: np.ndarray,
    trees: Topology,
    split_kinematics: str = "two-body",
    particle_mass: str = "pion",
    known: Known | None = None,
) -> np.ndarray:
    """Four-momenta (n, 4) of every node, top-down, with four-momentum conservation.

    Each pair of children is decoded from its tokens relative to the (already decoded)
    parent, then made to add up exactly to the parent, so the particles add up to the root
    as in an E-scheme tree (independent quantization errors would otherwise compound over
    ~10 levels). ``split_kinematics`` says how:

    - ``two-body`` (default): :func:`two_body_split`: the pair is a two-body decay of its
      parent with physical masses, so no node is spacelike and no parent's mismatch turns
      into invented particle mass. Particles get ``particle_mass`` (``pion``: the charged
      pion mass, ``massless``, or ``decoded``: whatever their token decodes to); a
      pseudojet's mass is its decoded one, or, where that is below what its particles
      need at rest (photons are lighter than pions), the invariant mass of its particles
      as decoded without conservation, so that it keeps their opening instead of decaying
      at rest into one direction;
    - ``share``: the mismatch parent - (left + right) is shared in proportion to the
      children's energies, which passes a parent's excess mass to its children: particles
      come out massive and some spacelike (kept to compare with earlier results).

    ``known``: nodes that keep given four-momenta (a real jet's prefix); the subtrees below
    them are decoded relative to them.
    """
    if split_kinematics not in SPLIT_KINEMATICS:
        raise SettingError(f"split kinematics must be one of {SPLIT_KINEMATICS}")
    if particle_mass not in PARTICLE_MASSES:
        raise SettingError(f"particle mass must be one of {tuple(PARTICLE_MASSES)}")
    _tree_only(tokenizer, "decode_physical")
    first = trees.jet_start
    f = _features(tokenizer, tokens)
    p = np.zeros((len(f), 4))
    roots = trees.offsets[:-1]
    p[roots] = F.invert(f[roots], F.root_context(len(roots)))
    leaf_mass = PARTICLE_MASSES[particle_mass] if split_kinematics == "two-body" else None
    floor = None
    if leaf_mass is not None:
        # a node must be able to hold its particles at rest: mass >= n_leaves * m
        floor = trees.leaves_below() * leaf_mass
        # below its floor a pseudojet takes the mass of its decoded particles instead, so
        # that it keeps their opening rather than decaying at rest into a collinear blob
        mass_below = _decoded_particles_mass(tokenizer, tokens, trees, leaf_mass, known)
        root_mass = _child_mass(
            p[roots], trees.left[roots] < 0, floor[roots], leaf_mass, mass_below[roots]
        )
        p[roots] = with_mass(p[roots], root_mass)
    _keep_known(p, roots, known)
    internal = np.flatnonzero(trees.left >= 0)
    depth = trees.depth
    for d in range(int(depth.max(initial=0))):
        par = internal[depth[internal] == d]
        if len(par) == 0:
            continue
        li, ri = first[par] + trees.left[par], first[par] + trees.right[par]
        pt, y, phi, _ = pt_y_phi_m(p[par])
        c = np.column_stack([pt, y, phi])
        pl, pr = F.invert(f[li], c), F.invert(f[ri], c)
        if split_kinematics == "two-body":
            leaf_l, leaf_r = trees.left[li] < 0, trees.left[ri] < 0
            if floor is not None:
                pl = with_mass(pl, _child_mass(pl, leaf_l, floor[li], leaf_mass, mass_below[li]))
                pr = with_mass(pr, _child_mass(pr, leaf_r, floor[ri], leaf_mass, mass_below[ri]))
            fl, fr = (None, None) if floor is None else (floor[li], floor[ri])
            p[li], p[ri] = two_body_split(p[par], pl, pr, leaf_l, leaf_r, fl, fr)
        else:
            delta = p[par] - pl - pr
            w = pl[:, 3] / np.maximum(pl[:, 3] + pr[:, 3], 1e-12)
            p[li] = pl + w[:, None] * delta
            p[ri] = pr + (1 - w)[:, None] * delta
        _keep_known(p, np.concatenate([li, ri]), known)
    return p


def _child_mass(p, is_leaf, floor, leaf_mass, mass_below) -> np.ndarray:
    """A node's mass: a particle's is ``leaf_mass``; a pseudojet keeps its decoded mass
    unless that is below ``floor`` (its particles at rest), where it takes ``mass_below``."""
    m = mass(p)
    return np.where(is_leaf, leaf_mass, np.where(m >= floor, m, np.maximum(mass_below, floor)))


def _decoded_particles_mass(
    tokenizer, tokens: np.ndarray, trees: Topology, leaf_mass: float, known: Known | None
) -> np.ndarray:
    """Per node, the invariant mass of its particles as decoded without conservation (each
    node relative to its decoded parent) and given ``leaf_mass``: at least the floor, and
    with the decoded openings."""
    free = decode_free(tokenizer, tokens, trees, known)
    leaf = trees.left < 0
    total = np.zeros_like(free)
    total[leaf] = with_mass(free[leaf], np.full(int(leaf.sum()), leaf_mass))
    return mass(_sum_up(total, trees))


# how the rest-frame rescaling of a decoded pair is shared (in log) between the children's
# masses and their momentum: 0 = masses kept (the opening takes the whole mismatch), 1 =
# both scaled alike; measured on the tokenizer closure (docs/results/decoding.md)
MASS_SHARE = 0.5


def _rest_frame_scale(m_parent, p_star, m_l, m_r, fixed_l, fixed_r, floor_l, floor_r):
    """The factor r by which the decoded rest-frame decay (p* and the free masses, never
    below their floors) must be scaled to have the parent's mass as its energy."""

    def total(r):
        ml = np.where(fixed_l, m_l, np.maximum(r * m_l, floor_l))
        mr = np.where(fixed_r, m_r, np.maximum(r * m_r, floor_r))
        return np.sqrt((r * p_star) ** 2 + ml**2) + np.sqrt((r * p_star) ** 2 + mr**2)

    lo = np.zeros_like(m_parent)
    free = np.where(fixed_l, 0.0, m_l) + np.where(fixed_r, 0.0, m_r)
    hi = m_parent / np.maximum(np.maximum(2 * p_star, free), 1e-300) + 1.0
    for _ in range(60):  # bisection: total(r) increases with r
        mid = 0.5 * (lo + hi)
        below = total(mid) < m_parent
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return lo


def two_body_split(
    parent: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    fixed_l: np.ndarray | None = None,
    fixed_r: np.ndarray | None = None,
    floor_l: np.ndarray | None = None,
    floor_r: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Children that add up exactly to ``parent``, as close to the decoded ones as that allows.

    The decoded pair, seen in its own rest frame, is a decay: a direction, a momentum p*
    and two masses. The parent's mass differs from the decoded pair's (quantization), and in
    a fair share of splits the decoded children are even heavier than the parent
    (docs/results/decoding.md). The mismatch is taken by the
    opening (p*) and the children's masses together: the pseudojet children's masses are
    scaled by r^MASS_SHARE, where r is the factor that would make the whole decoded decay
    fit the parent, never below their floors (``floor_l``, ``floor_r``: what their particles
    need at rest); particles (``fixed_l``, ``fixed_r``) keep their masses. The children are
    then put back to back along the decoded direction in the parent's rest frame, with the
    momentum that the parent's mass fixes, and boosted with the parent. (Keeping the masses
    and sending the whole mismatch into the opening collapsed pairs whose masses did not
    fit onto one direction: that is what lost τ21 and D2.) A parent too light to boost into
    (mass below 1e-4 of its energy: massless particles only) is shared collinearly by the
    decoded energies.
    """
    n = len(parent)
    fixed_l = np.zeros(n, bool) if fixed_l is None else fixed_l
    fixed_r = np.zeros(n, bool) if fixed_r is None else fixed_r
    m_parent = mass(parent)
    m_l, m_r = mass(left), mass(right)
    f_l = np.where(fixed_l, m_l, 0.0 if floor_l is None else np.minimum(floor_l, m_l))
    f_r = np.where(fixed_r, m_r, 0.0 if floor_r is None else np.minimum(floor_r, m_r))
    pair = left + right
    m_pair = mass(pair)
    # the pair's rest frame, or the parent's where the decoded pair is (nearly) massless
    frame = np.where((m_pair > 1e-6 * pair[:, 3])[:, None], velocity(pair), velocity(parent))
    rest_dec = boost(left, -frame)[:, :3]
    p_dec = np.linalg.norm(rest_dec, axis=1)
    axis = np.where(
        p_dec[:, None] > 0, rest_dec / np.maximum(p_dec, 1e-300)[:, None], [0.0, 0.0, 1.0]
    )
    r = _rest_frame_scale(m_parent, p_dec, m_l, m_r, fixed_l, fixed_r, f_l, f_r) ** MASS_SHARE
    m_l = np.where(fixed_l, m_l, np.maximum(r * m_l, f_l))
    m_r = np.where(fixed_r, m_r, np.maximum(r * m_r, f_r))
    room = m_parent * (1 - 1e-9) - f_l - f_r
    above = (m_l - f_l) + (m_r - f_r)
    shrink = np.where(above > room, np.maximum(room, 0.0) / np.maximum(above, 1e-300), 1.0)
    m_l, m_r = f_l + shrink * (m_l - f_l), f_r + shrink * (m_r - f_r)
    # fixed masses that cannot fit (only with decoded particle masses): all scaled down
    over = f_l + f_r > m_parent * (1 - 1e-9)
    cut = np.where(over, m_parent * (1 - 1e-9) / np.maximum(m_l + m_r, 1e-300), 1.0)
    m_l, m_r = m_l * cut, m_r * cut
    heavy = m_parent > 1e-4 * np.maximum(parent[:, 3], 1e-300)
    mp2 = np.maximum(m_parent, 1e-300) ** 2
    lam = (mp2 - (m_l + m_r) ** 2) * (mp2 - (m_l - m_r) ** 2)
    p_star = np.sqrt(np.maximum(lam, 0.0)) / (2 * np.maximum(m_parent, 1e-300))
    rest_l = np.column_stack([p_star[:, None] * axis, np.sqrt(p_star**2 + m_l**2)])
    rest_r = np.column_stack([-p_star[:, None] * axis, np.sqrt(p_star**2 + m_r**2)])
    beta = np.where(heavy[:, None], velocity(parent), 0.0)
    out_l, out_r = boost(rest_l, beta), boost(rest_r, beta)
    # massless (or nearly) parents: collinear sharing by decoded energy
    z = left[:, 3] / np.maximum(left[:, 3] + right[:, 3], 1e-300)
    out_l[~heavy] = z[~heavy, None] * parent[~heavy]
    out_r[~heavy] = parent[~heavy] - out_l[~heavy]
    return out_l, out_r
