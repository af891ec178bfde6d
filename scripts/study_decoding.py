"""Tokenizer closure of every decoding option, on the particles (docs/results/decoding.md).

Held-out trees are rebuilt from their own tokens with each split-kinematics / particle-mass
option and compared with the true jets by :func:`jetevo.evaluate.closure.tokenizer_closure`
(W1 over all jets, 0 is perfect), with particle energies as decoded and taken massless.

    python scripts/study_decoding.py --ckpt demo_out/tokenizer/tok.ckpt \
        --trees demo_out/trees/TTBar_000.0001.trees.parquet --json decoding.json
"""

from __future__ import annotations

import argparse
import json

from jetevo.evaluate.closure import tokenizer_closure
from jetevo.tokenize.tokenizer import Tokenizer

OPTIONS = (
    ("share", "decoded"),
    ("two-body", "decoded"),
    ("two-body", "pion"),
    ("two-body", "massless"),
)
SHOWN = ("mass", "multiplicity", "tau21", "tau32", "d2", "zg", "rg", "n_primary")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--trees", nargs="+", required=True)
    ap.add_argument("--json")
    args = ap.parse_args()
    tok = Tokenizer.load(args.ckpt)
    rows = []
    for kin, mass in OPTIONS:
        for massless in (False, True):
            c = tokenizer_closure(tok, args.trees, kin, mass, massless=massless)
            rows.append(c)
            obs = c["observables"]
            parts = c["particles"]["rebuilt"]
            print(
                f"{kin:>8} {mass:>8} {'massless' if massless else 'as decoded':>10}: "
                + " ".join(f"{k} {obs[k]['w1']:.3g}" for k in SHOWN)
                + f" | particle mass {parts['mean_mass']:.3f} GeV, spacelike {parts['spacelike_fraction']:.3f}"
            )
    floors = {k: rows[0]["observables"][k]["evaluate_w1_floor"] for k in SHOWN}
    print(
        "evaluate's W1 floor at this size: " + " ".join(f"{k} {v:.3g}" for k, v in floors.items())
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
