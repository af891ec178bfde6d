"""Print a per-class summary of a folder of jetevo trees and its ``summary.json``.

Used at the end of ``make demo``; handy after any ``jetevo recluster`` run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import awkward as ak
import numpy as np

from jetevo.trees.format import load, validate
from jetevo.trees.run import SUMMARY_KEYS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trees", type=Path, help="folder written by jetevo recluster")
    args = ap.parse_args()
    summary_path = args.trees / "summary.json"
    if summary_path.exists():
        s = json.loads(summary_path.read_text())
        keys = (*SUMMARY_KEYS, "workers")
        print("summary.json:", json.dumps({k: s[k] for k in keys}))
    trees = load(args.trees)
    validate(trees, scheme=None)
    print(
        f"{'label':<10} {'trees':>6} {'<N const>':>10} {'<depth max>':>12} {'mass p16/p50/p84 [GeV]':>26}"
    )
    for label in sorted(set(ak.to_list(trees.label))):
        t = trees[trees.label == label]
        mass = np.percentile(ak.to_numpy(t.jet_mass), [16, 50, 84])
        depth = ak.to_numpy(ak.max(t.depth, axis=1))
        print(
            f"{label:<10} {len(t):>6} {np.mean(ak.to_numpy(t.n_constituents)):>10.1f} {depth.mean():>12.1f} "
            f"{mass[0]:>8.1f}/{mass[1]:>6.1f}/{mass[2]:>6.1f}"
        )


if __name__ == "__main__":
    main()
