"""Right head: attending over the context ("context") against the one-key head ("left-child").

On the token files of a finished ``make demo``, each head is pretrained and fine-tuned with
the demo's configs (the same seeds), then scored on the held-out tops: split NLL
(``evaluate-splits``) and the generated jets on their massless particles (``evaluate
--massless``). Prints one table (Markdown) and writes every number to ``OUT/results.json``.

    python scripts/study_right_head.py --demo-dir demo_out --out study_right_head \
        [--pretrain-steps 150] [--finetune-steps 400] [--n-jets 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SHOWN = ("mass", "multiplicity", "tau21", "tau32", "d2", "zg", "rg", "n_primary")


def jetevo(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "jetevo.cli", *args], check=True, stdout=subprocess.DEVNULL
    )


def run_head(head: str, demo: Path, out: Path, args) -> dict:
    tokens = demo / "tokens"
    heldout = demo / "trees" / "TTBar_000.0001.trees.parquet"
    t0 = time.perf_counter()
    override = f"model.right_head={head}"
    jetevo(
        "train", "--config", "configs/tree_demo.yaml", "--out", str(out / "pretrain"), "--quiet",
        "--train", str(tokens / "RunG_batch0.0000.trees.parquet"),
        "--val", str(tokens / "RunG_batch0.0001.trees.parquet"),
        override, f"train.max_steps={args.pretrain_steps}",
    )  # fmt: skip
    jetevo(
        "train", "--config", "configs/tree_demo_finetune.yaml", "--out", str(out / "finetune"),
        "--quiet", "--init-from", str(out / "pretrain" / "model.ckpt"),
        "--train", str(tokens / "TTBar_000.0000.trees.parquet"),
        "--val", str(tokens / "ZJetsToNuNu_000.0001.trees.parquet"),
        override, f"train.max_steps={args.finetune_steps}",
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    ckpt = str(out / "finetune" / "model.ckpt")
    jetevo("evaluate-splits", "--ckpt", ckpt, "--tokens", str(tokens / "TTBar_000.0001.trees.parquet"),
           "--json", str(out / "splits.json"))  # fmt: skip
    jetevo("generate", "--ckpt", ckpt, "--n-jets", str(args.n_jets), "--seed", "1",
           "--out", str(out / "generated"), "--quiet")  # fmt: skip
    jetevo("evaluate", "--generated", str(out / "generated"), "--reference", str(heldout),
           "--out", str(out / "evaluate"), "--massless", "--no-plots")  # fmt: skip
    splits = json.loads((out / "splits.json").read_text())
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    return {"train_s": round(train_s, 1), "splits": splits, "metrics": metrics}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--pretrain-steps", type=int, default=150)
    ap.add_argument("--finetune-steps", type=int, default=400)
    ap.add_argument("--n-jets", type=int, default=1000)
    args = ap.parse_args()
    results = {h: run_head(h, args.demo_dir, args.out / h, args) for h in ("context", "left-child")}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print("| | " + " | ".join(results) + " |\n|---|" + "---|" * len(results))
    print(
        "| held-out split NLL | "
        + " | ".join(f"{r['splits']['nll']:.3f}" for r in results.values())
        + " |"
    )
    for name in SHOWN:
        cells = []
        for r in results.values():
            m = r["metrics"]["observables"][name]
            cells.append(f"{m['w1']:.3g} ({m['w1'] / m['w1_floor']:.1f}x)")
        print(f"| W1 {name} | " + " | ".join(cells) + " |")
    print(
        "| runaway fraction | "
        + " | ".join(
            f"{r['metrics']['generation']['runaway_fraction']:.4f}" for r in results.values()
        )
        + " |"
    )
    print(
        "| training time [s] | "
        + " | ".join(f"{r['train_s']:.0f}" for r in results.values())
        + " |"
    )


if __name__ == "__main__":
    main()
