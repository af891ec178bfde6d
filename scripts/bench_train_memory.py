"""Peak memory of ``jetevo train`` against the size of the training data (streaming).

Makes one small token file (simulated AOJ-like jets, a tiny tokenizer), replicates it to a
base file of ``--base`` jets (row groups of ``--row-group`` jets), and lists that file
many times through symbolic links to reach each size of ``--jets``: a million jets cost
one base file on disk. Each size is trained for ``--steps`` steps of a tiny model on the
CPU in a subprocess of its own, which reports its peak resident memory
(``resource.getrusage``, the training process; no DataLoader workers). The count baselines
and the resolution scale are fitted on ``train.stats_jets`` jets and each reader holds one
shuffle window of ``train.shuffle_buffer`` jets, so the peak must not grow with the data
beyond those. Prints one JSON object.

    python scripts/bench_train_memory.py                  # 1k and 1M jets
    python scripts/bench_train_memory.py --jets 1000,100000 --steps 20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = (
    "model: {{n_layer: 2, n_head: 4, n_embd: 64, max_len: 128}}\n"
    "train: {{max_steps: {steps}, batch_size: 64, val_every: {steps}, val_batches: 4, "
    "warmup_steps: 5}}\n"
)
CHILD = (
    "import json, resource, sys, time\n"
    "from jetevo.cli import main\n"
    "t0 = time.perf_counter()\n"
    "rc = main(sys.argv[1:])\n"
    "print(json.dumps({'rc': rc, 'wall_s': round(time.perf_counter() - t0, 1),\n"
    "    'peak_rss_mib': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))\n"
)


def base_tokens(work: Path, base: int, row_group: int) -> None:
    """``WORK/base.trees.parquet``: a token file of ``base`` jets in row groups of
    ``row_group``, and its tokenizer ``WORK/tok.ckpt``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jetevo.io.simulate import simulate
    from jetevo.tokenize.tokenizer import TokenizerConfig
    from jetevo.tokenize.tokens import encode_files
    from jetevo.tokenize.train import train_tokenizer
    from jetevo.trees.run import recluster_files

    simulate("qcd-wide", 500, work / "sim", seed=7, progress=False)
    recluster_files([work / "sim"], work / "trees", progress=False)
    cfg = TokenizerConfig(
        n_codes=64, hidden=16, max_steps=5, batch_size=256, kmeans_sample=5000, kmeans_iters=5
    )
    tok = train_tokenizer(
        [work / "trees"], work / "tok.ckpt", cfg, progress=False, log=lambda *a: None
    )
    (small,) = encode_files(tok, [work / "trees"], work / "small")
    table = pq.read_table(small)
    table = pa.concat_tables([table] * math.ceil(base / table.num_rows)).slice(0, base)
    pq.write_table(table, work / "base.trees.parquet", row_group_size=row_group, compression="lz4")


def dataset(work: Path, base: Path, n_jets: int, per_file: int) -> Path:
    """A folder of ``n_jets`` jets: links to the base file (a shorter copy for a remainder)."""
    import pyarrow.parquet as pq

    d = work / f"jets_{n_jets}"
    d.mkdir()
    full, rest = divmod(n_jets, per_file)
    for i in range(full):
        os.symlink(base, d / f"part{i:05d}.trees.parquet")
    if rest:
        pq.write_table(pq.read_table(base).slice(0, rest), d / "rest.trees.parquet")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jets", default="1000,1000000", help="comma-separated dataset sizes")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--base", type=int, default=10_000, help="jets of the replicated file")
    ap.add_argument("--row-group", type=int, default=2_000)
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # the child
    ap.add_argument("overrides", nargs="*", help="jetevo train overrides, e.g. train.num_workers=2")
    args = ap.parse_args()
    if args.prepare:  # in a child process: FastJet's banner does not reach our stdout
        base_tokens(Path(args.work), args.base, args.row_group)
        return
    sizes = [int(v) for v in args.jets.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        prepare = [sys.executable, __file__, "--prepare", "--work", str(work),
                   "--base", str(args.base), "--row-group", str(args.row_group)]  # fmt: skip
        subprocess.run(prepare, check=True, stdout=subprocess.DEVNULL)
        base, tok = work / "base.trees.parquet", work / "tok.ckpt"
        cfg = work / "run.yaml"
        cfg.write_text(RUN.format(steps=args.steps))
        val = dataset(work, base, 1_000, args.base)
        runs = []
        for n in sizes:
            data = dataset(work, base, n, args.base) if n != 1_000 else val
            cmd = [sys.executable, "-c", CHILD, "train", "--config", str(cfg), "--train",
                   str(data), "--val", str(val), "--out", str(work / f"run_{n}"),
                   "--tokenizer", str(tok), "--quiet", *args.overrides]  # fmt: skip
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.exit(proc.stderr[-4000:])
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            runs.append({"jets": n, **result, "total_s": round(time.perf_counter() - t0, 1)})
    import torch

    print(
        json.dumps(
            {
                "device": f"cpu ({torch.get_num_threads()} threads)",
                "steps": args.steps,
                "model": "2 x 4 x 64, 64 codes",
                "batch_size": 64,
                "overrides": args.overrides,
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
