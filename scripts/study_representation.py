"""The tokenizer closure of held-out jets, per tokenizer variant (docs/results/exact_representation.md).

Trains one tokenizer per variant (codebook size K, VQ-VAE steps; 0 steps is the k-means
codebook alone) on the given training trees, then runs ``tokenizer eval`` on the held-out
trees: the resolution report (the per-jet root mass error) and the closure (every
particle-level observable over its truth-vs-truth floor, the primary Lund plane, collinear
splits, the per-depth table). Trees rebuilt some other way (``--rebuilt NAME=FOLDER``, e.g.
by an older jetevo's ``tokenizer decode``, with that tokenizer's ``tokenizer eval`` report
in FOLDER/../report.json for its root error) get the same closure. Resumable: a variant whose
report exists is read back, not rerun. Writes ``results.json`` and prints the tables.

    python scripts/study_representation.py --train trees/A trees/B --heldout trees/C \
        --out study --variant k8192=8192:1500 --variant k8192_kmeans=8192:0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OBSERVABLES = ("mass", "mass_sd", "tau21", "tau32", "d2", "zg", "rg", "n_primary", "multiplicity")
MIN_SPLITS = 50  # per-depth rows with fewer true splits are not judged


def run_variant(name: str, spec: str, train, heldout, out: Path) -> dict:
    from jetevo.evaluate.closure import tokenizer_closure
    from jetevo.tokenize.report import evaluate
    from jetevo.tokenize.tokenizer import TokenizerConfig
    from jetevo.tokenize.train import train_tokenizer

    report_path = out / name / "report.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    n_codes, steps = (int(x) for x in spec.split(":"))
    tok = train_tokenizer(
        train,
        out / name / "tok.ckpt",
        TokenizerConfig(n_codes=n_codes, max_steps=steps),
        progress=False,
        log=print,
    )
    report = evaluate(tok, heldout, plots_dir=out / name)
    report["closure"] = tokenizer_closure(tok, heldout)
    report_path.write_text(json.dumps(report, indent=1, default=float))
    return report


def rebuilt_closure(name: str, folder: str, heldout, out: Path) -> dict:
    from jetevo.evaluate.closure import COLUMNS, closure_metrics
    from jetevo.trees.format import load, tree_files

    report_path = out / name / "report.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    trees = load(tree_files(heldout), columns=COLUMNS)
    rebuilt = load(tree_files([folder]), columns=COLUMNS)
    report = {"closure": closure_metrics(trees, rebuilt, "heldout")}
    # the per-jet root error, from that tokenizer's own `tokenizer eval` report beside it
    own = Path(folder).parent / "report.json"
    if own.exists():
        report["root"] = json.loads(own.read_text()).get("root")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1, default=float))
    return report


def summary(report: dict) -> dict:
    """The targets' numbers of one report."""
    c = report["closure"]
    rows = [r for r in c["splits"]["per_depth"] if r["true"]["n_splits"] >= MIN_SPLITS]
    opening = {
        r["depth"]: r["rebuilt"]["opening_median"] / r["true"]["opening_median"] - 1 for r in rows
    }
    wider = {
        r["depth"]: r["rebuilt"]["wider_fraction"] - r["true"]["wider_fraction"]
        for r in rows
        if r["depth"] > 0
    }
    root = report.get("root") or {}
    return {
        "w1_over_floor": {k: c["observables"][k]["w1_over_floor"] for k in OBSERVABLES},
        "lund_kl": c["lund_plane"]["kl"],
        "lund_kl_floor": c["lund_plane"]["evaluate_kl_floor"],
        "root_mass_abs_err_median": root.get("mass_abs_err_median"),
        "root_pt_rel_err_median": root.get("pt_rel_err_median"),
        "collinear_fraction": c["splits"]["collinear_fraction"],
        "opening_rel_diff_by_depth": opening,
        "wider_fraction_diff_by_depth": wider,
        "max_abs_opening_rel_diff": max(abs(v) for v in opening.values()),
        "max_abs_wider_diff": max(abs(v) for v in wider.values()),
        "spacelike_fraction": c["particles"]["rebuilt"]["spacelike_fraction"],
    }


def table(results: dict) -> str:
    lines = [
        "| variant | " + " | ".join(OBSERVABLES) + " | Lund KL (floor) | root Δm median GeV "
        "| collinear rebuilt / true | max depth |Δopening| | max depth |Δwider| |",
        "|---" * (len(OBSERVABLES) + 6) + "|",
    ]
    for name, s in results.items():
        root = s["root_mass_abs_err_median"]
        coll = s["collinear_fraction"]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{s['w1_over_floor'][k]:.2f}" for k in OBSERVABLES)
            + f" | {s['lund_kl']:.4f} ({s['lund_kl_floor']:.4f})"
            + f" | {'-' if root is None else f'{root:.2f}'}"
            + f" | {coll['rebuilt']:.4f} / {coll['true']:.4f}"
            + f" | {100 * s['max_abs_opening_rel_diff']:.1f}%"
            + f" | {100 * s['max_abs_wider_diff']:.1f} pt |"
        )
    return "\n".join(lines)


def depth_table(report: dict) -> str:
    lines = [
        "| depth | splits | z true / rebuilt | opening true / rebuilt | wider than parent true / rebuilt |",
        "|---|---|---|---|---|",
    ]
    for r in report["closure"]["splits"]["per_depth"]:
        t, b = r["true"], r["rebuilt"]
        if not t["n_splits"]:
            continue
        wider = (
            "-"
            if t["wider_fraction"] is None
            else f"{100 * t['wider_fraction']:.0f}% / {100 * b['wider_fraction']:.0f}%"
        )
        lines.append(
            f"| {r['depth']} | {t['n_splits']} | {t['z_median']:.3f} / {b['z_median']:.3f} | "
            f"{t['opening_median']:.4f} / {b['opening_median']:.4f} | {wider} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", required=True, help="tokenizer training trees")
    ap.add_argument("--heldout", nargs="+", required=True, help="held-out trees (the closure)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variant", action="append", default=[], help="NAME=K:STEPS")
    ap.add_argument("--rebuilt", action="append", default=[], help="NAME=FOLDER of rebuilt trees")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    reports = {}
    for item in args.rebuilt:
        name, folder = item.split("=", 1)
        reports[name] = rebuilt_closure(name, folder, args.heldout, args.out)
    for item in args.variant:
        name, spec = item.split("=", 1)
        reports[name] = run_variant(name, spec, args.train, args.heldout, args.out)
    results = {name: summary(r) for name, r in reports.items()}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    for name, r in reports.items():
        print(f"\n{name}\n{depth_table(r)}")


if __name__ == "__main__":
    main()
