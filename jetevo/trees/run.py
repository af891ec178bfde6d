"""File-level reclustering: shards, worker processes, resume, atomic outputs, summary.

Each input file is cut into shards of ``shard_size`` jets; each shard becomes one Parquet
file written under a temporary name and renamed when complete, so an existing output is
always complete and a rerun skips it (resume). The counts of each shard travel in its
Parquet metadata, which lets a resumed run still report every jet.

A run folder remembers what its run was started with (``recluster_run.json``: settings,
shard size, inputs); a rerun resumes only the same run, and refuses a folder holding tree
files of another. A shard that fails (a damaged file) is reported in ``summary.json`` with
its reason while every other shard is still written, with one worker or many.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

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


def pipeline_pays(workers: int) -> bool:
    """The threaded pipeline of :func:`process_shard` uses idle cores; without any, running
    the steps one after another costs less CPU. Cores are those this process may run on
    (a SLURM or container CPU set), not the machine's."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return workers < (cores or 1)


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
) -> dict:
    """Recluster JetClass/AOJ files into tree files in ``out_dir``; write and return the summary.

    ``pipeline``: whether each worker runs the threaded pipeline of :func:`process_shard`;
    None chooses it while cores outnumber workers (:func:`pipeline_pays`).
    """
    from tqdm import tqdm

    for name, value in (
        ("chunk size", chunk_size),
        ("shard size", shard_size),
        ("workers", workers),
    ):
        if value < 1:
            raise SettingError(f"{name} must be at least 1, got {value}")
    cfg = cfg or ReclusterConfig()
    run = prepare_run(inputs, out_dir, cfg, shard_size)
    todo = run.todo

    t0 = time.perf_counter()
    bar = tqdm(
        total=sum(s.stop - s.start for s in todo),
        unit="jet",
        disable=not progress or not todo,
        file=sys.stderr,
        desc="recluster",
    )

    def pipelined(n_workers: int) -> bool:
        return pipeline_pays(n_workers) if pipeline is None else pipeline

    new: Counter = Counter()
    failures = list(run.failures)
    if workers <= 1 or len(todo) <= 1:
        for s in todo:
            counts, failure = try_shard(s, cfg, chunk_size, bar.update, pipelined(1))
            new.update(counts)
            failures += failure
    else:
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {
                pool.submit(try_shard, s, cfg, chunk_size, None, pipelined(workers)): s
                for s in todo
            }
            for fut in as_completed(futures):
                counts, failure = fut.result()
                new.update(counts)
                failures += failure
                bar.update(futures[fut].stop - futures[fut].start)
    bar.close()
    wall = time.perf_counter() - t0
    return write_summary(
        run.out, cfg, run.files, run.shards, len(run.shards) - len(todo), new["jets_read"],
        workers, wall, failures,
    )  # fmt: skip


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
    clear what killed processes left behind. ``jetevo recluster`` and the Dask launcher
    share it."""
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


def try_shard(
    shard: Shard, cfg: ReclusterConfig, chunk_size: int, progress=None, pipeline: bool = True
) -> tuple[Counter, list[dict]]:
    """:func:`process_shard`, with a failure (a damaged input) returned as a record for the
    summary instead of raised, so that every other shard is still written."""
    try:
        return process_shard(shard, cfg, chunk_size, progress, pipeline), []
    except Exception as exc:
        reason = str(exc) if isinstance(exc, JetevoError) else f"{type(exc).__name__}: {exc}"
        return Counter(), [
            {"input": str(shard.source), "jets": [shard.start, shard.stop],
             "output": shard.output.name, "reason": reason.splitlines()[0] if reason else ""}
        ]  # fmt: skip


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
) -> dict:
    """Write ``summary.json``; raise :class:`ReclusterFailed` after it if shards failed.

    Counts come from the outputs' own metadata, so resumed shards are reported too. Every
    jet read is accounted for as a written tree, a counted skip or a counted drop; the
    function refuses to write a summary where that does not add up. ``failures``: the
    shards (or inputs) that could not be reclustered, each with its reason.
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
