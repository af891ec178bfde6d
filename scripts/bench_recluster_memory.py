"""Benchmark: peak memory of reclustering one AOJ-sized file (2.2M jets by default).

An AspenOpenJets file holds about 2.2M jets. The 100 real CMS jets of
``tests/data/2016H_job0_mini.h5`` are replicated (rotated by random azimuths) into a file of
that size in the real layout (PFCands zero-padded to 150 x 11, gzip, chunked by jets), which
``jetevo recluster`` then processes in a child process; its peak resident memory (the
child's ``ru_maxrss``, workers included) must not grow with the file: the reader streams
chunks, each shard is written chunk by chunk. Prints one JSON object.

    python scripts/bench_recluster_memory.py [--jets 2200000] [--workers 1] [--work bench_out]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

REAL_AOJ = Path(__file__).resolve().parents[1] / "tests" / "data" / "2016H_job0_mini.h5"
BLOCK = 20_000  # jets written per h5py call


def make_file(path: Path, n_jets: int, seed: int = 0) -> Path:
    """``n_jets`` real jets (copies rotated in azimuth), AOJ layout, written in blocks."""
    if path.exists():
        with h5py.File(path) as f:
            if f["PFCands"].shape[0] == n_jets:
                return path
    with h5py.File(REAL_AOJ) as src:
        cands = src["PFCands"][()]
        kin = src["jet_kinematics"][()]
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".partial")
    with h5py.File(tmp, "w") as f:
        opts = {"compression": "gzip", "chunks": (100, cands.shape[1], cands.shape[2])}
        pf = f.create_dataset("PFCands", (n_jets, *cands.shape[1:]), cands.dtype, **opts)
        jk = f.create_dataset("jet_kinematics", (n_jets, kin.shape[1]), kin.dtype)
        for start in range(0, n_jets, BLOCK):
            n = min(BLOCK, n_jets - start)
            pick = np.arange(start, start + n) % len(cands)
            block = cands[pick].copy()
            a = rng.uniform(-np.pi, np.pi, n)[:, None]
            px, py = block[:, :, 0].copy(), block[:, :, 1].copy()
            block[:, :, 0] = px * np.cos(a) - py * np.sin(a)
            block[:, :, 1] = px * np.sin(a) + py * np.cos(a)
            pf[start : start + n] = block
            jk[start : start + n] = kin[pick]
    tmp.rename(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--jets", type=int, default=2_200_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work", default="bench_out/recluster_memory")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    src = make_file(work / f"RunG_batch{args.jets}.h5", args.jets)
    made = time.perf_counter() - t0
    out = work / "trees"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    t1 = time.perf_counter()
    cmd = [sys.executable, "-m", "jetevo.cli", "recluster", str(src), "--out", str(out),
           "--workers", str(args.workers), "--quiet"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t1
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads(run.stdout) if run.returncode == 0 else {"error": run.stderr[-500:]}
    print(
        json.dumps(
            {
                "benchmark": "recluster_memory",
                "jets": args.jets,
                "workers": args.workers,
                "file_gb": round(src.stat().st_size / 1e9, 3),
                "make_file_s": round(made, 1),
                "recluster_s": round(wall, 1),
                "peak_rss_gb": round(peak_kib / 2**20, 3),
                "target_gb": 2.0,
                "trees_written": summary.get("trees_written"),
                "jets_per_s": summary.get("jets_per_s"),
                **({"error": summary["error"]} if "error" in summary else {}),
            }
        )
    )


if __name__ == "__main__":
    main()
