"""Recluster a dataset on SLURM: start a dask-jobqueue SLURMCluster, then run
``jetevo recluster ... --dask-scheduler <its address>`` against it.

    python cluster/slurm/recluster_dask_jobqueue.py --account A --partition P --cores 32 \\
        --memory 64GB --jobs 4 --walltime 04:00:00 -- /data/JetClass --out /scratch/trees

This process runs the Dask scheduler; each of the ``--jobs`` SLURM jobs runs ``--cores``
one-thread worker processes (one shard at a time each). Everything after ``--`` is
``jetevo recluster``'s (inputs, ``--out``, settings), so the run is the one that command
makes: the same shards, outputs, resume and ``summary.json``; resubmitting resumes.
``--dry-run`` prints the worker job script and the command, submitting nothing.
Needs ``pip install jetevo[cluster] dask-jobqueue``; usually started by
``cluster/slurm/recluster_dask.sbatch``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from jetevo.cli import main as jetevo_main


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The launcher's own options, and ``jetevo recluster``'s after ``--``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--account", help="SLURM account of the worker jobs (sbatch -A)")
    ap.add_argument("--partition", help="SLURM partition of the worker jobs (sbatch -p)")
    ap.add_argument("--cores", type=int, default=32, help="cores per worker job (default 32)")
    ap.add_argument("--memory", default="64GB", help="memory per worker job (default 64GB)")
    ap.add_argument("--jobs", type=int, default=4, help="worker jobs (default 4)")
    ap.add_argument("--walltime", default="04:00:00", help="walltime of each worker job")
    ap.add_argument("--interface", help="network interface of workers and scheduler, e.g. ib0")
    ap.add_argument("--local-directory", help="node-local scratch for the workers, e.g. $TMPDIR")
    ap.add_argument("--log-directory", help="folder for the worker jobs' SLURM logs")
    ap.add_argument("--dry-run", action="store_true", help="print the job script, submit nothing")
    args = ap.parse_args(argv[:split])
    for name in ("cores", "jobs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    recluster = argv[split + 1 :]
    if not recluster:
        ap.error("give jetevo recluster's inputs and --out after --")
    return args, recluster


def main(argv: list[str] | None = None) -> int:
    args, recluster = parse(argv)
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        print(
            "recluster_dask_jobqueue: error: needs dask-jobqueue: pip install dask-jobqueue",
            file=sys.stderr,
        )
        return 2
    # one-thread worker processes, one per core: each runs one shard at a time
    cluster = SLURMCluster(
        queue=args.partition,
        account=args.account,
        cores=args.cores,
        processes=args.cores,
        memory=args.memory,
        walltime=args.walltime,
        interface=args.interface,
        local_directory=args.local_directory,
        log_directory=args.log_directory,
        job_name="jetevo-recluster-worker",
    )
    with cluster:
        command = ["recluster", *recluster, "--dask-scheduler", cluster.scheduler_address]
        if args.dry_run:
            print(cluster.job_script())
            print("jetevo " + shlex.join(command))
            return 0
        cluster.scale(jobs=args.jobs)  # tasks wait on the scheduler until workers arrive
        return jetevo_main(command)


if __name__ == "__main__":
    sys.exit(main())
