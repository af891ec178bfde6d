"""``jetevo evaluate``: generated (or any) trees against reference trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jetevo.errors import InputError
from jetevo.evaluate.metrics import compare
from jetevo.evaluate.observables import OBSERVABLES, observables
from jetevo.io.atomic import atomic_path, ensure_writable_dir
from jetevo.trees.format import load, tree_files

COLUMNS = ["px", "py", "pz", "E", "left", "right", "depth"]


def _load(paths, what: str):
    files = tree_files(paths)
    trees = load(files, columns=COLUMNS)
    if len(trees) == 0:
        raise InputError(files[0], f"{what} trees: the files hold no jets")
    return trees, files


def evaluate(
    generated, reference, out_dir, n_resamples: int = 5, seed: int = 0, plots: bool = True
) -> dict:
    """Observables of both samples, metrics per observable (with floors), plots; writes
    ``metrics.json`` into ``out_dir`` and returns its content."""
    if n_resamples < 1:
        raise ValueError("--resamples must be at least 1")
    gen_trees, gen_files = _load(generated, "generated")
    ref_trees, ref_files = _load(reference, "reference")
    if len(ref_trees) < 4:
        raise InputError(
            ref_files[0],
            f"reference has {len(ref_trees)} jets; the floor needs two halves of at least 2",
        )
    out = ensure_writable_dir(out_dir)
    gen, gen_lund = observables(gen_trees, str(gen_files[0]))
    ref, ref_lund = observables(ref_trees, str(ref_files[0]))
    rng = np.random.default_rng(seed)
    result = {
        "observables": {
            name: compare(gen[name], ref[name], n_resamples, rng) for name in OBSERVABLES
        },
        "n_generated": len(gen_trees),
        "n_reference": len(ref_trees),
        "n_resamples": n_resamples,
        "generated": [str(f) for f in gen_files],
        "reference": [str(f) for f in ref_files],
        "means": {
            name: {"generated": _mean(gen[name]), "reference": _mean(ref[name])}
            for name in OBSERVABLES
        },
        "mass_peak": {"generated": mode(gen["mass"]), "reference": mode(ref["mass"])},
        "lund_points_per_jet": {
            "generated": len(gen_lund) / len(gen_trees),
            "reference": len(ref_lund) / len(ref_trees),
        },
    }
    if plots:
        from jetevo.evaluate.plots import histograms, lund_planes

        result["plots"] = [p.name for p in histograms(gen, ref, out)]
        result["plots"].append(
            lund_planes(gen_lund, len(gen_trees), ref_lund, len(ref_trees), out).name
        )
    with atomic_path(out / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def mode(x: np.ndarray, lo: float = 0.0, hi: float = 400.0, width: float = 5.0) -> float:
    """Position of the highest bin of a histogram (e.g. the jet-mass peak), bin centre."""
    x = x[np.isfinite(x)]
    h, e = np.histogram(x, np.arange(lo, hi + width, width))
    return float(0.5 * (e[np.argmax(h)] + e[np.argmax(h) + 1])) if h.sum() else float("nan")


def format_table(result: dict) -> str:
    lines = [
        f"{'observable':<13} {'W1':>18} {'W1 floor':>18} {'KL':>16} {'KL floor':>16}  {'<gen>':>9} {'<ref>':>9}"
    ]
    for name, m in result["observables"].items():
        mean = result["means"][name]
        lines.append(
            f"{name:<13} {m['w1']:>9.4g} ±{m['w1_std']:<7.2g} {m['w1_floor']:>9.4g} ±{m['w1_floor_std']:<7.2g} "
            f"{m['kl']:>8.4f} ±{m['kl_std']:<6.3f} {m['kl_floor']:>8.4f} ±{m['kl_floor_std']:<6.3f}  "
            f"{mean['generated']:>9.4g} {mean['reference']:>9.4g}"
        )
    peak = result["mass_peak"]
    lines.append(
        f"jet-mass peak (5 GeV bins): generated {peak['generated']:.1f} GeV, reference {peak['reference']:.1f} GeV"
    )
    return "\n".join(lines)
