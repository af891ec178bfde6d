"""Benchmark ``jetevo score``: jets scored per second (JSON on stdout).

    python scripts/bench_score.py --ckpt demo_out/model/finetune/model.ckpt \
        --tokens demo_out/tokens/TTBar_000.0001.trees.parquet
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    from jetevo.allocator import keep_freed_memory
    from jetevo.score import score

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", type=Path, default=Path("demo_out/model/finetune/model.ckpt"))
    ap.add_argument("--tokens", nargs="+", default=["demo_out/tokens/TTBar_000.0001.trees.parquet"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    keep_freed_memory()
    score(args.ckpt, args.tokens[:1], args.batch_size, device=args.device)  # warm-up
    t0 = time.perf_counter()
    table = score(args.ckpt, args.tokens, args.batch_size, device=args.device)
    seconds = time.perf_counter() - t0
    n = table.num_rows
    print(json.dumps({
        "device": args.device if args.device != "cpu" else f"cpu ({torch.get_num_threads()} threads)",
        "ckpt": str(args.ckpt), "jets": n, "batch_size": args.batch_size,
        "predictions": int(sum(table.column("n_predictions").to_pylist())),
        "seconds": round(seconds, 2), "jets_per_s": round(n / seconds, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
