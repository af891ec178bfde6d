"""Training objectives of both modes, through the output layer's public interface only.

Tree mode (:func:`split_nll`): the cross-entropy of every child with the permutation-min
rule (the two children of a split are an unordered pair). Flat mode (:func:`flat_nll`): the
next-token cross-entropy of OmniJet-alpha, with padding never in the loss.
"""

from __future__ import annotations

import torch

from jetevo.model.sequences import IGNORE


def split_nll(
    model, batch: dict, permutation_min: bool = True, stats: bool = False, pairs: bool = False
) -> dict:
    """Cross-entropy per child of a tree model, summed over the batch.

    Per split: min(CE(L, l) + CE(R|l, r), CE(L, r) + CE(R|r, l)) when ``permutation_min``;
    the canonical assignment otherwise. The root (START position) has a left target only.
    Scores are computed only at positions that have targets. With ``stats``, also the NLL
    of the canonical (harder-left) assignment, the NLL of the unordered pair of children
    (-log(P(l, r) + P(r, l)), the proper likelihood of a split whichever child is called
    left) and the children whose target is the top-1 / within the top-5 of its head. With
    ``pairs``, only the unordered-pair NLL of every position (``pair_nll``), for scoring.
    """
    out_layer = model.output
    l_all, r_all = batch["left"], batch["right"]
    table = model.tokens.table()
    h_all = model.hidden(batch, table)
    valid = l_all != IGNORE
    h, tgt_left, tgt_right = h_all[valid], l_all[valid], r_all[valid]
    has_r = tgt_right != IGNORE
    r_safe = tgt_right.clamp(min=0)
    context = model.right_context(h_all)

    def right_state(left_tokens: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Right states at the positions ``where`` (B, T) given left children (B, T)."""
        if context is None:  # left-child head: per position, on the selected rows only
            return model.right_state(h_all[where], left_tokens[where], table)
        # context head: every position attends causally over the sequence, then select
        return model.right_state(h_all, left_tokens.clamp(min=0), table, context)[where]

    left_state = model.left_state(h)
    # the left head's NLL of both children (the second for the swapped assignment)
    ce_left = out_layer.nll(left_state, table, torch.stack([tgt_left, r_safe], 1))
    ce_ll = ce_left[:, 0]
    right = right_state(l_all, valid)
    ce_rr = out_layer.nll(right, table, r_safe) * has_r
    per_split = ce_ll + ce_rr
    canonical = per_split
    swapped = torch.zeros_like(has_r)
    right_sw = alt = None
    if (permutation_min or stats or pairs) and has_r.any():
        # swapped: the true right child as this split's left child
        right_sw = right_state(r_all, valid & (r_all != IGNORE))
        alt = ce_left[has_r, 1] + out_layer.nll(right_sw, table, tgt_left[has_r])
    if permutation_min and alt is not None:
        better = alt < per_split[has_r]
        swapped[has_r] = better
        per_split = per_split.clone()
        per_split[has_r] = torch.where(better, alt, per_split[has_r])
    out = {
        "nll_sum": per_split.sum(),
        "n_children": valid.sum() + has_r.sum(),
        "per_split": per_split,
    }
    if stats or pairs:
        with torch.no_grad():
            # NLL of the unordered pair {l, r}: -log(P(l, r) + P(r, l)), or -log P(l, l)
            pair = canonical.clone()
            if alt is not None:
                distinct = tgt_left[has_r] != tgt_right[has_r]
                both = -torch.logaddexp(-canonical[has_r], -alt)
                pair[has_r] = torch.where(distinct, both, canonical[has_r])
            out["pair_nll"] = pair  # per position with a target, in row-major order
            out["pair_nll_sum"] = pair.sum()
    if stats:
        with torch.no_grad():
            out["ordered_nll_sum"] = canonical.sum()
            first = torch.where(swapped, r_safe, tgt_left)
            second = torch.where(swapped, tgt_left, r_safe)
            rank_l = out_layer.rank(left_state, table, first)
            rank_r = out_layer.rank(right, table, second)
            if right_sw is not None and swapped.any():
                sw = swapped[has_r]
                rank_r[has_r] = torch.where(
                    sw, out_layer.rank(right_sw, table, second[has_r]), rank_r[has_r]
                )
            out["top1"] = (rank_l == 0).sum() + ((rank_r == 0) & has_r).sum()
            out["top5"] = (rank_l < 5).sum() + ((rank_r < 5) & has_r).sum()
    return out


def weighted_split_loss(per_split: torch.Tensor, batch: dict, weights: list[float]) -> torch.Tensor:
    """Mean NLL per child with the predictions of generation level k weighted by
    ``weights[k]``: level 0 is the root token (at START), level 1 the root's split, level 2
    the splits of its children, ...; levels beyond the list weigh 1.

    Why: a jet has one root split among ~70, yet its first splittings decide its mass and
    prong structure (τ21, τ32, R_g). Each prediction's conditional is still fitted to its
    own targets; the weights only say where a finite model spends its capacity.
    """
    valid = batch["left"] != IGNORE
    children = 1 + (batch["right"][valid] != IGNORE).to(per_split.dtype)
    level = batch["depth"][valid]  # input depth: START 0, root 1, its children 2, ...
    w = torch.as_tensor(weights, dtype=per_split.dtype, device=per_split.device)
    weight = torch.where(level < len(w), w[level.clamp(max=len(w) - 1)], torch.ones_like(children))
    return (weight * per_split).sum() / (weight * children).sum().clamp(min=1e-12)


def flat_nll(model, batch: dict, stats: bool = False) -> dict:
    """Next-token cross-entropy of a flat model, summed over the batch's real targets
    (padding has the target ``IGNORE`` and never enters); with ``stats`` also the targets
    that are the top-1 / within the top-5 of the head."""
    table = model.tokens.table()
    h_all = model.hidden(batch, table)
    valid = batch["target"] != IGNORE
    state = model.state(h_all[valid])
    target = batch["target"][valid]
    per_target = model.output.nll(state, table, target)
    out = {"nll_sum": per_target.sum(), "n_targets": valid.sum(), "per_target": per_target}
    if stats:
        with torch.no_grad():
            rank = model.output.rank(state, table, target)
            out["top1"] = (rank == 0).sum()
            out["top5"] = (rank < 5).sum()
    return out
