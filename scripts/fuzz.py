"""Fuzz every jetevo command with corrupted inputs: truncations, byte flips, zeroed ranges.

    python scripts/fuzz.py --minutes 10 [--seed 0] [--out fuzz_out]

Seed files (a JetClass ROOT file, an AOJ HDF5 file, tree and token Parquet files, a
tokenizer and a model checkpoint) are made once; each case corrupts one of them and runs the
commands that read it in this process. The only outcomes allowed: exit 0 with counts that
add up, or exit 2 with one line on stderr; never an exception out of ``jetevo.cli.main``,
never an output under its final name that cannot be read back. Prints a JSON summary; exits
1 if any case broke a rule (the cases are listed, each reproducible from its seed).
``tests/test_fuzz.py`` runs a small seeded number of cases in ``make test``.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL_AOJ = ROOT / "tests" / "data" / "2016H_job0_mini.h5"
CONFIGS = ROOT / "configs"
CASE_TIMEOUT_S = 120
TINY_TOKENIZER = [
    "n_codes=32", "hidden=16", "max_steps=3", "batch_size=256", "kmeans_sample=2000",
    "kmeans_iters=3",
]  # fmt: skip
TINY_MODEL = [
    "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.output_group_size=0",
    "train.max_steps=2", "train.batch_size=8", "train.val_every=2", "train.val_batches=1",
    "train.warmup_steps=1",
]  # fmt: skip


def _jetclass_jets(rng: np.random.Generator, n: int):
    import awkward as ak

    counts = rng.integers(3, 30, n)
    parts = []
    for k in counts:
        pt = rng.exponential(20.0, k) + 1.0
        eta, phi = rng.normal(0, 0.3, k), rng.normal(0, 0.3, k)
        parts.append(
            np.stack(
                [pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)], axis=1
            )
        )
    flat = np.concatenate(parts).astype(np.float32)
    fields = {k: ak.unflatten(flat[:, i], counts) for i, k in enumerate(("px", "py", "pz", "E"))}
    sums = np.array([p.sum(axis=0) for p in parts])
    pt = np.hypot(sums[:, 0], sums[:, 1])
    return ak.zip(
        {
            **fields,
            "charge": ak.unflatten(rng.choice([-1, 0, 1], len(flat)).astype(np.int8), counts),
            "pid": ak.unflatten(np.full(len(flat), 211, np.int32), counts),
            "jet_pt": pt.astype(np.float32),
            "jet_eta": np.arcsinh(sums[:, 2] / pt).astype(np.float32),
            "jet_phi": np.arctan2(sums[:, 1], sums[:, 0]).astype(np.float32),
            "jet_mass": np.zeros(n, np.float32),
        },
        depth_limit=1,
    )


def make_seeds(folder: Path) -> dict[str, Path]:
    """The valid files that cases corrupt (a few seconds: a tiny tokenizer and model)."""
    from jetevo.cli import main
    from jetevo.io.writers import write_jetclass

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seeds = {"root": folder / "TTBar_000.root", "h5": folder / "RunG_batch0.h5"}
    write_jetclass(seeds["root"], _jetclass_jets(rng, 40), "Tbqq")
    shutil.copy(REAL_AOJ, seeds["h5"])
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        steps = [
            ["recluster", str(seeds["root"]), str(seeds["h5"]), "--out", str(folder / "trees"),
             "--quiet"],
            ["tokenizer", "train", "--trees", str(folder / "trees"), "--out",
             str(folder / "tok.ckpt"), "--quiet", *TINY_TOKENIZER],
            ["tokenizer", "encode", "--ckpt", str(folder / "tok.ckpt"), "--trees",
             str(folder / "trees"), "--out", str(folder / "tokens")],
            ["train", "--config", str(CONFIGS / "tree_demo.yaml"), "--out", str(folder / "model"),
             "--train", str(folder / "tokens"), "--val", str(folder / "tokens"), "--quiet",
             *TINY_MODEL],
        ]  # fmt: skip
        for argv in steps:
            if main(argv) != 0:
                raise RuntimeError(f"seed step failed: {' '.join(argv)}\n{quiet.getvalue()}")
    seeds["trees"] = folder / "trees" / "TTBar_000.trees.parquet"
    seeds["tokens"] = folder / "tokens" / "TTBar_000.trees.parquet"
    seeds["tokenizer"] = folder / "tok.ckpt"
    seeds["model"] = folder / "model" / "model.ckpt"
    return seeds


def corrupt(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One corruption of a file's bytes, and its description."""
    n = len(data)
    kind = rng.choice(["truncate", "flip", "zero", "junk"])
    if kind == "truncate":
        cut = rng.randrange(0, n)
        return data[:cut], f"truncated at {cut} of {n}"
    buf = bytearray(data)
    if kind == "flip":
        spots = [rng.randrange(n) for _ in range(rng.choice([1, 4, 32]))]
        for i in spots:
            buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf), f"bits flipped at {sorted(spots)[:4]}..."
    if kind == "zero":
        a = rng.randrange(n)
        b = min(n, a + rng.choice([8, 256, 4096]))
        buf[a:b] = bytes(b - a)
        return bytes(buf), f"zeroed {a}:{b}"
    return data + bytes(rng.randrange(256) for _ in range(64)), "64 junk bytes appended"


def commands(kind: str, bad: Path, seeds: dict[str, Path], out: Path) -> list[list[str]]:
    """The commands that read a file of this kind, the bad file in its place."""
    s = {k: str(v) for k, v in seeds.items()}
    b, o = str(bad), str(out)
    if kind in ("root", "h5"):
        return [["recluster", b, "--out", o, "--quiet"]]
    if kind == "trees":
        return [
            ["tokenizer", "encode", "--ckpt", s["tokenizer"], "--trees", b, "--out", o],
            ["evaluate", "--generated", b, "--reference", s["trees"], "--out", o, "--no-plots",
             "--resamples", "1"],
        ]  # fmt: skip
    if kind == "tokens":
        return [
            ["tokenizer", "decode", "--ckpt", s["tokenizer"], "--tokens", b, "--out", o],
            ["evaluate-splits", "--ckpt", s["model"], "--tokens", b, "--json", o + "/s.json"],
        ]
    if kind == "tokenizer":
        return [["tokenizer", "encode", "--ckpt", b, "--trees", s["trees"], "--out", o]]
    if kind == "model":
        return [["generate", "--ckpt", b, "--n-jets", "4", "--out", o, "--quiet",
                 "--tokenizer", s["tokenizer"]]]  # fmt: skip
    raise ValueError(kind)


@dataclass
class Outcome:
    case: str
    argv: list[str]
    code: int | None
    problem: str | None


def run_case(seeds: dict[str, Path], work: Path, seed: int) -> list[Outcome]:
    """Corrupt one seed file (chosen by ``seed``) and run its commands; the rules broken."""
    from jetevo.cli import main

    rng = random.Random(seed)
    kind = rng.choice(sorted(k for k in seeds))
    src = seeds[kind]
    data, how = corrupt(src.read_bytes(), rng)
    case = f"seed {seed}: {kind} {src.name} {how}"
    folder = work / f"case{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    bad = folder / src.name
    bad.write_bytes(data)
    outcomes = []
    # a command that hangs on a bad file breaks the rules too: dump where, and stop
    faulthandler.dump_traceback_later(CASE_TIMEOUT_S, exit=True)
    for argv in commands(kind, bad, seeds, folder / "out"):
        err = io.StringIO()
        problem = None
        code: int | None
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                code = main(argv)
        except BaseException as exc:  # a traceback is what the rules forbid
            code, problem = None, f"{type(exc).__name__}: {str(exc)[:200]}"
        if problem is None and code not in (0, 2):
            problem = f"exit code {code}"
        lines = [x for x in err.getvalue().splitlines() if x.startswith("jetevo ")]
        if problem is None and code == 2 and len(lines) != 1:
            problem = f"exit 2 without exactly one error line: {err.getvalue()[-300:]!r}"
        if problem is None:
            problem = _check_outputs(folder / "out", code)
        if problem is not None:
            outcomes.append(Outcome(case, argv, code, problem))
    faulthandler.cancel_dump_traceback_later()
    shutil.rmtree(folder, ignore_errors=True)
    return outcomes


def _check_outputs(out: Path, code: int | None) -> str | None:
    """Every file under a final name reads back; after exit 0 a summary's counts add up."""
    import pyarrow.parquet as pq

    if not out.exists():
        return None
    for f in out.rglob("*.parquet"):
        if f.name.startswith("."):
            continue
        try:
            pq.read_table(f)
        except Exception as exc:
            return f"unreadable output {f.name}: {type(exc).__name__}"
    summary = out / "summary.json"
    if code == 0 and summary.exists():
        s = json.loads(summary.read_text())
        if "jets_read" in s:
            accounted = s["trees_written"] + sum(s["skipped"].values()) + sum(s["dropped"].values())
            if accounted != s["jets_read"]:
                return f"counts do not add up: {accounted} != {s['jets_read']}"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0, help="first case seed")
    ap.add_argument("--out", default="fuzz_out", help="scratch folder")
    args = ap.parse_args()
    from jetevo.runtime import configure_process, stdout_to_stderr

    configure_process(quiet=True)
    work = Path(args.out)
    t0, seed, broken = time.perf_counter(), args.seed, []
    with stdout_to_stderr():  # FastJet's banner: stdout is the JSON summary only
        seeds = make_seeds(work / "seeds")
        while time.perf_counter() - t0 < 60 * args.minutes:
            broken += run_case(seeds, work, seed)
            seed += 1
    print(
        json.dumps(
            {
                "cases": seed - args.seed,
                "broken": [o.__dict__ for o in broken],
                "seconds": round(time.perf_counter() - t0, 1),
            },
            indent=1,
        )
    )
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
