"""What a larger CPU budget buys: more simulated jets and more training steps than the demo.

Uses a finished ``make demo`` for its tokenizer and its held-out tops (the reference), and
simulates fresh, larger samples with other seeds: AOJ-layout QCD for pretraining, top jets
for fine-tuning (plus a few QCD jets for validation). Then pretrain, fine-tune (demo configs,
more steps), evaluate-splits on the demo's held-out tops, generate and evaluate on massless
particles, also for the bigram reference generator. Writes ``OUT/results.json``.

    python scripts/study_budget.py --demo-dir demo_out --out study_budget \
        [--n-jets 5000] [--pretrain-steps 1500] [--finetune-steps 3000] [--n-gen 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def jetevo(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "jetevo.cli", *args], check=True, stdout=subprocess.DEVNULL
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--n-jets", type=int, default=5000)
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--finetune-steps", type=int, default=3000)
    ap.add_argument("--n-gen", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    demo, out = args.demo_dir, args.out
    tok = demo / "tokenizer" / "tok.ckpt"
    heldout_trees = demo / "trees" / "TTBar_000.0001.trees.parquet"
    heldout_tokens = demo / "tokens" / "TTBar_000.0001.trees.parquet"
    times = {}
    t0 = time.perf_counter()
    n, w = str(args.n_jets), str(args.workers)
    jetevo("simulate", "--process", "top", "--n-jets", n, "--seed", "21", "--index", "1",
           "--out", str(out / "jetclass"), "--workers", w, "--quiet")  # fmt: skip
    jetevo("simulate", "--process", "qcd", "--n-jets", "500", "--seed", "22", "--index", "1",
           "--out", str(out / "jetclass"), "--workers", w, "--quiet")  # fmt: skip
    jetevo("simulate", "--process", "qcd-wide", "--n-jets", n, "--seed", "23", "--index", "1",
           "--out", str(out / "aoj"), "--workers", w, "--quiet")  # fmt: skip
    jetevo("recluster", str(out / "jetclass"), str(out / "aoj"), "--out", str(out / "trees"),
           "--workers", w, "--quiet")  # fmt: skip
    jetevo("tokenizer", "encode", "--ckpt", str(tok), "--trees", str(out / "trees"),
           "--out", str(out / "tokens"))  # fmt: skip
    times["data_s"] = time.perf_counter() - t0
    tokens = {p.name.split(".")[0]: p for p in sorted((out / "tokens").glob("*.parquet"))}
    t0 = time.perf_counter()
    jetevo("train", "--config", "configs/tree_demo.yaml", "--out", str(out / "pretrain"), "--quiet",
           "--train", str(tokens["RunG_batch1"]), "--val", str(demo / "tokens" / "RunG_batch0.0001.trees.parquet"),
           f"train.max_steps={args.pretrain_steps}", "train.val_every=250")  # fmt: skip
    times["pretrain_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    jetevo("train", "--config", "configs/tree_demo_finetune.yaml", "--out", str(out / "finetune"),
           "--quiet", "--init-from", str(out / "pretrain" / "model.ckpt"),
           "--train", str(tokens["TTBar_001"]), "--val", str(tokens["ZJetsToNuNu_001"]),
           f"train.max_steps={args.finetune_steps}", "train.val_every=250")  # fmt: skip
    times["finetune_s"] = time.perf_counter() - t0
    ckpt = str(out / "finetune" / "model.ckpt")
    jetevo(
        "evaluate-splits",
        "--ckpt",
        ckpt,
        "--tokens",
        str(heldout_tokens),
        "--json",
        str(out / "splits.json"),
    )
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "times": times}
    for name, extra in (("transformer", []), ("bigram", ["--baseline", "bigram"])):
        jetevo("generate", "--ckpt", ckpt, "--n-jets", str(args.n_gen), "--seed", "1",
               "--out", str(out / f"generated_{name}"), "--quiet", *extra)  # fmt: skip
        jetevo("evaluate", "--generated", str(out / f"generated_{name}"), "--reference", str(heldout_trees),
               "--out", str(out / f"evaluate_{name}"), "--massless", "--no-plots")  # fmt: skip
        result[name] = json.loads((out / f"evaluate_{name}" / "metrics.json").read_text())
    result["splits"] = json.loads((out / "splits.json").read_text())
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(times))
    print(f"split nll {result['splits']['nll']:.3f} (bigram {result['splits']['bigram_nll']:.3f})")
    for name in ("mass", "multiplicity", "tau21", "tau32", "d2", "zg", "rg", "n_primary"):
        cells = []
        for gen in ("transformer", "bigram"):
            m = result[gen]["observables"][name]
            cells.append(f"{gen} {m['w1']:.3g} ({m['w1'] / m['w1_floor']:.1f}x)")
        print(f"{name:>12}: " + "  ".join(cells))


if __name__ == "__main__":
    main()
