"""Numba kernels: FastJet ``unique_history_order`` -> binary trees in pre-order, and the
pre-order writer that generated trees share.

FastJet's history order is a post-order of history indices: indices ``< N`` are the
input particles (in input order), every later index is a pairwise merge whose two
parents were listed before it, and the final entry is the merge of the whole jet with
the beam. A stack therefore rebuilds the tree without any per-jet Python code.

Node kinematics are recomputed here with the recombination scheme FastJet used
(E-scheme sums four-momenta; WTA-pT keeps rapidity, azimuth and mass of the harder
parent and sums pT), because the awkward interface does not expose intermediate
pseudojets. The same pass replays the clustering sequence in history (time) order to
tell whether kt at the analysis radius would have split the jet into several inclusive
jets: before the first beam merge the two sequences are identical, and at a radius R a
pseudojet goes to the beam as soon as its pT^2 is below the smallest pair distance
min(pT_a^2, pT_b^2) dR_ab^2 / R^2.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

SCHEME_E = 0
SCHEME_WTA_PT = 1

STATUS_OK = 0
STATUS_BAD_HISTORY = 1  # history did not form a single binary tree (never expected)

TWO_PI = 2.0 * math.pi
MAX_RAP = 1e5


@nb.njit(cache=True, inline="always")
def _rap_phi(px, py, pz, E):
    """Rapidity and azimuth exactly as FastJet's PseudoJet defines them."""
    pt2 = px * px + py * py
    phi = 0.0 if pt2 == 0.0 else math.atan2(py, px)
    if phi < 0.0:
        phi += TWO_PI
    if phi >= TWO_PI:
        phi -= TWO_PI
    if E == abs(pz) and pt2 == 0.0:
        rap = MAX_RAP + abs(pz)
        if pz < 0.0:
            rap = -rap
        return rap, phi
    m2 = max((E + pz) * (E - pz) - pt2, 0.0)
    e_plus_pz = E + abs(pz)
    rap = 0.5 * math.log((pt2 + m2) / (e_plus_pz * e_plus_pz))
    if pz > 0.0:
        rap = -rap
    return rap, phi


@nb.njit(cache=True, inline="always")
def _pair_terms(hp, a, b):
    """Transverse cross and dot products of a and b, and the light-cone products whose
    ratio gives their rapidity difference: shared by the bound and the exact test."""
    cross = hp[a, 0] * hp[b, 1] - hp[a, 1] * hp[b, 0]
    dot = hp[a, 0] * hp[b, 0] + hp[a, 1] * hp[b, 1]
    num = (hp[a, 3] + hp[a, 2]) * (hp[b, 3] - hp[b, 2])
    den = (hp[a, 3] - hp[a, 2]) * (hp[b, 3] + hp[b, 2])
    return cross, dot, num, den


@nb.njit(cache=True, inline="always")
def _may_split(terms, pt2_min, soft_floor, inv_r2):
    """False when kt at the analysis radius surely merges a and b rather than send a pseudojet
    of pT^2 >= soft_floor to the beam: the beam wins only if soft < pt2_min dR^2 / R^2.

    dR^2 is bounded from above cheaply (tan x >= x for the azimuth, |ln x| <= |x - 1| / sqrt(x)
    for the rapidity), tightly for the small angles of most merges."""
    if pt2_min <= 0.0:
        return False  # d_ab = 0 merges first whatever the beam distances
    cross, dot, num, den = terms
    if dot <= 0.0 or num <= 0.0 or den <= 0.0:
        return True  # the bound does not apply: decide exactly
    drap = 0.5 * abs(num - den) / math.sqrt(num * den)
    bound = drap * drap + (cross * cross) / (dot * dot)
    return soft_floor < pt2_min * bound * inv_r2 * (1.0 + 1e-9)


@nb.njit(cache=True, inline="always")
def _split_now(hp, a, b, terms, pt2_min, soft, inv_r2):
    """Exactly: would kt at the analysis radius send the softest alive pseudojet (pT^2 = soft)
    to the beam instead of merging a and b, i.e. soft < min(pT_a^2, pT_b^2) dR_ab^2 / R^2?"""
    if pt2_min <= 0.0:
        return False
    cross, dot, num, den = terms
    # azimuthal distance from one atan2, rapidity difference from one logarithm
    # (FastJet's own rapidity where that is singular)
    dphi = math.atan2(abs(cross), dot)
    if num > 0.0 and den > 0.0:
        drap = 0.5 * math.log(num / den)
    else:
        drap = (
            _rap_phi(hp[a, 0], hp[a, 1], hp[a, 2], hp[a, 3])[0]
            - _rap_phi(hp[b, 0], hp[b, 1], hp[b, 2], hp[b, 3])[0]
        )
    return soft < pt2_min * (drap * drap + dphi * dphi) * inv_r2


@nb.njit(cache=True, nogil=True)
def _history_to_tree(hist, h0, n_hist, n, hp, hl, hr, stack, scheme):
    """FastJet's post-order history of one jet -> children (``hl``, ``hr``; -1 for the n
    particles) and kinematics of every merge (``hp``, rows n..2n-2) by the recombination
    ``scheme``. Returns the history index of the root, or -1 if the history is not one
    binary tree (the last history entry is the beam merge)."""
    size = 2 * n - 1
    for i in range(size):
        hl[i] = -1
        hr[i] = -1
    top = 0
    for k in range(n_hist - 1):
        h = hist[h0 + k]
        if h < n:
            stack[top] = h
            top += 1
            continue
        if top < 2 or h >= size or hl[h] != -1:
            return -1
        b = stack[top - 1]
        a = stack[top - 2]
        top -= 2
        hl[h] = a
        hr[h] = b
        if scheme == SCHEME_E:
            for c in range(4):
                hp[h, c] = hp[a, c] + hp[b, c]
        else:
            pta = math.hypot(hp[a, 0], hp[a, 1])
            ptb = math.hypot(hp[b, 0], hp[b, 1])
            hard = a if pta * pta >= ptb * ptb else b
            rap, phi = _rap_phi(hp[hard, 0], hp[hard, 1], hp[hard, 2], hp[hard, 3])
            m2 = hp[hard, 3] ** 2 - hp[hard, 0] ** 2 - hp[hard, 1] ** 2 - hp[hard, 2] ** 2
            pt = pta + ptb
            mt = math.sqrt(pt * pt + abs(m2))
            hp[h, 0] = pt * math.cos(phi)
            hp[h, 1] = pt * math.sin(phi)
            hp[h, 2] = mt * math.sinh(rap)
            hp[h, 3] = mt * math.cosh(rap)
        stack[top] = h
        top += 1
    if top != 1:
        return -1
    return stack[0]


@nb.njit(cache=True, nogil=True)
def _kt_would_split(hp, hl, hr, pt2, n, inv_r2, leaf_order, alive, merged_alive, merged_pos):
    """Replay the merges in time order: would kt at the analysis radius have sent something
    to the beam, i.e. made more than one inclusive jet?

    That needs the softest alive pseudojet at every merge. Leaves die in any order but are
    visited softest-first through ``leaf_order`` (the input is normally pT-ordered already);
    the few alive merged pseudojets sit in a compact list, scanned only when the cheap lower
    bound (softest alive leaf, softest merged pseudojet so far) cannot decide."""
    if n <= 1:
        return False
    size = 2 * n - 1
    sorted_leaves = True
    for i in range(1, n):
        if pt2[i] > pt2[i - 1]:
            sorted_leaves = False
            break
    if sorted_leaves:
        for i in range(n):
            leaf_order[i] = i
    else:
        leaf_order[:n] = np.argsort(pt2[:n], kind="mergesort")[::-1]
    for i in range(size):
        alive[i] = i < n
    soft_leaf_pos = n - 1  # leaf_order position of the softest leaf that may be alive
    n_merged_alive = 0
    merged_floor = math.inf  # softest merged pseudojet made so far: a lower bound
    for h in range(n, size):
        a = hl[h]
        b = hr[h]
        while soft_leaf_pos >= 0 and not alive[leaf_order[soft_leaf_pos]]:
            soft_leaf_pos -= 1
        soft_leaf = pt2[leaf_order[soft_leaf_pos]] if soft_leaf_pos >= 0 else math.inf
        pt2_min = min(pt2[a], pt2[b])
        terms = _pair_terms(hp, a, b)
        if _may_split(terms, pt2_min, min(soft_leaf, merged_floor), inv_r2):
            soft = soft_leaf
            for k in range(n_merged_alive):
                soft = min(soft, pt2[merged_alive[k]])
            if _split_now(hp, a, b, terms, pt2_min, soft, inv_r2):
                return True
        for x in (a, b):
            alive[x] = False
            if x >= n:  # swap-remove from the list of alive merged pseudojets
                k = merged_pos[x]
                last = merged_alive[n_merged_alive - 1]
                merged_alive[k] = last
                merged_pos[last] = k
                n_merged_alive -= 1
        alive[h] = True
        merged_alive[n_merged_alive] = h
        merged_pos[h] = n_merged_alive
        n_merged_alive += 1
        merged_floor = min(merged_floor, pt2[h])
    return False


@nb.njit(cache=True, nogil=True)
def write_preorder(root, left, right, key, order, out_left, out_right, out_parent, out_depth,
                   stack, stack_parent):  # fmt: skip
    """One tree in the tree format's order: depth-first pre-order from ``root``, at every
    split the child with the larger ``key`` (pT or pT^2) first, the first-stored child on
    ties. ``left``/``right``: children of each input node (-1: a leaf), in any numbering.

    Fills, per output slot s: ``order[s]`` (the input node), and the slot-numbered
    ``out_left``, ``out_right``, ``out_parent`` (-1: none) and ``out_depth``; returns the
    number of nodes. This is the one pre-order writer: reclustering and generation use it.
    """
    stack[0] = root
    stack_parent[0] = -1
    top = 1
    nxt = 0
    while top > 0:
        top -= 1
        h = stack[top]
        par = stack_parent[top]
        order[nxt] = h
        out_parent[nxt] = par
        out_depth[nxt] = 0 if par < 0 else out_depth[par] + 1
        out_left[nxt] = -1
        out_right[nxt] = -1
        if par >= 0:
            if out_left[par] == -1:
                out_left[par] = nxt
            else:
                out_right[par] = nxt
        a = left[h]
        if a >= 0:
            b = right[h]
            if key[b] > key[a]:
                a, b = b, a
            # push the softer first so the harder child is popped (and numbered) first
            stack[top] = b
            stack_parent[top] = nxt
            stack[top + 1] = a
            stack_parent[top + 1] = nxt
            top += 2
        nxt += 1
    return nxt


@nb.njit(cache=True)
def preorder_batch(left, right, pt, offsets):
    """:func:`write_preorder` for every jet of a batch stored with local indices and root
    first (e.g. generation order); also ``leaf_index``, each leaf's rank in decreasing
    ``pt`` within its jet. Returns global ``order`` and local left, right, parent, depth,
    leaf_index (int64)."""
    n = left.shape[0]
    order = np.empty(n, np.int64)
    out_left = np.empty(n, np.int64)
    out_right = np.empty(n, np.int64)
    out_parent = np.empty(n, np.int64)
    out_depth = np.empty(n, np.int64)
    out_leaf = np.full(n, -1, np.int64)
    max_n = 0
    for j in range(offsets.shape[0] - 1):
        max_n = max(max_n, offsets[j + 1] - offsets[j])
    stack = np.empty(max_n + 1, np.int64)
    stack_parent = np.empty(max_n + 1, np.int64)
    leaf_pt = np.empty(max_n, np.float64)
    leaf_slot = np.empty(max_n, np.int64)
    for j in range(offsets.shape[0] - 1):
        a, b = offsets[j], offsets[j + 1]
        write_preorder(
            0, left[a:b], right[a:b], pt[a:b], order[a:b], out_left[a:b], out_right[a:b],
            out_parent[a:b], out_depth[a:b], stack, stack_parent,
        )  # fmt: skip
        n_leaves = 0
        for s in range(b - a):
            if out_left[a + s] < 0:
                leaf_pt[n_leaves] = pt[a + order[a + s]]
                leaf_slot[n_leaves] = s
                n_leaves += 1
        rank = np.argsort(-leaf_pt[:n_leaves], kind="mergesort")
        for r in range(n_leaves):
            out_leaf[a + leaf_slot[rank[r]]] = r
        for s in range(b - a):
            order[a + s] += a
    return order, out_left, out_right, out_parent, out_depth, out_leaf


@nb.njit(cache=True, nogil=True)
def build_trees(px, py, pz, E, offsets, hist, hist_offsets, scheme, r_split):
    """Build pre-order trees for every jet of a chunk.

    Inputs are flat float64 constituent arrays with per-jet ``offsets`` (jet j owns
    ``offsets[j]:offsets[j+1]``, at least one constituent) and the flat history order with
    ``hist_offsets``. Returns flat node arrays (``2N-1`` nodes per jet, root first, harder
    child left), ``node_offsets``, a per-jet ``split`` flag (kt at ``r_split`` would give more
    than one inclusive jet) and a per-jet ``status``. Three steps per jet: the history
    becomes a tree (:func:`_history_to_tree`), the kt split replay
    (:func:`_kt_would_split`), and the pre-order writer (:func:`write_preorder`).
    """
    n_jets = offsets.shape[0] - 1
    node_offsets = np.empty(n_jets + 1, np.int64)
    node_offsets[0] = 0
    max_n = 1
    for j in range(n_jets):
        n = offsets[j + 1] - offsets[j]
        node_offsets[j + 1] = node_offsets[j] + 2 * n - 1
        max_n = max(max_n, n)
    n_nodes = node_offsets[n_jets]
    out_p = np.empty((n_nodes, 4), np.float64)
    out_left = np.empty(n_nodes, np.int32)
    out_right = np.empty(n_nodes, np.int32)
    out_parent = np.empty(n_nodes, np.int32)
    out_depth = np.empty(n_nodes, np.int32)
    out_leaf = np.empty(n_nodes, np.int32)
    split = np.zeros(n_jets, np.bool_)
    status = np.zeros(n_jets, np.int8)
    inv_r2 = 1.0 / (r_split * r_split)

    # scratch space for the largest jet, reused by every jet (history index -> row)
    max_size = 2 * max_n - 1
    hp = np.empty((max_size, 4), np.float64)
    hl = np.empty(max_size, np.int64)
    hr = np.empty(max_size, np.int64)
    pt2 = np.empty(max_size, np.float64)
    alive = np.empty(max_size, np.bool_)
    leaf_order = np.empty(max_n, np.int64)
    merged_alive = np.empty(max_n, np.int64)
    merged_pos = np.empty(max_size, np.int64)
    stack = np.empty(max_size + 1, np.int64)
    stack_parent = np.empty(max_size + 1, np.int64)
    order = np.empty(max_size, np.int64)
    s_left = np.empty(max_size, np.int64)
    s_right = np.empty(max_size, np.int64)
    s_parent = np.empty(max_size, np.int64)
    s_depth = np.empty(max_size, np.int64)

    for j in range(n_jets):
        p0 = offsets[j]
        n = offsets[j + 1] - p0
        h0 = hist_offsets[j]
        n_hist = hist_offsets[j + 1] - h0
        if n_hist != 2 * n:
            status[j] = STATUS_BAD_HISTORY
            continue
        size = 2 * n - 1
        for i in range(n):
            hp[i, 0] = px[p0 + i]
            hp[i, 1] = py[p0 + i]
            hp[i, 2] = pz[p0 + i]
            hp[i, 3] = E[p0 + i]
        root = _history_to_tree(hist, h0, n_hist, n, hp, hl, hr, stack, scheme)
        if root < 0:
            status[j] = STATUS_BAD_HISTORY
            continue
        for i in range(size):
            pt2[i] = hp[i, 0] * hp[i, 0] + hp[i, 1] * hp[i, 1]
        split[j] = _kt_would_split(
            hp, hl, hr, pt2, n, inv_r2, leaf_order, alive, merged_alive, merged_pos
        )
        write_preorder(
            root, hl, hr, pt2, order, s_left, s_right, s_parent, s_depth, stack, stack_parent
        )
        q0 = node_offsets[j]
        for s in range(size):
            h = order[s]
            for c in range(4):
                out_p[q0 + s, c] = hp[h, c]
            out_left[q0 + s] = s_left[s]
            out_right[q0 + s] = s_right[s]
            out_parent[q0 + s] = s_parent[s]
            out_depth[q0 + s] = s_depth[s]
            out_leaf[q0 + s] = h if h < n else -1

    return out_p, out_left, out_right, out_parent, out_depth, out_leaf, node_offsets, split, status


@nb.njit(cache=True)
def subtree_sizes(left, right, first):
    """Number of nodes below and including each node (flat arrays, jet starts in ``first``).

    Children always come after their parent in pre-order, so a reverse pass suffices;
    out-of-range child indices count as size 0 (the validator reports them).
    """
    size = np.ones(left.shape[0], np.int64)
    for j in range(first.shape[0] - 1):
        a, b = first[j], first[j + 1]
        for q in range(b - 1, a - 1, -1):
            for c in (left[q], right[q]):
                if c > q - a and a + c < b:
                    size[q] += size[a + c]
    return size


JET_OK = 0
JET_EMPTY = 1
JET_NON_FINITE = 2
JET_NEGATIVE_ENERGY = 3
JET_ONLY_BEAM = 4
JET_UNPHYSICAL = 5  # a constituent with E + |pz| ~ 0 but pT > 0: no rapidity at all
# a constituent with pT below this fraction of its energy (pT = 0 included) runs along the beam:
# FastJet gives it a rapidity beyond any radius, so it goes to the beam instead of into the
# jet's tree; it is dropped and counted (a real particle of a jet has pT/E >> 1e-20)
BEAM_PT_OVER_E = 1e-20


@nb.njit(cache=True, nogil=True)
def _check_jet(px, py, pz, E, a, b, along_beam):
    """Status (``JET_*``) of the jet of constituents a..b-1 and how many of them run along
    the beam (flagged in ``along_beam``)."""
    if b == a:
        return JET_EMPTY, 0
    for i in range(a, b):
        if not (
            np.isfinite(px[i]) and np.isfinite(py[i]) and np.isfinite(pz[i]) and np.isfinite(E[i])
        ):
            return JET_NON_FINITE, 0
    for i in range(a, b):
        if E[i] < 0:
            return JET_NEGATIVE_ENERGY, 0
    for i in range(a, b):
        pt = math.hypot(np.float64(px[i]), np.float64(py[i]))
        if pt > 0.0 and np.float64(E[i]) + abs(np.float64(pz[i])) <= BEAM_PT_OVER_E * pt:
            return JET_UNPHYSICAL, 0
    n_beam = 0
    for i in range(a, b):
        pt2 = np.float64(px[i]) ** 2 + np.float64(py[i]) ** 2
        limit = BEAM_PT_OVER_E * np.float64(E[i])
        if pt2 <= limit * limit:
            along_beam[i] = True
            n_beam += 1
    return (JET_ONLY_BEAM if n_beam == b - a else JET_OK), n_beam


@nb.njit(cache=True, nogil=True)
def prepare_constituents(px, py, pz, E, offsets, max_constituents):
    """Check, pT-order (stable, descending) and cap every jet's constituents in one pass.

    Constituents along the beam (pT below ``BEAM_PT_OVER_E`` of E) are dropped first.
    Returns float64 flat arrays of the kept constituents of the good jets, their offsets,
    a per-jet status (``JET_*``; only ``JET_OK`` jets are kept), the number of constituents
    cut by the cap per jet and the number dropped along the beam per jet.
    """
    n_jets = offsets.shape[0] - 1
    status = np.zeros(n_jets, np.int8)
    n_keep = np.zeros(n_jets, np.int64)
    truncated = np.zeros(n_jets, np.int64)
    beam = np.zeros(n_jets, np.int64)
    along_beam = np.zeros(px.shape[0], np.bool_)
    for j in range(n_jets):
        a, b = offsets[j], offsets[j + 1]
        status[j], beam[j] = _check_jet(px, py, pz, E, a, b, along_beam)
        if status[j] == JET_OK:
            n_real = (b - a) - beam[j]
            n_keep[j] = min(n_real, max_constituents)
            truncated[j] = n_real - n_keep[j]
    out_offsets = np.zeros(n_jets + 1, np.int64)
    for j in range(n_jets):
        out_offsets[j + 1] = out_offsets[j] + n_keep[j]
    total = out_offsets[n_jets]
    opx = np.empty(total, np.float64)
    opy = np.empty(total, np.float64)
    opz = np.empty(total, np.float64)
    oE = np.empty(total, np.float64)
    for j in range(n_jets):
        if n_keep[j] == 0:
            continue
        a, b = offsets[j], offsets[j + 1]
        pt2 = np.empty(b - a, np.float64)
        for i in range(a, b):
            # along the beam: sorted last (never kept, as n_keep counts only the others)
            pt2[i - a] = -1.0 if along_beam[i] else np.float64(px[i]) ** 2 + np.float64(py[i]) ** 2
        order = np.argsort(-pt2, kind="mergesort")
        o = out_offsets[j]
        for k in range(n_keep[j]):
            i = a + order[k]
            opx[o + k] = px[i]
            opy[o + k] = py[i]
            opz[o + k] = pz[i]
            oE[o + k] = E[i]
    return opx, opy, opz, oE, out_offsets, status, truncated, beam
