"""Tokenizer resolution report: decode every node from its token and compare.

Each split's two children are decoded together relative to their *true* parent (the
context generation would have for a correctly generated parent), so the numbers measure
the tokenizer alone, one split at a time; roots are decoded from their own grid and compared
with the true jets' pT and mass (per jet: the root fixes a decoded jet's mass). A flat
(jet-relative) tokenizer is measured on the particles alone, each relative to its true jet
axis, as flat mode only ever tokenizes particles. The jet mass is rebuilt from the decoded
leaves. The same metrics for the k-means quantizer the codebook was initialised with give
the floor (``kmeans_floor``): the best any single token per node can do with these
features and K codes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np

from jetevo.kinematics import eta, pt_y_phi_m, wrap_phi
from jetevo.tokenize import features as F
from jetevo.tokenize.kmeans import nearest
from jetevo.tokenize.tokenizer import Tokenizer
from jetevo.tokenize.train import node_features

GROUPS = ("leaves", "internal", "root")


def resolution(
    true_p: np.ndarray, reco_p: np.ndarray, a: dict, groups: tuple[str, ...] = GROUPS
) -> dict:
    """Errors per group of nodes (``a``: their node arrays; a group with no node, or not in
    ``groups``, is all None) and of the jet mass rebuilt from the decoded leaves."""
    pt_t, _, phi_t, m_t = pt_y_phi_m(true_p)
    pt_r, _, phi_r, m_r = pt_y_phi_m(reco_p)
    rel = np.abs(pt_r - pt_t) / np.maximum(pt_t, 1e-12)
    deta = np.abs(eta(reco_p) - eta(true_p))
    dphi = np.abs(wrap_phi(phi_r - phi_t))
    dm = np.abs(m_r - m_t)
    root = a["parent"] < 0
    masks = {"leaves": a["is_leaf"], "internal": ~a["is_leaf"] & ~root, "root": root}
    out: dict = {}
    for g, m in masks.items():
        if g not in groups or not m.any():
            out[g] = {
                k: None
                for k in (
                    "pt_rel_err_mean",
                    "pt_rel_err_median",
                    "eta_abs_err_median",
                    "phi_abs_err_median",
                    "mass_abs_err_median",
                )
            }
            continue
        out[g] = {
            "pt_rel_err_mean": float(rel[m].mean()),
            "pt_rel_err_median": float(np.median(rel[m])),
            "eta_abs_err_median": float(np.median(deta[m])),
            "phi_abs_err_median": float(np.median(dphi[m])),
            "mass_abs_err_median": float(np.median(dm[m])),
        }
    jet = np.repeat(np.arange(len(a["counts"])), a["counts"])
    leaf = a["is_leaf"]
    sums_t = np.zeros((len(a["counts"]), 4))
    sums_r = np.zeros_like(sums_t)
    np.add.at(sums_t, jet[leaf], true_p[leaf])
    np.add.at(sums_r, jet[leaf], reco_p[leaf])
    mt, mr = pt_y_phi_m(sums_t)[3], pt_y_phi_m(sums_r)[3]
    out["jet_mass_rel_err_median"] = (
        float(np.median(np.abs(mr - mt) / np.maximum(mt, 1e-12))) if leaf.any() else None
    )
    return out


def decode_one_step(fs: F.FeatureSet, decoded: np.ndarray, a: dict) -> np.ndarray:
    """Four-momenta of the nodes of :func:`~jetevo.tokenize.train.node_features` from their
    decoded features, relative to their true context: a tree set's siblings together (each
    split a decay of its true parent), a flat set's particles alone."""
    if fs.split_inverse is None:
        return cast(Callable, fs.inverse)(decoded, a["context"])
    pairs = F.sibling_pairs(a["parent"])
    left, right = pairs[:, 0], pairs[:, 1]
    reco = np.empty_like(a["p"])
    reco[left], reco[right] = fs.split_inverse(a["context"][left], decoded[left], decoded[right])
    return reco


def root_resolution(true_roots: np.ndarray, decoded_roots: np.ndarray) -> dict:
    """Per-jet errors of the roots' pT and mass (decoded roots are in the jet frame, so
    their direction is not compared)."""
    pt_t, _, _, m_t = pt_y_phi_m(true_roots)
    pt_r, _, _, m_r = pt_y_phi_m(decoded_roots)
    rel = np.abs(pt_r - pt_t) / np.maximum(pt_t, 1e-12)
    return {
        "pt_rel_err_mean": float(rel.mean()),
        "pt_rel_err_median": float(np.median(rel)),
        "eta_abs_err_median": None,
        "phi_abs_err_median": None,
        "mass_abs_err_median": float(np.median(np.abs(m_r - m_t))),
    }


def evaluate(tok: Tokenizer, tree_paths, plots_dir: str | Path | None = None) -> dict:
    """The resolution report of ``tok`` on tree files (see the module docstring)."""
    fs = tok.features
    feats, a = node_features(tree_paths, fs)
    groups = ("leaves",) if fs.particles_only else GROUPS
    coded = len(feats) > 0  # jets of one particle have no split to code
    codes = tok.codes_from_features(feats) if coded else np.zeros(0, np.int64)
    reco = decode_one_step(fs, tok.features_from_codes(codes), a) if coded else a["p"]
    report = resolution(a["p"], reco, a, groups if coded else ())
    if tok.root is not None:
        report["root"] = root_resolution(a["roots"], tok.root.decode(tok.root.encode(a["roots"])))
    usage = np.bincount(codes, minlength=tok.cfg.n_codes) / max(len(codes), 1)
    nz = usage[usage > 0]
    report.update(
        codebook_utilization=float((usage > 0).mean()),
        perplexity=float(np.exp(-(nz * np.log(nz)).sum())),
        n_nodes=len(codes) + (0 if tok.root is None else len(a["roots"])),
        n_codes=tok.cfg.n_codes,
    )
    if tok.floor_centroids is not None and coded:
        c = np.asarray(tok.floor_centroids, np.float64)
        floor_reco = decode_one_step(
            fs, tok.standardizer.inverse(c[nearest(c, tok.standardizer.forward(feats))]), a
        )
        report["kmeans_floor"] = resolution(a["p"], floor_reco, a, groups)
        report["kmeans_floor"]["root"] = report["root"]  # the root grid is its own floor
        ratios = {g: report[g]["pt_rel_err_mean"] / report["kmeans_floor"][g]["pt_rel_err_mean"]
                  for g in GROUPS if report[g]["pt_rel_err_mean"] and report["kmeans_floor"][g]["pt_rel_err_mean"]}  # fmt: skip
        report["pt_rel_err_mean_over_floor"] = ratios
    report.update(feature_set=fs.name, features=list(fs.names))
    if plots_dir is not None and coded:
        _plots(
            a,
            feats,
            tok.standardizer.inverse(tok.standardizer.forward(tok.features_from_codes(codes))),
            Path(plots_dir),
            fs.names,
        )
    return report


def _plots(
    a: dict, true_f: np.ndarray, reco_f: np.ndarray, out: Path, names: tuple[str, ...]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.CMS)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 6))
    for i, (ax, name) in enumerate(zip(axes, names, strict=True)):
        res = reco_f[:, i] - true_f[:, i]
        lo, hi = np.percentile(res, [1, 99])
        bins = np.linspace(lo, hi, 60) if hi > lo else 60
        for label, m in (("leaves", a["is_leaf"]), ("internal", ~a["is_leaf"])):
            if not m.any():  # a flat tokenizer is measured on particles only
                continue
            ax.hist(res[m], bins=bins, histtype="step", density=True, label=label, lw=2)
        ax.set_xlabel(f"{name}: decoded - true")
        ax.legend(fontsize=14)
    fig.tight_layout()
    fig.savefig(out / "tokenizer_residuals.png", dpi=60)
    plt.close(fig)


def write_report(report: dict, path: str | Path) -> None:
    from jetevo.io.atomic import write_json

    write_json(path, report)


def _num(x, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def format_report(report: dict) -> str:
    """The resolution table, codebook use and closure of a report, as ``tokenizer eval``
    prints them."""
    floor = report.get("kmeans_floor", {})
    lines: list[str] = []
    if "feature_set" in report:
        lines.append(f"feature set {report['feature_set']} ({', '.join(report['features'])})")
    lines.append(
        f"{'nodes':<9} {'<|dpT|/pT>':>11} {'floor':>7} {'med |deta|':>11} {'med |dm| GeV':>13}"
    )
    for name in ("leaves", "internal", "root"):  # None: no node of that kind (shown as -)
        r = report[name]
        f = floor.get(name, {}).get("pt_rel_err_mean")
        lines.append(
            f"{name:<9} {_num(r['pt_rel_err_mean'], 11, 4)} {_num(f, 7, 4)}"
            f" {_num(r['eta_abs_err_median'], 11, 4)} {_num(r['mass_abs_err_median'], 13, 3)}"
        )
    lines.append(
        f"jet mass (decoded leaves) median rel. error {_num(report['jet_mass_rel_err_median'], 0, 4)}; "
        f"codebook utilization {report['codebook_utilization']:.3f}; perplexity "
        f"{report['perplexity']:.0f}; {report['n_nodes']} nodes"
    )
    closure = report.get("closure")
    if closure:
        lines += _format_closure(closure)
    return "\n".join(lines)


CLOSURE_OBSERVABLES = (
    "mass", "mass_sd", "tau21", "tau32", "d2", "zg", "rg", "n_primary", "multiplicity",
)  # fmt: skip


def _format_closure(closure: dict) -> list[str]:
    obs = closure["observables"]
    names = [k for k in CLOSURE_OBSERVABLES if k in obs]
    lines = [
        f"closure, {closure['n_jets']} trees rebuilt from their own tokens "
        f"({closure['decoding']}, {closure['particle_mass']} particles"
        f"{', energies taken massless' if closure['massless'] else ''}): W1 on the particles "
        "to the true jets over evaluate's truth-vs-truth floor at this size (1 = at the floor)",
        "  " + ", ".join(f"{k} {obs[k]['w1_over_floor']:.2f}" for k in names),
    ]
    lund = closure.get("lund_plane")
    if lund:
        lines.append(
            f"  primary Lund plane KL {lund['kl']:.4f} (floor {lund['evaluate_kl_floor']:.4f})"
        )
    splits = closure.get("splits")
    if splits:
        c = splits["collinear_fraction"]
        lines.append(
            f"collinear splits (dR < {splits['collinear_dr']:g}): rebuilt {c['rebuilt']:.4f}, "
            f"true {c['true']:.4f}"
        )
        lines.append(
            f"{'depth':>5} {'splits':>7} {'z true/rebuilt':>15} {'opening true/rebuilt':>21} "
            f"{'wider than parent true/rebuilt':>31}"
        )
        for row in splits["per_depth"]:
            t, r = row["true"], row["rebuilt"]
            lines.append(
                f"{row['depth']:>5} {t['n_splits']:>7} "
                f"{_pair(t['z_median'], r['z_median'], 3):>15} "
                f"{_pair(t['opening_median'], r['opening_median'], 4):>21} "
                f"{_pair(t['wider_fraction'], r['wider_fraction'], 2):>31}"
            )
    parts = closure["particles"]["rebuilt"]
    lines.append(
        f"closure particles: mean mass {parts['mean_mass']:.3f} GeV, spacelike fraction "
        f"{parts['spacelike_fraction']:.4f}"
    )
    return lines


def _pair(a, b, digits: int) -> str:
    return "-" if a is None or b is None else f"{a:.{digits}f} / {b:.{digits}f}"
