"""Benchmark: jetevo's full recluster path against pure FastJet kt clustering, same jets.

(a) FastJet alone: awkward multi-event ``ClusterSequence`` (kt, R=0.8) + ``inclusive_jets()``
    over the jets already in memory (no history, no I/O);
(b) jetevo: read the JetClass file -> trees -> Parquet (``recluster_files``), 1 and N workers.

The jets are simulated top jets (Pythia, cached under --work); to get a sample large enough
to time without hours of Pythia, copies of them are rotated by random azimuths.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import awkward as ak
import numpy as np


def make_sample(work: Path, n_sim: int, copies: int, seed: int) -> Path:
    from jetevo.io.readers import iter_jets
    from jetevo.io.simulate import simulate
    from jetevo.io.writers import write_jetclass

    target = work / f"TTBar_{n_sim}x{copies}.root"
    if target.exists():
        return target
    src = simulate("top", n_sim, work / "sim", seed=seed, workers=2, progress=False)
    jets = ak.concatenate(list(iter_jets(src)))
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(copies):
        a = rng.uniform(-np.pi, np.pi, len(jets))
        c, s = np.cos(a), np.sin(a)
        parts.append(
            ak.zip(
                {
                    "px": jets.px * c - jets.py * s, "py": jets.px * s + jets.py * c,
                    "pz": jets.pz, "E": jets.E, "charge": jets.charge, "pid": jets.pid,
                    "jet_pt": jets.jet_pt, "jet_eta": jets.jet_eta,
                    "jet_phi": np.angle(np.exp(1j * (ak.to_numpy(jets.jet_phi) + a))),
                },
                depth_limit=1,
            )
        )  # fmt: skip
    write_jetclass(target, ak.concatenate(parts), "Tbqq")
    return target


def time_fastjet(path: Path, chunk_size: int) -> tuple[float, float, int]:
    import fastjet

    from jetevo.io.readers import iter_jets

    chunks = [
        ak.zip(
            {k: ak.values_astype(j[k], np.float64) for k in ("px", "py", "pz", "E")},
            with_name="Momentum4D",
        )
        for j in iter_jets(path, chunk_size)
    ]
    jetdef = fastjet.JetDefinition(fastjet.kt_algorithm, 0.8)
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for c in chunks:
        cs = fastjet.ClusterSequence(c, jetdef)
        cs.inclusive_jets()
        n += len(c)
    return time.perf_counter() - t0, time.process_time() - c0, n


def time_jetevo(
    path: Path, out: Path, workers: int, chunk_size: int, shard_size: int, pipeline=None
) -> tuple[float, dict]:
    from jetevo.trees.run import recluster_files

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = recluster_files(
        [path], out, workers=workers, chunk_size=chunk_size, shard_size=shard_size,
        progress=False, pipeline=pipeline,
    )  # fmt: skip
    return time.perf_counter() - t0, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench_out/recluster"))
    ap.add_argument("--n-sim", type=int, default=1000, help="Pythia top jets to simulate")
    ap.add_argument("--copies", type=int, default=20, help="rotated copies of each jet")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = make_sample(args.work, args.n_sim, args.copies, args.seed)
    n_jets = args.n_sim * args.copies
    shard = -(-n_jets // args.workers)  # the same shards for the 1-worker and N-worker runs

    time_jetevo(path, args.work / "warmup", 1, args.chunk_size, n_jets)  # numba cache, imports
    # best of --repeat, interleaved, so that a busy moment of the machine hits neither side alone
    # CPU seconds (all threads of this process) as well, less sensitive to a shared machine
    t_fj = t1 = tn = t_seq = cpu_fj = cpu_1 = cpu_seq = float("inf")
    for _ in range(args.repeat):
        t, cpu, n = time_fastjet(path, args.chunk_size)
        cpu_fj = min(cpu_fj, cpu)
        t_fj = min(t_fj, t)
        c0 = time.process_time()
        t, summary = time_jetevo(path, args.work / "trees1", 1, args.chunk_size, shard)
        cpu_1 = min(cpu_1, time.process_time() - c0)
        t1 = min(t1, t)
        t, _ = time_jetevo(
            path, args.work / f"trees{args.workers}", args.workers, args.chunk_size, shard
        )
        tn = min(tn, t)
        c0 = time.process_time()
        t, _ = time_jetevo(path, args.work / "trees_seq", 1, args.chunk_size, shard, False)
        cpu_seq = min(cpu_seq, time.process_time() - c0)
        t_seq = min(t_seq, t)
    from jetevo.io.readers import iter_jets

    mean_n = float(
        np.mean(
            np.concatenate([ak.to_numpy(ak.num(j.px)) for j in iter_jets(path, args.chunk_size)])
        )
    )
    result = {
        "jets": n,
        "mean_constituents": round(mean_n, 1),
        "fastjet_jets_per_s": round(n / t_fj, 1),
        "jetevo_jets_per_s": round(n / t1, 1),
        "ratio": round(t_fj / t1, 3),
        "workers": args.workers,
        f"jetevo_{args.workers}_workers_jets_per_s": round(n / tn, 1),
        "worker_speedup": round(t1 / tn, 3),
        # 1 worker alone pipelines over both cores; without that (as each of N >= cores
        # workers runs), this is how N workers scale
        "jetevo_sequential_jets_per_s": round(n / t_seq, 1),
        "worker_scaling_vs_sequential": round(t_seq / tn, 3),
        "jetevo_sequential_cpu_s": round(cpu_seq, 3),
        "fastjet_cpu_s": round(cpu_fj, 3),
        "jetevo_cpu_s": round(cpu_1, 3),
        "cpu_ratio": round(cpu_fj / cpu_1, 3),
        "trees_written": summary["trees_written"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
