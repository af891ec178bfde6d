"""``jetevo evaluate-splits`` (tree mode): held-out per-child NLL, top-1 and top-5 of the model and of the
count baselines stored in its checkpoint (gathered by ``jetevo train`` on its training data).

``nll`` (and ``unigram_nll``, ``bigram_nll``) is the likelihood of each split's *unordered*
pair of children, -log(P(l, r) + P(r, l)), divided by the number of children: the proper
probability of what was observed whichever child a convention calls left, comparable between
models trained with or without permutation-min (the minimum over the two assignments, the
training loss, would flatter the model by up to log 2 per split). ``*_ordered`` keys give the
likelihood of the canonical harder-left assignment.

``jetevo evaluate-particles`` (flat mode, :func:`evaluate_particles`): the held-out
next-token NLL per particle beside the same count baselines.
"""

from __future__ import annotations

import numpy as np
import torch

from jetevo.errors import InputError
from jetevo.model.checkpoint import count_baselines, load_model, model_sequences
from jetevo.model.data import loader
from jetevo.model.loss import flat_nll, split_nll
from jetevo.model.sequences import IGNORE, FlatSequences, TreeSequences


@torch.no_grad()
def evaluate_splits(
    ckpt, token_paths, batch_size: int = 64, permutation_min: bool | None = None, tokenizer=None
) -> dict:
    """Held-out split metrics of a tree model (``tokenizer``: its checkpoint, needed only
    for a model without the scale input, whose children are ordered by the tokenizer's
    decoded momentum fractions; default: the one its checkpoint records)."""
    model = load_model(ckpt)
    if model.cfg.mode != "tree":
        raise InputError(
            ckpt, "a flat-mode model has no splits: use 'jetevo evaluate-particles' for its NLL"
        )
    seqs = model_sequences(model, ckpt, token_paths, tokenizer)
    assert isinstance(seqs, TreeSequences)  # a tree model's
    if permutation_min is None:
        permutation_min = bool(
            model.extra.get("train_config", {}).get("train", {}).get("permutation_min", True)
        )
    tot = {"pair_nll_sum": 0.0, "ordered_nll_sum": 0.0, "n_children": 0, "top1": 0, "top5": 0}
    for batch in loader(seqs, batch_size):
        out = split_nll(model, batch, permutation_min, stats=True)
        for k in tot:
            tot[k] += float(out[k])
    n = tot["n_children"]
    base = count_baselines(model, ckpt)
    parents, children = seqs.pairs()
    uni, big = base.nll(parents, children)
    # the baselines predict each child independently of its side, so both orders of a
    # pair of distinct children are equally likely: the unordered pair gains log 2
    has_r = seqs.right != IGNORE
    n_distinct = int(np.sum(seqs.left[has_r] != seqs.right[has_r]))
    return {
        "nll": tot["pair_nll_sum"] / n,
        "top1": tot["top1"] / n,
        "top5": tot["top5"] / n,
        "unigram_nll": float((uni.sum() - n_distinct * np.log(2)) / n),
        "bigram_nll": float((big.sum() - n_distinct * np.log(2)) / n),
        "nll_ordered": tot["ordered_nll_sum"] / n,
        "unigram_nll_ordered": float(uni.mean()),
        "bigram_nll_ordered": float(big.mean()),
        **base.topk(parents, children),
        "bigram_lambda": base.lam,
        "n_children": int(n),
        "n_jets": len(seqs),
        "permutation_min": permutation_min,
    }


@torch.no_grad()
def evaluate_particles(ckpt, token_paths, batch_size: int = 64) -> dict:
    """Held-out per-particle NLL of a flat model: the next-token cross-entropy per
    prediction (every particle and the STOP that ends the jet), top-1 and top-5, beside
    the unigram and bigram (previous token -> next) count baselines of its training data.
    Same keys as :func:`evaluate_splits`, so :func:`format_splits` prints both."""
    model = load_model(ckpt)
    if model.cfg.mode != "flat":
        raise InputError(ckpt, "a tree-mode model: use 'jetevo evaluate-splits'")
    seqs = model_sequences(model, ckpt, token_paths)
    assert isinstance(seqs, FlatSequences)  # a flat model's
    tot = {"nll_sum": 0.0, "n_targets": 0, "top1": 0, "top5": 0}
    for batch in loader(seqs, batch_size):
        out = flat_nll(model, batch, stats=True)
        for k in tot:
            tot[k] += float(out[k])
    n = tot["n_targets"]
    base = count_baselines(model, ckpt)
    previous, nxt = seqs.pairs()
    uni, big = base.nll(previous, nxt)
    return {
        "nll": tot["nll_sum"] / n,
        "top1": tot["top1"] / n,
        "top5": tot["top5"] / n,
        "unigram_nll": float(uni.mean()),
        "bigram_nll": float(big.mean()),
        **base.topk(previous, nxt),
        "bigram_lambda": base.lam,
        "n_children": int(n),
        "n_jets": len(seqs),
        "truncated_jets": seqs.truncated,
    }


def format_splits(result: dict) -> str:
    """The model-vs-baselines table that ``jetevo evaluate-splits`` prints."""
    rows = [f"{'':<8} {'nll':>8} {'top1':>7} {'top5':>7}"]
    for name, prefix in (("model", ""), ("bigram", "bigram_"), ("unigram", "unigram_")):
        rows.append(
            f"{name:<8} {result[prefix + 'nll']:>8.3f} {result[prefix + 'top1']:>7.3f}"
            f" {result[prefix + 'top5']:>7.3f}"
        )
    rows.append(
        f"per-{'particle' if 'truncated_jets' in result else 'child'} NLL in nats over "
        f"{result['n_children']} predictions of {result['n_jets']} jets"
    )
    return "\n".join(rows)
