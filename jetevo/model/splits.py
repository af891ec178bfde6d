"""``jetevo evaluate-splits``: held-out per-child NLL, top-1 and top-5 of the model and of the
count baselines stored in its checkpoint (gathered by ``jetevo train`` on its training data)."""

from __future__ import annotations

import numpy as np
import torch

from jetevo.errors import InputError
from jetevo.model.baselines import CountBaselines
from jetevo.model.checkpoint import load_model
from jetevo.model.data import Sequences, collate


@torch.no_grad()
def evaluate_splits(
    ckpt, token_paths, batch_size: int = 64, permutation_min: bool | None = None
) -> dict:
    from jetevo.model.allocator import keep_freed_memory
    from jetevo.model.gpt import split_nll

    keep_freed_memory()
    model = load_model(ckpt)
    seqs = Sequences(token_paths, model.cfg.n_codes, model.cfg.max_len)
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
    tot = {"nll_sum": 0.0, "n_children": 0, "top1": 0, "top5": 0}
    for batch in loader:
        out = split_nll(model, batch, permutation_min, stats=True)
        for k in tot:
            tot[k] += float(out[k])
    n = tot["n_children"]
    base = CountBaselines.from_state(model.extra["baselines"])
    parents, children = seqs.pairs()
    uni, big = base.nll(parents, children)
    return {
        "nll": tot["nll_sum"] / n,
        "top1": tot["top1"] / n,
        "top5": tot["top5"] / n,
        "unigram_nll": float(uni.mean()),
        "bigram_nll": float(big.mean()),
        **base.topk(parents, children),
        "bigram_lambda": base.lam,
        "n_children": int(n),
        "n_jets": len(seqs),
        "permutation_min": permutation_min,
    }
