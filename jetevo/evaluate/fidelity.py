"""Where generated jets go wrong: one split at a time, against the same splits compounded.

The splitting function without compounding (:func:`one_step_splits`): at every real parent
of held-out jets the model samples its two children given the true history (teacher
forcing: every earlier position holds the real tokens), and the pair is decoded relative
to the true parent (``Tokenizer.decode_split``). These splits are compared, by the depth of
the parent, with the true ones: the median momentum sharing z, the median opening, the
share opening wider than the parent's own split, the median ln kt and the share of leaf
children. Beside it, the same table for the tokenizer alone (the true tokens decoded the
same way: :func:`one_step_splits` with ``oracle=True``) and for freely generated trees
(:func:`jetevo.evaluate.closure.split_table`), so that a bias can be traced to the
tokenizer, to one split, or to their compounding (``scripts/study_fidelity.py``; the table
by depth is :func:`jetevo.evaluate.closure.per_depth`).
"""

from __future__ import annotations

import awkward as ak
import numpy as np
import torch

from jetevo.evaluate.closure import split_table
from jetevo.kinematics import pt_y_phi_m, wrap_phi
from jetevo.model.data import loader
from jetevo.model.sequences import TreeSequences
from jetevo.tokenize import features as F
from jetevo.trees.format import load


def pair_table(parent_depth: np.ndarray, left: np.ndarray, right: np.ndarray,
               parent_opening: np.ndarray, left_leaf: np.ndarray,
               right_leaf: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """Per split: the parent's ``depth``, ``z``, ``opening``, ``wider`` (than
    ``parent_opening``, NaN for the root's split), ``ln_kt`` and ``leaves`` (leaf children,
    0-2) from the children's four-momenta (n, 4)."""
    pt_l, y_l, phi_l, _ = pt_y_phi_m(left)
    pt_r, y_r, phi_r, _ = pt_y_phi_m(right)
    soft = np.minimum(pt_l, pt_r)
    opening = np.hypot(y_l - y_r, wrap_phi(phi_l - phi_r))
    return {
        "depth": parent_depth,
        "z": soft / np.maximum(pt_l + pt_r, 1e-300),
        "opening": opening,
        "wider": np.isfinite(parent_opening) & (opening > parent_opening),
        "ln_kt": np.log(np.maximum(soft * opening, 1e-300)),
        "leaves": left_leaf.astype(np.int64) + right_leaf.astype(np.int64),
    }


@torch.no_grad()
def one_step_splits(
    model,
    tokenizer,
    seqs: TreeSequences,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    oracle: bool = False,
) -> dict[str, np.ndarray]:
    """The split table (:func:`pair_table`) of one sampled split at every real parent of
    the jets of ``seqs`` (a tree model's held-out sequences), decoded relative to the true
    parent; ``oracle``: the true children's tokens instead of sampled ones (the tokenizer
    alone)."""
    a = F.node_arrays(load(seqs.files, columns=["px", "py", "pz", "E", "left", "parent"]))
    p = F.summed_nodes(a)
    depth, opening = _true_depth_and_opening(a, p)
    vocab = model.vocab
    rest = seqs.node >= 0
    sampled_l = np.empty(len(seqs.node), np.int64)
    sampled_r = np.empty(len(seqs.node), np.int64)
    if oracle:
        sampled_l, sampled_r = seqs.left.copy(), seqs.right.copy()
    else:
        generator = torch.Generator().manual_seed(seed)
        table = model.tokens.table()
        at = 0
        for batch in loader(seqs, batch_size):
            h = model.hidden(batch, table)
            b, t, c = h.shape
            left, _ = model.output.sample(
                model.left_state(h).reshape(-1, c), table, temperature, None, generator
            )
            left = left.view(b, t)
            state = model.right_state(h, left, table, model.right_context(h))
            right, _ = model.output.sample(
                state.reshape(-1, c), table, temperature, None, generator
            )
            right = right.view(b, t)
            for row in range(b):  # positions of each jet, unpadded
                n = int(seqs.offsets[at + 1] - seqs.offsets[at])
                lo = int(seqs.offsets[at])
                sampled_l[lo : lo + n] = left[row, :n].numpy()
                sampled_r[lo : lo + n] = right[row, :n].numpy()
                at += 1
    node = seqs.node[rest]
    l_tok, r_tok = sampled_l[rest], sampled_r[rest]
    left_p, right_p = tokenizer.decode_split(p[node], l_tok, r_tok)
    grand = a["parent"][node]
    parent_opening = np.where(grand >= 0, opening[np.maximum(grand, 0)], np.nan)
    return pair_table(
        depth[node], left_p, right_p, parent_opening, vocab.is_leaf(l_tok), vocab.is_leaf(r_tok)
    )


def _true_depth_and_opening(a: dict, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth of every node, and the opening of every internal node's split (NaN at leaves)."""
    parent = a["parent"]
    depth = np.zeros(len(parent), np.int64)
    has = parent >= 0
    for _ in range(len(parent)):
        new = np.where(has, depth[np.maximum(parent, 0)] + 1, 0)
        if np.array_equal(new, depth):
            break
        depth = new
    _, y, phi, _ = pt_y_phi_m(p)
    child = np.flatnonzero(has)
    order = child[np.argsort(parent[child], kind="stable")].reshape(-1, 2)
    opening = np.full(len(parent), np.nan)
    opening[parent[order[:, 0]]] = np.hypot(
        y[order[:, 0]] - y[order[:, 1]], wrap_phi(phi[order[:, 0]] - phi[order[:, 1]])
    )
    return depth, opening


def trees_table(trees) -> dict[str, np.ndarray]:
    """The split table of stored trees (true or generated), with the leaf children and ln kt
    that :func:`pair_table` adds (``trees`` as :func:`jetevo.evaluate.closure.split_table`)."""
    base = split_table(trees)
    a = F.node_arrays(trees)
    p = a["p"]
    counts = a["counts"]
    first = np.repeat(np.cumsum(counts) - counts, counts)
    left = ak.to_numpy(ak.flatten(trees["left"])).astype(np.int64)
    right = ak.to_numpy(ak.flatten(trees["right"])).astype(np.int64)
    internal = np.flatnonzero(left >= 0)
    li, ri = first[internal] + left[internal], first[internal] + right[internal]
    soft = np.minimum(pt_y_phi_m(p[li])[0], pt_y_phi_m(p[ri])[0])
    base["ln_kt"] = np.log(np.maximum(soft * base["opening"], 1e-300))
    base["leaves"] = (left[li] < 0).astype(np.int64) + (left[ri] < 0).astype(np.int64)
    return base
