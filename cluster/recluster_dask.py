"""Recluster many JetClass/AOJ files with Dask: ``jetevo recluster`` with ``--dask-scheduler``
(or ``--dask local:N``), under this script's older option names.

    python cluster/recluster_dask.py /data/JetClass/train_100M --out /scratch/trees \\
        --scheduler tcp://host:8786          # or --local-workers 16 for a LocalCluster

is ``jetevo recluster /data/JetClass/train_100M --out /scratch/trees --dask-scheduler
tcp://host:8786``: the same shards, outputs, resume and ``summary.json``. Every other
option is passed to ``jetevo recluster`` (``jetevo recluster --help``). Needs
``pip install jetevo[cluster]``; on SLURM see ``cluster/slurm/recluster_dask.sbatch``.
"""

from __future__ import annotations

import argparse
import sys

from jetevo.cli import main as jetevo_main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(add_help=False)  # --help: jetevo recluster's
    ap.add_argument("--scheduler", help="address of a running Dask scheduler")
    ap.add_argument("--local-workers", default="4", help="LocalCluster size without --scheduler")
    ours, rest = ap.parse_known_args(argv)
    executor = (
        ["--dask-scheduler", ours.scheduler]
        if ours.scheduler
        else ["--dask", f"local:{ours.local_workers}"]
    )
    return jetevo_main(["recluster", *rest, *executor])


if __name__ == "__main__":
    sys.exit(main())
