"""Benchmark a training step of the jet-evolution model: tokens/s, and MFU on a GPU.

The step is the one ``jetevo train`` runs (``split_nll`` with permutation-min, backward,
AdamW, bf16 autocast on CUDA). Inputs are random token ids in full sequences of
``--seq-len`` positions (throughput does not depend on token values; every position has
two child targets except START). "tokens" are predicted child tokens; "positions" are
sequence positions (one per expanded node). FLOPs per step are counted analytically:
6 x (non-embedding parameters) per position, attention 12 x layers x T x C per position,
the output projections over the vocabulary (3 matmuls with permutation-min) and the token
table's feature network. MFU = achieved FLOP/s / ``--peak-tflops`` (default: H100 SXM
dense bf16, 989 TFLOP/s); on CPU it is left out. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def step_flops(model, batch: int, seq: int, permutation_min: bool) -> float:
    cfg = model.cfg
    c, v, n_layer = cfg.n_embd, cfg.vocab.n_node_tokens, cfg.n_layer
    table_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("tokens."))
    emb = (
        sum(p.numel() for n, p in model.named_parameters() if n.endswith("_emb.weight"))
        + table_params
    )
    dense = sum(p.numel() for p in model.parameters()) - emb - model.output.bias.numel()
    positions = batch * seq
    per_position = 6 * dense + 12 * n_layer * seq * c + (3 if permutation_min else 2) * 6 * c * v
    if cfg.right_head == "context":  # the right head's attention over the sequence, per pass
        per_position += (2 if permutation_min else 1) * 12 * seq * c
    feature_net = table_params - model.tokens.learned.weight.numel()
    return positions * per_position + 6 * v * feature_net


def main() -> None:
    from jetevo.allocator import keep_freed_memory
    from jetevo.model.gpt import ModelConfig
    from jetevo.model.loss import split_nll
    from jetevo.model.sequences import IGNORE, SIDE_LEFT, SIDE_START
    from jetevo.model.tree import JetEvolutionModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--size",
        choices=("demo", "default"),
        default=None,
        help="demo: 2x64 (CPU default); default: 3x256 (GPU default)",
    )
    ap.add_argument("--n-layer", type=int)
    ap.add_argument("--n-embd", type=int)
    ap.add_argument("--n-head", type=int)
    ap.add_argument("--n-codes", type=int, default=8192)
    ap.add_argument("--batch", type=int)
    ap.add_argument(
        "--seq-len", type=int, default=64, help="positions per jet (~ constituents of a top jet)"
    )
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-permutation-min", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    args = ap.parse_args()
    keep_freed_memory()
    cuda = args.device.startswith("cuda")
    size = args.size or ("default" if cuda else "demo")
    dims = {
        "demo": {"n_layer": 2, "n_head": 4, "n_embd": 64},
        "default": {"n_layer": 3, "n_head": 8, "n_embd": 256},
    }[size]
    for key in ("n_layer", "n_embd", "n_head"):
        if getattr(args, key):
            dims[key] = getattr(args, key)
    batch = args.batch or (256 if cuda else 16)
    torch.manual_seed(0)
    model = JetEvolutionModel(ModelConfig(n_codes=args.n_codes, **dims)).to(args.device)
    perm = not args.no_permutation_min
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=cuda)

    g = torch.Generator().manual_seed(0)
    vocab = model.cfg.vocab
    v = vocab.n_node_tokens
    t = args.seq_len
    tokens = torch.randint(0, v, (batch, t), generator=g)
    tokens[:, 0] = vocab.start
    side = torch.full((batch, t), SIDE_LEFT)
    side[:, 0] = SIDE_START
    depth = torch.arange(t).clamp(max=model.cfg.max_len).expand(batch, t).clone()
    left = torch.randint(0, v, (batch, t), generator=g)
    right = torch.randint(0, v, (batch, t), generator=g)
    right[:, 0] = IGNORE
    b = {
        k: x.to(args.device)
        for k, x in {
            "tokens": tokens,
            "depth": depth,
            "side": side,
            "scale": torch.randint(0, model.cfg.scale_bins + 1, (batch, t), generator=g)
            * (side != SIDE_START),
            "left": left,
            "right": right,
        }.items()
    }
    loss_fn = torch.compile(split_nll) if args.compile else split_nll

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            out = loss_fn(model, b, perm)
            loss = out["nll_sum"] / out["n_children"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    positions = batch * t
    children = positions * 2 - batch
    flops = step_flops(model, batch, t, perm)
    result = {
        "device": torch.cuda.get_device_name()
        if cuda
        else f"cpu ({torch.get_num_threads()} threads)",
        "model": {
            **dims,
            "n_codes": args.n_codes,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "batch": batch,
        "seq_len": t,
        "permutation_min": perm,
        "step_s": round(dt, 4),
        "positions_per_s": round(positions / dt, 1),
        "tokens_per_s": round(children / dt, 1),
        "tflops_per_s": round(flops / dt / 1e12, 4),
    }
    if cuda:
        result["mfu"] = round(flops / dt / (args.peak_tflops * 1e12), 4)
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
