"""``jetevo evaluate``: generated (or any) trees against reference trees, on their particles.

Physics observables come from the particles alone (:mod:`jetevo.evaluate.observables`);
tree diagnostics are reported beside them under their own names. Particle sanity (mass
distribution, spacelike and soft fractions), the kt self-consistency of the stored trees
and, when the generated folder holds a ``jetevo generate`` summary, the runaway fraction
of the generation run are part of the result, so a jet that was replaced or a particle
that no detector could see is never invisible to the evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jetevo.errors import InputError, SettingError
from jetevo.evaluate.metrics import binned_kl_2d, compare
from jetevo.evaluate.observables import (
    OBSERVABLES,
    PARTICLE_OBSERVABLES,
    SPACELIKE_TOL,
    observables,
)
from jetevo.io.atomic import ensure_writable_dir, write_json
from jetevo.trees.format import load, read_metadata, tree_files

COLUMNS = ["px", "py", "pz", "E", "left", "right", "depth"]
SOFT_QUANTILE = 0.005  # "soft": below the reference's 0.5% particle-pT quantile


def _load(paths, what: str):
    files = tree_files(paths)
    trees = load(files, columns=COLUMNS)
    if len(trees) == 0:
        raise InputError(files[0], f"{what} trees: the files hold no jets")
    return trees, files


def generation_summary(files: list[Path]) -> dict | None:
    """Runaway accounting of the ``jetevo generate`` run(s) that wrote ``files``: every
    folder's ``summary.json``, or the summaries of its shards (``summary-sKKKKofNNNN.json``;
    a folder holds one or the other)."""
    runs = []
    generated = {f.parent for f in files if read_metadata(f).get("algorithm") == "generated"}
    for path in sorted(p for folder in generated for p in folder.glob("summary*.json")):
        try:
            s = json.loads(path.read_text())
            runs.append({k: int(s[k]) for k in ("attempted", "runaway", "n_written")})
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(path, f"not a jetevo generate summary ({err})") from None
    if not runs:
        return None
    total: dict[str, float] = {k: sum(r[k] for r in runs) for k in runs[0]}
    total["runaway_fraction"] = total["runaway"] / max(total["attempted"], 1)
    return total


def particle_sanity(parts: dict, soft_pt: float) -> dict:
    m = parts["particle_mass"]
    return {
        "mean_mass": float(m.mean()),
        "spacelike_fraction": float(np.mean(parts["m2_over_e2"] < -SPACELIKE_TOL)),
        "mass_above_1gev_fraction": float(np.mean(m > 1.0)),
        "soft_fraction": float(np.mean(parts["particle_pt"] < soft_pt)),
        "n_particles": len(m),
    }


def evaluate(
    generated,
    reference,
    out_dir,
    n_resamples: int = 5,
    seed: int = 0,
    plots: bool = True,
    massless: bool = False,
) -> dict:
    """Observables of both samples, metrics per observable (with floors), particle sanity,
    plots; writes ``metrics.json`` into ``out_dir`` and returns its content.

    ``massless``: every particle's energy is taken as |p| in both samples.
    """
    if n_resamples < 1:
        raise SettingError("--resamples must be at least 1")
    gen_trees, gen_files = _load(generated, "generated")
    ref_trees, ref_files = _load(reference, "reference")
    if len(ref_trees) < 4:
        raise InputError(
            ref_files[0],
            f"reference has {len(ref_trees)} jets; the floor needs two halves of at least 2",
        )
    out = ensure_writable_dir(out_dir)
    gen, gen_lund, gen_parts = observables(gen_trees, str(gen_files[0]), massless, True)
    ref, ref_lund, ref_parts = observables(ref_trees, str(ref_files[0]), massless, True)
    rng = np.random.default_rng(seed)
    names = OBSERVABLES + PARTICLE_OBSERVABLES
    both = {**gen, **gen_parts}, {**ref, **ref_parts}
    soft_pt = float(np.quantile(ref_parts["particle_pt"], SOFT_QUANTILE))
    result: dict[str, Any] = {
        "massless": massless,
        "observables": {
            name: compare(both[0][name], both[1][name], n_resamples, rng) for name in names
        },
        "lund_plane": binned_kl_2d(
            gen_lund, len(gen_trees), ref_lund, len(ref_trees), n_resamples, rng
        ),
        "n_generated": len(gen_trees),
        "n_reference": len(ref_trees),
        "n_resamples": n_resamples,
        "generated": [str(f) for f in gen_files],
        "reference": [str(f) for f in ref_files],
        "means": {
            name: {"generated": _mean(both[0][name]), "reference": _mean(both[1][name])}
            for name in names
        },
        "mass_peak": {"generated": mode(gen["mass"]), "reference": mode(ref["mass"])},
        "lund_points_per_jet": {
            "generated": len(gen_lund) / len(gen_trees),
            "reference": len(ref_lund) / len(ref_trees),
        },
        "particles": {
            "soft_pt_threshold": soft_pt,
            "generated": particle_sanity(gen_parts, soft_pt),
            "reference": particle_sanity(ref_parts, soft_pt),
        },
        "kt_self_consistency": {
            "generated": _mean(gen["kt_self_consistent"]),
            "reference": _mean(ref["kt_self_consistent"]),
        },
        "generation": generation_summary(gen_files),
    }
    if plots:
        from jetevo.evaluate.plots import histograms, lund_planes

        gen_obs, ref_obs = ({k: s[k] for k in names} for s in both)
        result["plots"] = [p.name for p in histograms(gen_obs, ref_obs, out)]
        result["plots"].append(
            lund_planes(gen_lund[:, 1:], len(gen_trees), ref_lund[:, 1:], len(ref_trees), out).name
        )
    write_json(out / "metrics.json", result, indent=1)
    return result


def _mean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None


def mode(x: np.ndarray, lo: float = 0.0, hi: float = 400.0, width: float = 5.0) -> float | None:
    """Position of the highest bin of a histogram (e.g. the jet-mass peak), bin centre."""
    x = x[np.isfinite(x)]
    h, e = np.histogram(x, np.arange(lo, hi + width, width))
    return float(0.5 * (e[np.argmax(h)] + e[np.argmax(h) + 1])) if h.sum() else None


def _num(x, fmt: str) -> str:
    return "n/a" if x is None or not np.isfinite(x) else format(x, fmt)


def format_table(result: dict) -> str:
    lines = [
        f"{'observable':<15} {'W1':>18} {'W1 floor':>18} {'W1/floor':>8} {'KL':>16} {'KL floor':>16}  {'<gen>':>9} {'<ref>':>9}"
    ]
    for name, m in result["observables"].items():
        mean = result["means"][name]
        ratio = m["w1"] / m["w1_floor"] if m["w1_floor"] and np.isfinite(m["w1_floor"]) else None
        lines.append(
            f"{name:<15} {m['w1']:>9.4g} ±{m['w1_std']:<7.2g} {m['w1_floor']:>9.4g} ±{m['w1_floor_std']:<7.2g} "
            f"{_num(ratio, '8.2f'):>8} {m['kl']:>8.4f} ±{m['kl_std']:<6.3f} {m['kl_floor']:>8.4f} ±{m['kl_floor_std']:<6.3f}  "
            f"{_num(mean['generated'], '9.4g'):>9} {_num(mean['reference'], '9.4g'):>9}"
        )
    lund = result["lund_plane"]
    lines.append(
        f"C/A primary Lund plane: KL {lund['kl']:.4f} ± {lund['kl_std']:.3f} (floor {lund['kl_floor']:.4f} ± {lund['kl_floor_std']:.3f})"
    )
    peak = result["mass_peak"]
    lines.append(
        f"jet-mass peak (5 GeV bins): generated {_num(peak['generated'], '.1f')} GeV, reference {_num(peak['reference'], '.1f')} GeV"
    )
    parts = result["particles"]
    for who in ("generated", "reference"):
        p = parts[who]
        lines.append(
            f"particles, {who}: mean mass {p['mean_mass']:.3f} GeV, spacelike {p['spacelike_fraction']:.4f}, "
            f"mass > 1 GeV {p['mass_above_1gev_fraction']:.4f}, softer than the reference's 0.5% "
            f"quantile ({parts['soft_pt_threshold']:.3g} GeV) {p['soft_fraction']:.4f}"
        )
    sc = result["kt_self_consistency"]
    lines.append(
        f"share of the stored trees' clusters that kt reclustering of their particles makes too: "
        f"generated {_num(sc['generated'], '.3f')}, reference {_num(sc['reference'], '.3f')}"
    )
    gen = result["generation"]
    if gen is not None:
        lines.append(
            f"generation: {gen['runaway']} of {gen['attempted']} attempts runaway "
            f"({gen['runaway_fraction']:.4f}), replaced by new attempts"
        )
    else:
        lines.append("generation: no jetevo generate summary.json beside the generated files")
    if result["massless"]:
        lines.append("(particle energies taken as |p| in both samples)")
    return "\n".join(lines)
