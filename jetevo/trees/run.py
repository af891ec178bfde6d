"""File-level reclustering: shards, executors, resume, atomic outputs, summary.

Each input file is cut into shards of ``shard_size`` jets; each shard becomes one Parquet
file written under a temporary name and renamed when complete, so an existing output is
always complete and a rerun skips it (resume). The counts of each shard travel in its
Parquet metadata, which lets a resumed run still report every jet.

A run folder remembers what its run was started with (``recluster_run.json``: settings,
shard size, inputs); a rerun resumes only the same run, and refuses a folder holding tree
files of another. A shard that fails (a damaged file) is reported in ``summary.json`` with
its reason while every other shard is still written, with one worker or many.

The executor (this process, a pool of worker processes, or Dask tasks on a LocalCluster or
a running scheduler) is the only thing that differs between runs: every one runs
:func:`run_shard` on the same planned shards, so their outputs are byte-identical.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import re
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from jetevo.errors import InputError, JetevoError, SettingError
from jetevo.io.atomic import ensure_writable_dir, remove_stale_temporaries, write_json
from jetevo.io.readers import count_jets, detect_format, iter_jets
from jetevo.trees.format import TREE_SUFFIX, read_metadata
from jetevo.trees.recluster import (
    SKIP_REASONS,
    ChunkInProgress,
    ReclusterConfig,
    cluster_chunk,
    finish_chunk,
    prepare_chunk,
)
from jetevo.trees.writer import TreeFileWriter

RUN_FILE = "recluster_run.json"
# attempts of a failing shard on Dask after the first (a damaged file fails them all; a
# flaky network file system may not)
DASK_RETRIES = 2
# jets per FastJet call: large enough that per-call costs vanish, small enough that the
# pipeline's last chunk (built and written after FastJet is done) is a small part of a shard
DEFAULT_CHUNK_SIZE = 5_000
COUNTS_KEY = b"jetevo_counts"
# the summary.json entries printed after a run (jetevo recluster, scripts/summarize_trees.py)
SUMMARY_KEYS = (
    "jets_read",
    "trees_written",
    "skipped",
    "dropped",
    "truncated",
    "split_jets",
    "jets_per_s",
)


@dataclass(frozen=True)
class Shard:
    source: Path
    start: int
    stop: int
    output: Path


class ReclusterFailed(JetevoError):
    """Some shards could not be reclustered; the others were written and the summary
    lists each failure with its reason."""


def input_files(inputs: list[str | Path]) -> list[Path]:
    """Files as given, plus the inputs inside given folders: files named ``.root``, ``.h5``
    or ``.hdf5`` in any case (a damaged one fails and is reported), and files of other names
    whose content is ROOT or HDF5. The same file reached twice (a symbolic link, a repeated
    argument) is read once."""
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if f.is_file() and not f.name.startswith(".") and _is_input(f)
            )
            if not found:
                raise InputError(p, "folder holds no ROOT or HDF5 files")
            files.extend(found)
        else:
            detect_format(p)  # one-line error for a missing or foreign file, before any work
            files.append(p)
    seen: set[Path] = set()
    unique = []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    files = unique
    stems = [f.stem for f in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise InputError(dupes[0], "two inputs share this file name; their outputs would collide")
    return files


INPUT_SUFFIXES = (".root", ".h5", ".hdf5")


def _is_input(path: Path) -> bool:
    """A named input (``.root``, ``.h5``, ``.hdf5``, any case: its problems are reported)
    or any other file whose content is ROOT or HDF5."""
    if path.suffix.lower() in INPUT_SUFFIXES:
        return True
    try:
        detect_format(path)
    except InputError:
        return False
    return True


def plan_shards(files: list[Path], out_dir: Path, shard_size: int) -> list[Shard]:
    shards = []
    for f in files:
        n = count_jets(f)
        if n == 0:
            raise InputError(f, "contains no jets")
        bounds = list(range(0, n, shard_size))
        for k, start in enumerate(bounds):
            name = (
                f"{f.stem}.trees.parquet" if len(bounds) == 1 else f"{f.stem}.{k:04d}.trees.parquet"
            )
            shards.append(Shard(f, start, min(start + shard_size, n), out_dir / name))
    return shards


def _prepared_chunks(shard: Shard, cfg: ReclusterConfig, chunk_size: int):
    """The shard's chunks, read and prepared for FastJet."""
    for jets in iter_jets(shard.source, chunk_size, shard.start, shard.stop, particle_ids=False):
        yield prepare_chunk(jets, cfg)


def process_shard(
    shard: Shard, cfg: ReclusterConfig, chunk_size: int, progress=None, pipeline: bool = True
) -> Counter:
    """Recluster one shard into its Parquet file; return its counts.

    ``pipeline``: this thread reads, prepares and runs FastJet on chunk k while a finisher
    thread builds the trees of chunk k-1 and encodes them to Parquet (numba and Arrow release
    the GIL; FastJet holds it for its whole call). Chunks are written in order. Without it
    the steps run one after another: less CPU in all, which is what counts when every core
    already runs a worker (:func:`pipeline_pays`).

    A third thread that read ahead was measured and dropped: uproot's Python between zlib
    calls waits for the GIL through each whole FastJet call, so reading and clustering
    serialized and the hand-overs cost more than the overlap gained.
    """
    counts: Counter = Counter()

    def collect(c: Counter) -> None:
        counts.update(c)
        if progress is not None:
            progress(c["jets_read"])

    with TreeFileWriter(shard.output) as out:

        def finish_and_write(chunk: ChunkInProgress) -> Counter:
            table, c = finish_chunk(chunk, cfg)
            out.write(table)
            return c

        chunks = _prepared_chunks(shard, cfg, chunk_size)
        if pipeline:
            _run_pipelined(chunks, cfg, finish_and_write, collect)
        else:
            for chunk in chunks:
                collect(finish_and_write(cluster_chunk(chunk, cfg)))
        out.add_metadata({COUNTS_KEY: json.dumps(dict(counts)).encode()})
    return counts


def _run_pipelined(chunks, cfg: ReclusterConfig, finish, collect) -> None:
    """This thread reads, prepares and runs FastJet; a finisher thread builds and writes the
    trees of the previous chunk meanwhile, in chunk order."""
    with ThreadPoolExecutor(1, thread_name_prefix="jetevo-finish") as finisher:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(finisher.submit(finish, cluster_chunk(chunk, cfg)))
            while len(pending) > 2:  # bounded memory: at most two chunks wait
                collect(pending.popleft().result())
        while pending:
            collect(pending.popleft().result())


def available_cores() -> int:
    """The cores this process may run on (a SLURM or container CPU set), not the machine's."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def pipeline_pays(workers: int) -> bool:
    """The threaded pipeline of :func:`process_shard` uses idle cores; without any, running
    the steps one after another costs less CPU."""
    return workers < available_cores()


def _shard_counts(path: Path) -> Counter:
    meta = pq.read_metadata(path).metadata or {}
    return Counter(json.loads(meta.get(COUNTS_KEY, b"{}")))


def recluster_files(
    inputs: list[str | Path],
    out_dir: str | Path,
    cfg: ReclusterConfig | None = None,
    workers: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    shard_size: int = 100_000,
    progress: bool = True,
    pipeline: bool | None = None,
    dask: Any = None,
    retries: int = DASK_RETRIES,
) -> dict:
    """Recluster JetClass/AOJ files into tree files in ``out_dir``; write and return the summary.

    The shards run one after another (``workers=1``), in a pool of ``workers`` processes,
    or as Dask tasks: ``dask`` is ``"local"``/``"local:N"`` (a LocalCluster of N one-thread
    worker processes), a scheduler address, or a ``distributed.Client``; a failing task is
    retried ``retries`` times. Only the executor differs: the same shards, the same
    :func:`run_shard`, the same outputs, resume rules and summary.

    ``pipeline``: whether each worker runs the threaded pipeline of :func:`process_shard`;
    None chooses it while cores outnumber this machine's workers (:func:`pipeline_pays`).
    """
    from tqdm import tqdm

    for name, value in (
        ("chunk size", chunk_size),
        ("shard size", shard_size),
        ("workers", workers),
    ):
        if value < 1:
            raise SettingError(f"{name} must be at least 1, got {value}")
    if retries < 0:
        raise SettingError(f"retries must be at least 0, got {retries}")
    if dask is not None:
        _check_dask_setting(dask, workers)
    cfg = cfg or ReclusterConfig()
    run = prepare_run(inputs, out_dir, cfg, shard_size)
    new: Counter = Counter()
    failures = list(run.failures)
    with _executor(workers, dask, retries, run.todo) as executor:
        t0 = time.perf_counter()
        bar = tqdm(
            total=sum(s.stop - s.start for s in run.todo),
            unit="jet",
            disable=not progress or not run.todo,
            file=sys.stderr,
            desc="recluster",
        )
        use_pipeline = executor.pipeline if pipeline is None else pipeline
        work = partial(run_shard, cfg=cfg, chunk_size=chunk_size, pipeline=use_pipeline)
        finished = 0
        for shard, outcome in executor.results(work, run.todo, bar.update):
            finished += shard.stop - shard.start
            bar.update(finished - bar.n)  # the serial executor has counted chunk by chunk
            if isinstance(outcome, BaseException):
                failures.append(failure_record(shard, outcome))
            else:
                new.update(outcome)
        bar.close()
        wall = time.perf_counter() - t0
        slots = executor.slots() if isinstance(executor, _Dask) else workers
    remove_stale_temporaries(run.out)  # those of a worker killed mid-shard, whose retry wrote
    return write_summary(
        run.out, cfg, run.files, run.shards, len(run.shards) - len(run.todo), new["jets_read"],
        slots, wall, failures, executor.name,
    )  # fmt: skip


def _call(fn, *args, **kwargs):
    """``fn``'s result, or the exception it raised (to be reported, not to stop the run)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        return exc


class _Serial:
    """The shards one after another in this process; progress chunk by chunk."""

    name = "serial"

    def __init__(self) -> None:
        self.pipeline = pipeline_pays(1)

    def results(self, work, todo: list[Shard], progress) -> Iterator[tuple[Shard, object]]:
        for s in todo:
            yield s, _call(work, s, progress=progress)


class _Pool:
    """The shards in a pool of worker processes, as each completes."""

    name = "processes"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pipeline = pipeline_pays(workers)

    def results(self, work, todo: list[Shard], progress) -> Iterator[tuple[Shard, object]]:
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx) as pool:
            futures = {pool.submit(work, s): s for s in todo}
            for fut in as_completed(futures):
                # a worker killed mid-shard breaks the pool: its shards are failures to rerun
                yield futures.pop(fut), _call(fut.result)


class _Dask:
    """The shards as Dask tasks, as each completes. A task that raises is retried
    ``retries`` times; one whose worker dies is rerun elsewhere by the scheduler (after
    ``distributed.scheduler.allowed-failures`` deaths it ends as ``KilledWorker``: a
    failure like any other)."""

    name = "dask"

    def __init__(self, client, local: int | None, retries: int) -> None:
        self.client = client
        self.retries = retries
        # one task per one-thread worker: the pipeline pays only where this machine has
        # more cores than the LocalCluster's workers (a remote worker's cores are unknown)
        self.pipeline = pipeline_pays(local) if local else False

    def slots(self) -> int:
        return int(sum(self.client.nthreads().values()))

    def results(self, work, todo: list[Shard], progress) -> Iterator[tuple[Shard, object]]:
        from distributed import as_completed as completed

        run = uuid.uuid4().hex[:8]  # task names unique to this run on a shared scheduler
        # a remote worker runs in its own working directory: paths must not be relative
        futures = {
            self.client.submit(
                work, replace(s, source=s.source.absolute(), output=s.output.absolute()),
                key=f"jetevo-recluster-{s.output.name}-{run}", retries=self.retries, pure=False,
            ): s
            for s in todo
        }  # fmt: skip
        for fut in completed(list(futures)):
            yield futures.pop(fut), _call(fut.result)


@contextlib.contextmanager
def _executor(workers: int, dask, retries: int, todo: list[Shard]):
    """The executor of a run's shards: Dask if asked for (and there is work), else worker
    processes if there are several workers and shards, else this process."""
    if dask is not None and todo:
        with dask_client(dask) as client:
            yield _Dask(client, local_workers(dask) if isinstance(dask, str) else None, retries)
    elif workers <= 1 or len(todo) <= 1:
        yield _Serial()
    else:
        yield _Pool(workers)


LOCAL_DASK = re.compile(r"local(?::(.*))?")


def local_workers(setting: str) -> int | None:
    """The worker processes of a LocalCluster setting, ``local`` (one per core this process
    may use) or ``local:N``; None for anything else (a scheduler address)."""
    m = LOCAL_DASK.fullmatch(setting)
    if m is None:
        return None
    if m.group(1) is None:
        return available_cores()
    if not m.group(1).isdigit() or int(m.group(1)) < 1:
        raise SettingError(
            f"--dask {setting!r}: takes local or local:N, N at least 1 (worker processes)"
        )
    return int(m.group(1))


def _dask_option(dask) -> str:
    """The command-line option a ``dask`` setting comes from, to name it in errors."""
    if not isinstance(dask, str):
        return "a Dask client"
    return "--dask" if LOCAL_DASK.fullmatch(dask) else "--dask-scheduler"


def _check_dask_setting(dask, workers: int) -> None:
    """Before any work: Dask's workers replace ``--workers``; a LocalCluster size is a number."""
    if workers != 1:
        raise SettingError(
            f"--workers {workers} and {_dask_option(dask)} exclude each other: "
            "with Dask its workers run the shards"
        )
    if isinstance(dask, str):
        local_workers(dask)


@contextlib.contextmanager
def dask_client(dask) -> Iterator[Any]:
    """A ``distributed.Client`` for a ``dask`` setting: a client given is used as is (and
    left open); ``local``/``local:N`` starts a LocalCluster of one-thread worker processes,
    closed after; anything else is a scheduler address to connect to. dask is imported
    here only: jetevo works without the ``cluster`` extra."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise SettingError(
            f"{_dask_option(dask)} needs dask.distributed: pip install 'jetevo[cluster]'"
        ) from None
    if not isinstance(dask, str):
        yield dask
        return
    n = local_workers(dask)
    if n is not None:
        # worker logs at CRITICAL: a failed shard's reason reaches summary.json; no
        # dashboard, and the scheduler's HTTP routes on a free port (not a warning that
        # another cluster holds 8787)
        with LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"}, silence_logs=logging.CRITICAL,
        ) as cluster, Client(cluster) as client:  # fmt: skip
            yield client
        return
    try:
        client = Client(dask)  # timeout: dask's distributed.comm.timeouts.connect
    except Exception as exc:  # a malformed address, nothing listening, a timeout
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SettingError(f"--dask-scheduler {dask}: cannot connect ({reason})") from None
    with client:
        yield client


@dataclass
class Run:
    """A planned run: its folder, inputs, shards (planned), those still to do, and the
    inputs that could not even be planned (a damaged file), as failure records."""

    out: Path
    files: list[Path]
    shards: list[Shard]
    todo: list[Shard]
    failures: list[dict]


def prepare_run(inputs, out_dir, cfg: ReclusterConfig, shard_size: int) -> Run:
    """Plan a run into ``out_dir``: inputs, shards; refuse to resume another run's folder;
    clear what killed processes left behind."""
    out = ensure_writable_dir(out_dir)
    remove_stale_temporaries(out)
    files = input_files(inputs)
    shards: list[Shard] = []
    failures: list[dict] = []
    for f in files:
        try:
            shards += plan_shards([f], out, shard_size)
        except JetevoError as err:
            failures.append({"input": str(f), "reason": str(err)})
    _check_same_run(out, cfg, shard_size, files, shards)
    return Run(out, files, shards, [s for s in shards if not s.output.exists()], failures)


def _run_record(
    cfg: ReclusterConfig, shard_size: int, files: list[Path], shards: list[Shard]
) -> dict:
    """Settings, shard size, the inputs (by path, in any order) and the number of jets of
    each input that could be planned (so that a file rewritten with other jets is not taken
    for the same input; an input that failed may be repaired and retried)."""
    jets: dict[str, int] = {}
    for s in shards:
        key = str(s.source.resolve())
        jets[key] = max(jets.get(key, 0), s.stop)
    return {
        "config": cfg.metadata(),
        "shard_size": shard_size,
        "inputs": sorted(str(f.resolve()) for f in files),
        "jets": jets,
    }


def _same_run(old: dict, new: dict) -> bool:
    same = all(old.get(k) == new[k] for k in ("config", "shard_size", "inputs"))
    jets_old, jets_new = old.get("jets") or {}, new["jets"]
    return same and all(jets_old[k] == n for k, n in jets_new.items() if k in jets_old)


def _check_same_run(
    out: Path, cfg: ReclusterConfig, shard_size: int, files: list[Path], shards: list[Shard]
) -> None:
    """A folder holds one run: refuse settings, shard size or inputs other than those it
    was started with, and tree files that this run would not write."""
    record = _run_record(cfg, shard_size, files, shards)
    path = out / RUN_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            raise InputError(path, "unreadable run record; use another --out") from None
        if not isinstance(old, dict) or not _same_run(old, record):
            changed = _differences(old if isinstance(old, dict) else {}, record)
            raise InputError(
                out,
                f"holds a run started with other settings ({changed}); resuming would mix "
                "two runs: use another --out, or remove the folder to start again",
            )
    planned = {s.output.name for s in shards}
    foreign = sorted(f.name for f in out.glob(f"*{TREE_SUFFIX}") if f.name not in planned)
    if foreign:
        raise InputError(
            out,
            f"holds tree files this run would not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}): another run's; use another --out",
        )
    if not path.exists():
        _check_older_outputs(out, cfg, shards)
        write_json(path, record)


def _check_older_outputs(out: Path, cfg: ReclusterConfig, shards: list[Shard]) -> None:
    """Outputs without a run record (written before records existed) are resumed only if
    they were made with these settings."""
    for s in shards:
        if s.output.exists() and read_metadata(s.output) != cfg.metadata():
            changed = _differences({"config": read_metadata(s.output)}, {"config": cfg.metadata()})
            raise InputError(
                out, f"holds trees made with other settings ({changed}); use another --out"
            )


def _differences(old: dict, new: dict) -> str:
    parts = []
    for key in ("config", "shard_size", "inputs", "jets"):
        a, b = old.get(key), new.get(key)
        if key == "config" and isinstance(a, dict) and isinstance(b, dict):
            parts += [
                f"{k} {a.get(k)!r} -> {b.get(k)!r}"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        elif a != b:
            parts.append(f"{key} {'changed' if key in ('inputs', 'jets') else f'{a!r} -> {b!r}'}")
    return "; ".join(parts) or "an older record"


class ShardFailed(JetevoError):
    """A shard's failure as its summary record: raised where the shard ran (so that Dask
    retries it), always picklable whatever the original exception was."""

    def __init__(self, record: dict):
        self.record = record
        super().__init__(record["reason"])

    def __reduce__(self):
        return (type(self), (self.record,))


def run_shard(
    shard: Shard, cfg: ReclusterConfig, chunk_size: int, pipeline: bool = True, progress=None
) -> Counter:
    """:func:`process_shard`, with any failure (a damaged input) raised as
    :class:`ShardFailed`: the one callable that every executor runs."""
    try:
        return process_shard(shard, cfg, chunk_size, progress, pipeline)
    except Exception as exc:
        raise ShardFailed(failure_record(shard, exc)) from None


def failure_record(shard: Shard, exc: BaseException) -> dict:
    """The summary's record of a shard that failed: where it ran (:class:`ShardFailed`) or
    around it (a worker that died, a lost scheduler)."""
    if isinstance(exc, ShardFailed):
        return exc.record
    reason = str(exc) if isinstance(exc, JetevoError) else f"{type(exc).__name__}: {exc}"
    return {
        "input": str(shard.source), "jets": [shard.start, shard.stop],
        "output": shard.output.name, "reason": reason.splitlines()[0] if reason else "",
    }  # fmt: skip


def write_summary(
    out: Path,
    cfg: ReclusterConfig,
    files: list[Path],
    shards: list[Shard],
    n_resumed: int,
    jets_this_run: int,
    workers: int,
    wall: float,
    failures: list[dict] | None = None,
    executor: str = "serial",
) -> dict:
    """Write ``summary.json``; raise :class:`ReclusterFailed` after it if shards failed.

    Counts come from the outputs' own metadata, so resumed shards are reported too. Every
    jet read is accounted for as a written tree, a counted skip or a counted drop; the
    function refuses to write a summary where that does not add up. ``failures``: the
    shards (or inputs) that could not be reclustered, each with its reason. ``executor``:
    ``serial``, ``processes`` or ``dask`` (``workers``: Dask's worker threads).
    """
    failures = failures or []
    done = [s for s in shards if s.output.exists()]
    total: Counter = Counter()
    for s in done:
        total.update(_shard_counts(s.output))
    skipped = {r: int(total[f"skipped_{r}"]) for r in SKIP_REASONS}
    dropped = {"split": int(total["dropped_split"])}
    accounted = int(total["trees_written"]) + sum(skipped.values()) + sum(dropped.values())
    if accounted != int(total["jets_read"]):
        raise RuntimeError(
            f"jet accounting broken: read {total['jets_read']}, accounted {accounted}"
        )
    summary = {
        "jets_read": int(total["jets_read"]),
        "trees_written": int(total["trees_written"]),
        "skipped": skipped,
        "dropped": dropped,
        "truncated": {
            "jets": int(total["truncated_jets"]),
            "constituents": int(total["truncated_constituents"]),
        },
        # constituents with no transverse momentum to cluster (pT ~ 0: along the beam)
        "beam_constituents_dropped": int(total["beam_constituents"]),
        "split_jets": int(total["split_jets"]),
        "hardest_lost_constituents": int(total["hardest_lost_constituents"]),
        "config": cfg.metadata(),
        "inputs": [str(f) for f in files],
        "outputs": [s.output.name for s in done],
        "failed": failures,
        "jets_this_run": jets_this_run,
        "resumed_shards": n_resumed,
        "workers": workers,
        "executor": executor,
        "wall_s": round(wall, 3),
        "jets_per_s": round(jets_this_run / wall, 1) if wall > 0 and jets_this_run else None,
    }
    write_json(out / "summary.json", summary)
    if failures:
        raise ReclusterFailed(
            f"{out / 'summary.json'}: {len(failures)} shard(s) or input(s) failed, every other "
            f"shard was written; first: {failures[0]['reason']}"
        )
    return summary
