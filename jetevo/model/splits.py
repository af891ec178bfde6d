"""``jetevo evaluate-splits``: held-out per-child NLL, top-1 and top-5 of the model and of the
count baselines stored in its checkpoint (gathered by ``jetevo train`` on its training data).

``nll`` (and ``unigram_nll``, ``bigram_nll``) is the likelihood of each split's *unordered*
pair of children, -log(P(l, r) + P(r, l)), divided by the number of children: the proper
probability of what was observed whichever child a convention calls left, comparable between
models trained with or without permutation-min (the minimum over the two assignments, the
training loss, would flatter the model by up to log 2 per split). ``*_ordered`` keys give the
likelihood of the canonical harder-left assignment.
"""

from __future__ import annotations

import numpy as np
import torch

from jetevo.errors import InputError
from jetevo.model.baselines import CountBaselines
from jetevo.model.checkpoint import load_model
from jetevo.model.data import Sequences, collate
from jetevo.model.gpt import IGNORE


@torch.no_grad()
def evaluate_splits(
    ckpt, token_paths, batch_size: int = 64, permutation_min: bool | None = None
) -> dict:
    from jetevo.model.gpt import split_nll

    model = load_model(ckpt)
    seqs = Sequences(
        token_paths, model.cfg.n_codes, model.cfg.max_len, model.log_z_table(), model.cfg.scale_bins
    )
    if seqs.tokenizer["identity"] != model.tokenizer_identity:
        raise InputError(
            seqs.files[0],
            f"tokens come from tokenizer {seqs.tokenizer['identity']}, the model was trained on {model.tokenizer_identity}",
        )
    if permutation_min is None:
        permutation_min = bool(
            model.extra.get("train_config", {}).get("train", {}).get("permutation_min", True)
        )
    pad = model.cfg.n_node_tokens + 2
    loader = torch.utils.data.DataLoader(
        seqs.subset(np.arange(len(seqs))),
        batch_size=batch_size,
        collate_fn=lambda it: collate(it, pad),
    )
    tot = {"pair_nll_sum": 0.0, "ordered_nll_sum": 0.0, "n_children": 0, "top1": 0, "top5": 0}
    for batch in loader:
        out = split_nll(model, batch, permutation_min, stats=True)
        for k in tot:
            tot[k] += float(out[k])
    n = tot["n_children"]
    base = CountBaselines.from_state(model.extra["baselines"])
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


def format_splits(result: dict) -> str:
    """The model-vs-baselines table that ``jetevo evaluate-splits`` prints."""
    rows = [f"{'':<8} {'nll':>8} {'top1':>7} {'top5':>7}"]
    for name, prefix in (("model", ""), ("bigram", "bigram_"), ("unigram", "unigram_")):
        rows.append(
            f"{name:<8} {result[prefix + 'nll']:>8.3f} {result[prefix + 'top1']:>7.3f}"
            f" {result[prefix + 'top5']:>7.3f}"
        )
    rows.append(
        f"per-child NLL in nats over {result['n_children']} children of {result['n_jets']} jets"
    )
    return "\n".join(rows)
