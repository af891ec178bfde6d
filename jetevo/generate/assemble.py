"""Generated trees -> the jetevo tree format (the same Parquet as ``jetevo recluster``).

Node kinematics are the tokenizer's decoding of each token relative to its decoded parent
(top-down, in the jet frame: the root at rapidity 0 and azimuth 0 unless a root rapidity
is given). Constituents are the leaves. Internal nodes keep their own decoded kinematics:
quantization means a parent is not exactly the sum of its children, so generated trees
carry no recombination scheme (``validate(trees, scheme=None, harder_first=True)`` holds).
Nodes are re-ordered into depth-first pre-order with the larger-pT child left, and
``leaf_index`` is the leaf's rank in decreasing pT.
"""

from __future__ import annotations

import json

import numba
import numpy as np
import pyarrow as pa

from jetevo.generate.sampler import SampledTrees
from jetevo.trees.format import list_column, non_nullable_table, write_table


@numba.njit(cache=True)
def _preorder(
    left, right, pt, offsets, out_order, out_left, out_right, out_parent, out_depth, out_leaf
):
    """Per jet: DFS from the root, larger-pT child first; fills the output arrays (local
    indices) and ``out_order`` (the generation-order node at each output slot)."""
    n_jets = len(offsets) - 1
    max_n = 0
    for j in range(n_jets):
        max_n = max(max_n, offsets[j + 1] - offsets[j])
    stack = np.empty(max_n + 1, np.int64)
    stack_parent = np.empty(max_n + 1, np.int64)
    new_index = np.empty(max_n, np.int64)
    leaf_pt = np.empty(max_n, np.float64)
    leaf_slot = np.empty(max_n, np.int64)
    for j in range(n_jets):
        a = offsets[j]
        top = 0
        stack[0] = 0
        stack_parent[0] = -1
        slot = 0
        n_leaves = 0
        while top >= 0:
            g = stack[top]
            p = stack_parent[top]
            top -= 1
            new_index[g] = slot
            out_order[a + slot] = a + g
            out_parent[a + slot] = -1 if p < 0 else new_index[p]
            out_depth[a + slot] = 0 if p < 0 else out_depth[a + new_index[p]] + 1
            out_left[a + slot] = -1
            out_right[a + slot] = -1
            out_leaf[a + slot] = -1
            if p >= 0:
                ps = a + new_index[p]
                if out_left[ps] < 0:
                    out_left[ps] = slot
                else:
                    out_right[ps] = slot
            lc, rc = left[a + g], right[a + g]
            if lc >= 0:
                hard, soft = (lc, rc) if pt[a + lc] >= pt[a + rc] else (rc, lc)
                top += 1
                stack[top] = soft
                stack_parent[top] = g
                top += 1
                stack[top] = hard
                stack_parent[top] = g
            else:
                leaf_pt[n_leaves] = pt[a + g]
                leaf_slot[n_leaves] = slot
                n_leaves += 1
            slot += 1
        order = np.argsort(-leaf_pt[:n_leaves], kind="mergesort")
        for rank in range(n_leaves):
            out_leaf[a + leaf_slot[order[rank]]] = rank


def to_tree_columns(trees: SampledTrees, p: np.ndarray) -> dict[str, np.ndarray]:
    """Flat tree-format node columns (pre-order, harder first) and per-jet columns."""
    off = trees.offsets
    pt = np.hypot(p[:, 0], p[:, 1])
    n = len(trees.token)
    order = np.empty(n, np.int64)
    left, right, parent, depth, leaf = (np.empty(n, np.int64) for _ in range(5))
    _preorder(trees.left, trees.right, pt, off, order, left, right, parent, depth, leaf)
    q = p[order]
    roots = q[off[:-1]]
    rpt = np.hypot(roots[:, 0], roots[:, 1])
    rp = np.sqrt(rpt**2 + roots[:, 2] ** 2)
    eta = np.arcsinh(np.divide(roots[:, 2], rpt, out=np.zeros_like(rpt), where=rpt > 0))
    m2 = roots[:, 3] ** 2 - rp**2
    return {
        "px": q[:, 0].astype(np.float32),
        "py": q[:, 1].astype(np.float32),
        "pz": q[:, 2].astype(np.float32),
        "E": q[:, 3].astype(np.float32),
        "left": left.astype(np.int32),
        "right": right.astype(np.int32),
        "parent": parent.astype(np.int32),
        "depth": depth.astype(np.int32),
        "leaf_index": leaf.astype(np.int32),
        "token": trees.token[order].astype(np.int32),
        "n_constituents": ((np.diff(off) + 1) // 2).astype(np.int32),
        "jet_pt": rpt.astype(np.float32),
        "jet_eta": eta.astype(np.float32),
        "jet_phi": np.arctan2(roots[:, 1], roots[:, 0]).astype(np.float32),
        "jet_mass": np.sqrt(np.maximum(m2, 0.0)).astype(np.float32),
    }


NODE_COLUMNS = ("px", "py", "pz", "E", "left", "right", "parent", "depth", "leaf_index")


def write_generated(
    columns: dict[str, np.ndarray],
    offsets: np.ndarray,
    label: str,
    source: str,
    entry0: int,
    metadata: dict,
    path,
) -> None:
    """Write one Parquet file of generated trees (atomically)."""
    n_jets = len(offsets) - 1
    cols: dict[str, pa.Array] = {k: list_column(columns[k], offsets) for k in NODE_COLUMNS}
    for k in ("n_constituents", "jet_pt", "jet_eta", "jet_phi", "jet_mass"):
        cols[k] = pa.array(columns[k])
    cols["label"] = pa.array([label] * n_jets, pa.string())
    cols["source"] = pa.array([source] * n_jets, pa.string())
    cols["entry"] = pa.array(np.arange(entry0, entry0 + n_jets, dtype=np.int64))
    cols["token"] = list_column(columns["token"], offsets)
    write_table(non_nullable_table(cols, {"jetevo": json.dumps(metadata)}), path)


def decode_conserving(
    tokenizer, trees: SampledTrees, root_context: np.ndarray | None = None
) -> np.ndarray:
    """Four-momenta of generated nodes, top-down, with four-momentum conservation.

    Each pair of children is decoded from its tokens relative to the (already decoded)
    parent, then the pair's mismatch Δ = parent − (left + right) is shared between the two
    in proportion to their energies, so every parent is exactly the sum of its children and
    the constituents add up to the root, as in an E-scheme tree. Without this, independent
    quantization errors compound over ~10 levels and the leaves' summed pT and mass drift
    away from the root's (measured on the demo model: mean leaf-sum mass 100 GeV against a
    root token mass near 170 GeV).
    """
    from jetevo.tokenize import features as F

    off = trees.offsets
    first = np.repeat(off[:-1], np.diff(off))
    f = tokenizer.features_from_codes(tokenizer.vocab.code(trees.token))
    p = np.zeros((len(f), 4))
    roots = off[:-1]
    ctx = np.column_stack(
        [np.full(len(roots), F.ROOT_PT_REF), np.zeros(len(roots)), np.zeros(len(roots))]
    )
    p[roots] = F.invert(f[roots], ctx)
    internal = np.flatnonzero(trees.left >= 0)
    depth = trees.depth
    for d in range(int(depth.max(initial=0))):
        par = internal[depth[internal] == d]
        if len(par) == 0:
            continue
        li, ri = first[par] + trees.left[par], first[par] + trees.right[par]
        pt, y, phi, _ = F.pt_y_phi_m(p[par])
        c = np.column_stack([pt, y, phi])
        pl, pr = F.invert(f[li], c), F.invert(f[ri], c)
        delta = p[par] - pl - pr
        w = pl[:, 3] / np.maximum(pl[:, 3] + pr[:, 3], 1e-12)
        p[li] = pl + w[:, None] * delta
        p[ri] = pr + (1 - w)[:, None] * delta
    return p
