"""``jetevo`` command line. Each sub-command imports its stage lazily, so that e.g.
``recluster`` and ``simulate`` never import torch."""

from __future__ import annotations

import argparse
import json
import sys

from jetevo.errors import JetevoError


def _simulate(args: argparse.Namespace) -> None:
    from jetevo.io.simulate import simulate

    path = simulate(args.process, args.n_jets, args.out, seed=args.seed, index=args.index, workers=args.workers, progress=not args.quiet)
    print(path)


def _recluster(args: argparse.Namespace) -> None:
    from jetevo.trees.recluster import ReclusterConfig
    from jetevo.trees.run import recluster_files

    cfg = ReclusterConfig(R=args.R, scheme=args.scheme, on_split=args.on_split, max_constituents=args.max_constituents, precision=args.precision)
    summary = recluster_files(
        args.inputs, args.out, cfg, workers=args.workers, chunk_size=args.chunk_size, shard_size=args.shard_size, progress=not args.quiet
    )
    keys = ("jets_read", "trees_written", "skipped", "dropped", "truncated", "split_jets", "jets_per_s")
    print(json.dumps({k: summary[k] for k in keys}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jetevo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="generate Pythia 8 jets in the JetClass or AspenOpenJets layout")
    p.add_argument("--process", choices=("top", "qcd", "qcd-wide"), required=True)
    p.add_argument("--n-jets", type=int, required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--index", type=int, default=0, help="file number NNN in the output name")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("recluster", help="recluster JetClass/AOJ jets into kt declustering trees (Parquet)")
    p.add_argument("inputs", nargs="+", help="JetClass .root / AOJ .h5 files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--R", type=float, default=0.8, help="analysis radius (default 0.8)")
    p.add_argument("--scheme", choices=("E", "wta_pt"), default="E")
    p.add_argument("--on-split", choices=("merge", "hardest", "drop"), default="merge")
    p.add_argument("--max-constituents", type=int, default=128)
    p.add_argument("--precision", choices=("float32", "float64"), default="float32")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=20_000, help="jets per FastJet batch")
    p.add_argument("--shard-size", type=int, default=100_000, help="jets per output file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_recluster)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except JetevoError as err:
        print(f"jetevo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"jetevo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jetevo {args.command}: interrupted; complete outputs are kept, partial ones removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
