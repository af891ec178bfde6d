"""Recluster many JetClass/AOJ files with Dask (one task per shard), e.g. on a SLURM cluster.

    python cluster/recluster_dask.py /data/JetClass/train_100M --out /scratch/trees \\
        --scheduler tcp://host:8786          # or --local-workers 16 for a LocalCluster

Tasks are the same shards that ``jetevo recluster`` makes, so outputs, resume and the
``summary.json`` are identical to a local run. Needs ``pip install jetevo[cluster]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from jetevo.cli import add_recluster_options, recluster_config
from jetevo.runtime import configure_process
from jetevo.trees.run import DEFAULT_CHUNK_SIZE, SUMMARY_KEYS, prepare_run, try_shard, write_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_recluster_options(ap)  # the same options as ``jetevo recluster``
    ap.add_argument("--scheduler", help="address of a running Dask scheduler")
    ap.add_argument(
        "--local-workers", type=int, default=4, help="LocalCluster size without --scheduler"
    )
    args = ap.parse_args()
    configure_process()

    from dask.distributed import Client, LocalCluster, as_completed

    cfg = recluster_config(args)
    chunk_size = DEFAULT_CHUNK_SIZE if args.chunk_size is None else args.chunk_size
    run = prepare_run(args.inputs, args.out, cfg, args.shard_size)  # as jetevo recluster
    client = (
        Client(args.scheduler)
        if args.scheduler
        else Client(LocalCluster(n_workers=args.local_workers, threads_per_worker=1))
    )
    t0 = time.perf_counter()
    # one single-threaded task per core: the threaded pipeline would only add CPU
    futures = client.map(
        try_shard, run.todo, cfg=cfg, chunk_size=chunk_size, pipeline=False, pure=False
    )
    jets, failures = 0, list(run.failures)
    for fut in as_completed(futures):
        counts, failure = fut.result()
        jets += counts["jets_read"]
        failures += failure
    summary = write_summary(
        run.out, cfg, run.files, run.shards, len(run.shards) - len(run.todo), jets,
        len(client.scheduler_info()["workers"]), time.perf_counter() - t0, failures,
    )  # fmt: skip
    print(json.dumps({k: summary[k] for k in SUMMARY_KEYS}))


if __name__ == "__main__":
    from jetevo.errors import JetevoError

    try:
        main()
    except JetevoError as err:  # as jetevo recluster: one line, exit 2
        print(f"recluster_dask: error: {err}", file=sys.stderr)
        sys.exit(2)
