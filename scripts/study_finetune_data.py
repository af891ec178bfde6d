"""How much data does fine-tuning need? Held-out split NLL and generated-jet physics vs the
number of fine-tuning jets.

For each N, the model is trained on the first N jets of ``--train`` twice with the same
config and steps: once from a pretrained checkpoint (``--pretrained``, e.g. the AOJ-like QCD
pretraining of ``make demo``) and once from scratch; both are scored with
``evaluate-splits`` on ``--heldout``, and each generates ``--generate`` jets (seeded) whose
W1 distances to the held-out jets (token files are tree files) are reported for mass, τ21,
τ32 and R_g, next to their truth-vs-truth floors. Prints one JSON line per N and a summary
JSON object (and keeps the runs in --work).

    python scripts/study_finetune_data.py --pretrained demo_out/model/pretrain/model.ckpt \\
        --train demo_out/tokens/TTBar_000.0000.trees.parquet \\
        --heldout demo_out/tokens/TTBar_000.0001.trees.parquet --sizes 50,150,500 \\
        train.max_steps=100 train.split_weights=null   # docs/results/earlier_evaluation.md
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jetevo.trees.writer import write_table

PHYSICS = ("mass", "tau21", "tau32", "rg")


def subset(files: list[Path], n: int, out: Path) -> Path:
    """The first ``n`` jets of token files, as one token file (schema metadata kept)."""
    tables, left = [], n
    for f in files:
        if left <= 0:
            break
        t = pq.read_table(f)
        tables.append(t.slice(0, left))
        left -= min(left, t.num_rows)
    if left > 0:
        raise SystemExit(f"{files[0]}: only {n - left} jets available, {n} requested")
    table = pa.concat_tables(tables)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"first{n}.trees.parquet"
    write_table(table, path)  # atomic, the project's Parquet options
    return path


def main() -> None:
    from jetevo.config import load_config
    from jetevo.evaluate import evaluate
    from jetevo.generate import GenerationError, generate
    from jetevo.model.splits import evaluate_splits
    from jetevo.model.train import train
    from jetevo.runtime import configure_process
    from jetevo.trees.format import tree_files

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrained", required=True)
    ap.add_argument("--train", nargs="+", required=True)
    ap.add_argument("--heldout", nargs="+", required=True)
    ap.add_argument("--config", default="configs/tree_demo_finetune.yaml")
    ap.add_argument("--sizes", default="50,150,500")
    ap.add_argument("--work", type=Path, default=Path("bench_out/finetune_study"))
    ap.add_argument("--generate", type=int, default=500, help="jets generated per run (0: none)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. train.max_steps=100")
    args = ap.parse_args()
    configure_process(quiet=True)
    files = tree_files(args.train)
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        data = subset(files, n, args.work / "data")
        row = {"n_jets": n}
        for name, init in (("pretrained", args.pretrained), ("scratch", None)):
            overrides = [
                *args.overrides,
                f"train.init_from={init}" if init else "train.init_from=null",
            ]
            cfg = load_config(args.config, overrides)
            run = args.work / f"{name}_{n}"
            shutil.rmtree(run, ignore_errors=True)  # a fresh run, not a resumed one
            ckpt = train(cfg, [data], args.heldout, run, progress=False, log=lambda *a: None)
            s = evaluate_splits(ckpt, args.heldout)
            row[f"{name}_nll"] = round(s["nll"], 4)
            row["bigram_nll"] = round(s["bigram_nll"], 4)
            if args.generate:
                gen = run / "generated"
                try:
                    generate(ckpt, args.generate, gen, seed=1, progress=False)
                except GenerationError as exc:  # too many runaway trees: a result, not a crash
                    row[f"{name}_generation_failed"] = str(exc)
                    continue
                m = evaluate(gen, args.heldout, run / "evaluate", plots=False)["observables"]
                for obs in PHYSICS:
                    row[f"{name}_w1_{obs}"] = round(m[obs]["w1"], 4)
                    row[f"w1_floor_{obs}"] = round(m[obs]["w1_floor"], 4)
        results.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"config": args.config, "overrides": args.overrides, "results": results}))


if __name__ == "__main__":
    main()
