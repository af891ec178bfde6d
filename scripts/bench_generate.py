"""Benchmark tree generation: trees/s and nodes/s vs batch size, and cost per node vs tree size.

Uses a trained checkpoint (default: the demo model, ``make demo`` first). ``by_batch``: the
full ``jetevo generate`` path (sampling with the KV cache, decoding, assembling, writing
Parquet) at several batch sizes. ``by_tree_size``: sampling only, with the model's leaf
logits shifted by a constant to make trees smaller or larger; the time per node staying
flat while trees grow shows the cost is linear in the number of nodes (all sampled nodes
count, runaway trees included). Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from jetevo.allocator import keep_freed_memory
    from jetevo.generate import generate, sample_trees
    from jetevo.generate.run import resolution_for
    from jetevo.model.checkpoint import load_model, model_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", type=Path, default=Path("demo_out/model/finetune/model.ckpt"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n-jets", type=int, default=1024)
    ap.add_argument("--batch-sizes", default="256,1024,2048")
    ap.add_argument("--leaf-shifts", default="1.0,0.5,0.0,-0.3", help="added to leaf-token logits")
    args = ap.parse_args()
    if not args.ckpt.is_file():
        raise SystemExit(f"{args.ckpt}: no such checkpoint (run 'make demo' or pass --ckpt)")
    keep_freed_memory()
    result: dict = {
        "ckpt": str(args.ckpt),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "by_batch": [],
        "by_tree_size": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: numba kernels load from their cache, the tokenizer builds its tables
        generate(
            args.ckpt,
            8,
            Path(tmp) / "warm",
            batch_size=8,
            seed=0,
            device=args.device,
            progress=False,
        )
        for b in (int(x) for x in args.batch_sizes.split(",")):
            s = generate(
                args.ckpt,
                args.n_jets,
                Path(tmp) / f"b{b}",
                batch_size=b,
                seed=0,
                device=args.device,
                progress=False,
            )
            result["by_batch"].append(
                {
                    k: s[k]
                    for k in (
                        "batch_size",
                        "n_written",
                        "runaway",
                        "mean_nodes_per_tree",
                        "seconds",
                        "trees_per_s",
                        "nodes_per_s",
                    )
                }
            )

    model = load_model(args.ckpt).to(args.device)
    res = resolution_for(model, model_tokenizer(model, args.ckpt))  # as generate does
    base = {k: v.detach().clone() for k, v in model.state_dict().items() if "bias" in k}
    b = max(int(x) for x in args.batch_sizes.split(","))
    for shift in (float(x) for x in args.leaf_shifts.split(",")):
        model.load_state_dict(base, strict=False)
        model.shift_leaf_odds(shift)
        g = torch.Generator(args.device).manual_seed(0)
        sample_trees(model, 16, generator=g, resolution=res)  # warm-up
        t0 = time.perf_counter()
        trees = sample_trees(model, b, generator=g, resolution=res)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        nodes = trees.nodes_sampled  # the work done, runaway trees included
        result["by_tree_size"].append(
            {
                "leaf_logit_shift": shift,
                "trees": len(trees),
                "runaway": len(trees.runaway),
                "mean_nodes_per_tree": round(len(trees.token) / max(len(trees), 1), 1),
                "nodes_sampled": nodes,
                "us_per_node": round(1e6 * dt / max(nodes, 1), 2),
                "trees_per_s": round(len(trees) / dt, 1),
            }
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
