"""Where generated jets go wrong: one split at a time, against the same splits compounded.

The splitting function without compounding (:func:`one_step_splits`): at every real parent
of held-out jets the model samples its two children given the true history (teacher
forcing: every earlier position holds the real tokens), and the pair is decoded relative
to the true parent (``Tokenizer.decode_split``). These splits are compared, by the depth of
the parent, with the true ones: the median momentum sharing z, the median opening, the
share opening wider than the parent's own split, the median ln kt and the share of leaf
children. Beside it, the same table for the tokenizer alone (the true tokens decoded the
same way: :func:`one_step_splits` with ``oracle=True``) and for freely generated trees
(:func:`jetevo.evaluate.closure.split_table`, which has the same columns), so that a bias can be traced to the
tokenizer, to one split, or to their compounding (``scripts/study_fidelity.py``; the table
by depth is :func:`jetevo.evaluate.closure.per_depth`).
"""

from __future__ import annotations

import numpy as np
import torch

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
    if oracle:
        sampled_l, sampled_r = seqs.left.copy(), seqs.right.copy()
    else:
        generator = torch.Generator().manual_seed(seed)
        table = model.tokens.table()
        l_parts, r_parts = [], []
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
            real = batch["tokens"] != vocab.pad  # each jet's positions, in order, unpadded
            l_parts.append(left[real].numpy())
            r_parts.append(right.view(b, t)[real].numpy())
        sampled_l, sampled_r = np.concatenate(l_parts), np.concatenate(r_parts)
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
    _, y, phi, _ = pt_y_phi_m(p)
    pairs = F.sibling_pairs(a["parent"])
    opening = np.full(len(p), np.nan)
    opening[a["parent"][pairs[:, 0]]] = np.hypot(
        y[pairs[:, 0]] - y[pairs[:, 1]], wrap_phi(phi[pairs[:, 0]] - phi[pairs[:, 1]])
    )
    return F.node_depths(a["parent"]), opening
