"""Recluster many JetClass/AOJ files with Dask (one task per shard), e.g. on a SLURM cluster.

    python cluster/recluster_dask.py /data/JetClass/train_100M --out /scratch/trees \\
        --scheduler tcp://host:8786          # or --local-workers 16 for a LocalCluster

Tasks are the same shards that ``jetevo recluster`` makes, so outputs, resume and the
``summary.json`` are identical to a local run. Needs ``pip install jetevo[cluster]``.
"""

from __future__ import annotations

import argparse
import json
import time

from jetevo.io.atomic import ensure_writable_dir
from jetevo.trees.recluster import ReclusterConfig
from jetevo.trees.run import (
    DEFAULT_CHUNK_SIZE,
    input_files,
    plan_shards,
    process_shard,
    write_summary,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--scheduler", help="address of a running Dask scheduler")
    ap.add_argument(
        "--local-workers", type=int, default=4, help="LocalCluster size without --scheduler"
    )
    ap.add_argument("--R", type=float, default=0.8)
    ap.add_argument("--scheme", choices=("E", "wta_pt"), default="E")
    ap.add_argument("--on-split", choices=("merge", "hardest", "drop"), default="merge")
    ap.add_argument("--max-constituents", type=int, default=128)
    ap.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    ap.add_argument("--shard-size", type=int, default=100_000)
    args = ap.parse_args()

    from dask.distributed import Client, LocalCluster, as_completed

    cfg = ReclusterConfig(
        R=args.R, scheme=args.scheme, on_split=args.on_split, max_constituents=args.max_constituents
    )
    out = ensure_writable_dir(args.out)
    files = input_files(args.inputs)
    shards = plan_shards(files, out, args.shard_size)
    todo = [s for s in shards if not s.output.exists()]
    client = (
        Client(args.scheduler)
        if args.scheduler
        else Client(LocalCluster(n_workers=args.local_workers, threads_per_worker=1))
    )
    t0 = time.perf_counter()
    # one single-threaded task per core: the threaded pipeline would only add CPU
    futures = client.map(
        process_shard, todo, cfg=cfg, chunk_size=args.chunk_size, pipeline=False, pure=False
    )
    jets = 0
    for fut in as_completed(futures):
        jets += fut.result()["jets_read"]
    summary = write_summary(
        out,
        cfg,
        files,
        shards,
        len(shards) - len(todo),
        jets,
        len(client.scheduler_info()["workers"]),
        time.perf_counter() - t0,
    )
    print(
        json.dumps(
            {
                k: summary[k]
                for k in ("jets_read", "trees_written", "skipped", "dropped", "jets_per_s")
            }
        )
    )


if __name__ == "__main__":
    main()
