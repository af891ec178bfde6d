"""jetevo: kt declustering trees, node tokens, and a jet-evolution model that generates jets.

Each sub-command imports its stage lazily, so that e.g. ``recluster`` and ``simulate``
never import torch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from jetevo.errors import JetevoError, SettingError


def _simulate(args: argparse.Namespace) -> None:
    from jetevo.io.simulate import simulate

    path = simulate(
        args.process,
        args.n_jets,
        args.out,
        seed=args.seed,
        index=args.index,
        workers=args.workers,
        progress=not args.quiet,
    )
    print(path)


def add_recluster_options(p: argparse.ArgumentParser) -> None:
    """The options that make a :class:`~jetevo.trees.recluster.ReclusterConfig` and shard the
    output: ``jetevo recluster`` and the launchers in ``cluster/`` share them."""
    from jetevo.kinematics import JET_R
    from jetevo.trees.recluster import ON_SPLIT, PRECISIONS, SCHEMES

    p.add_argument("inputs", nargs="+", help="JetClass .root / AOJ .h5 files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--R", type=float, default=JET_R, help=f"analysis radius (default {JET_R})")
    p.add_argument("--scheme", choices=tuple(SCHEMES), default="E")
    p.add_argument("--on-split", choices=ON_SPLIT, default="merge")
    p.add_argument("--max-constituents", type=int, default=128)
    p.add_argument("--precision", choices=PRECISIONS, default="float32")
    p.add_argument("--chunk-size", type=int, help="jets per FastJet batch (default 5000)")
    p.add_argument("--shard-size", type=int, default=100_000, help="jets per output file")


def recluster_config(args: argparse.Namespace):
    """The :class:`~jetevo.trees.recluster.ReclusterConfig` of :func:`add_recluster_options`."""
    from jetevo.trees.recluster import ReclusterConfig

    return ReclusterConfig(
        R=args.R,
        scheme=args.scheme,
        on_split=args.on_split,
        max_constituents=args.max_constituents,
        precision=args.precision,
    )


def _dask_setting(args: argparse.Namespace) -> str | None:
    """The Dask setting of ``--dask local[:N]`` or ``--dask-scheduler ADDRESS`` (at most one,
    each of its own kind); :func:`~jetevo.trees.run.recluster_files` checks the rest."""
    from jetevo.trees.run import LOCAL_DASK

    if args.dask is not None and args.dask_scheduler is not None:
        raise SettingError("--dask and --dask-scheduler exclude each other: give one")
    if args.dask is not None and not LOCAL_DASK.fullmatch(args.dask):
        raise SettingError(
            f"--dask takes local or local:N, got {args.dask!r}; "
            "for a running scheduler use --dask-scheduler ADDRESS"
        )
    if args.dask_scheduler is not None and LOCAL_DASK.fullmatch(args.dask_scheduler):
        raise SettingError(
            f"--dask-scheduler takes a scheduler address (tcp://HOST:8786), got "
            f"{args.dask_scheduler!r}; for a LocalCluster use --dask local:N"
        )
    return args.dask if args.dask is not None else args.dask_scheduler


def _recluster(args: argparse.Namespace) -> None:
    from jetevo.runtime import stdout_to_stderr
    from jetevo.trees.run import DEFAULT_CHUNK_SIZE, SUMMARY_KEYS, recluster_files

    dask = _dask_setting(args)
    with stdout_to_stderr():  # stdout carries the summary line only (FastJet's banner: stderr)
        summary = recluster_files(
            args.inputs,
            args.out,
            recluster_config(args),
            workers=args.workers,
            chunk_size=DEFAULT_CHUNK_SIZE if args.chunk_size is None else args.chunk_size,
            shard_size=args.shard_size,
            progress=not args.quiet,
            dask=dask,
        )
    print(json.dumps({k: summary[k] for k in SUMMARY_KEYS}))


def _tokenizer_train(args: argparse.Namespace) -> None:
    from jetevo.config import apply_overrides, load_config
    from jetevo.tokenize.tokenizer import TokenizerConfig
    from jetevo.tokenize.train import train_tokenizer

    overrides = list(args.overrides) + (
        [f"max_steps={args.max_steps}"] if args.max_steps is not None else []
    )
    settings = (
        load_config(args.config, overrides) if args.config else apply_overrides({}, overrides)
    )
    cfg = TokenizerConfig.from_dict(settings)
    train_tokenizer(args.trees, args.out, cfg, device=args.device, progress=not args.quiet)


def _tokenizer_encode(args: argparse.Namespace) -> None:
    from jetevo.tokenize.tokenizer import Tokenizer
    from jetevo.tokenize.tokens import encode_files

    for path in encode_files(Tokenizer.load(args.ckpt), args.trees, args.out):
        print(path)


def _tokenizer_decode(args: argparse.Namespace) -> None:
    from jetevo.tokenize.tokenizer import Tokenizer
    from jetevo.tokenize.tokens import decode_files

    tok = Tokenizer.load(args.ckpt)
    for path in decode_files(tok, args.tokens, args.out, args.particle_mass):
        print(path)


def _tokenizer_eval(args: argparse.Namespace) -> None:
    from jetevo.evaluate.closure import tokenizer_closure
    from jetevo.io.atomic import ensure_writable_dir
    from jetevo.tokenize.report import evaluate, format_report, write_report
    from jetevo.tokenize.tokenizer import Tokenizer

    plots = Path(args.plots) if args.plots else Path(args.json).parent
    ensure_writable_dir(Path(args.json).parent)
    tok = Tokenizer.load(args.ckpt)
    report = evaluate(tok, args.trees, plots_dir=plots)
    report["closure"] = tokenizer_closure(
        tok, args.trees, args.particle_mass, massless=args.massless
    )
    write_report(report, args.json)
    print(format_report(report))
    print(f"report {args.json}, plots in {plots}")


def _train(args: argparse.Namespace) -> None:
    from jetevo.config import load_config
    from jetevo.model.train import train

    overrides = list(args.overrides) + (
        [f"train.init_from={args.init_from}"] if args.init_from else []
    )
    train(
        load_config(args.config, overrides),
        args.train,
        args.val,
        args.out,
        tokenizer=args.tokenizer,
        progress=not args.quiet,
    )


def _evaluate_splits(args: argparse.Namespace) -> None:
    from jetevo.io.atomic import ensure_writable_dir, write_json
    from jetevo.model.splits import evaluate_splits, format_splits

    ensure_writable_dir(Path(args.json).parent)  # before the work, as tokenizer eval
    result = evaluate_splits(args.ckpt, args.tokens, tokenizer=args.tokenizer)
    write_json(args.json, result)
    print(format_splits(result) + f"; {args.json}")


def _evaluate_particles(args: argparse.Namespace) -> None:
    from jetevo.io.atomic import ensure_writable_dir, write_json
    from jetevo.model.splits import evaluate_particles, format_splits

    ensure_writable_dir(Path(args.json).parent)
    result = evaluate_particles(args.ckpt, args.tokens)
    write_json(args.json, result)
    print(format_splits(result) + f"; {args.json}")


def _score(args: argparse.Namespace) -> None:
    from jetevo.io.atomic import ensure_writable_dir
    from jetevo.score import format_scores, score, write_scores

    ensure_writable_dir(Path(args.out).parent)
    table = score(args.ckpt, args.tokens, args.batch_size, args.tokenizer, args.device)
    print(format_scores(table) + f"; {write_scores(table, args.out)}")


def _floats(text: str, n: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n:
        raise SettingError(f"{what} takes {n} comma-separated numbers, got {text!r}")
    return values


def _generate(args: argparse.Namespace) -> None:
    from jetevo.generate.run import Shard, format_summary, generate

    roots = None
    if args.root_tokens:
        try:
            roots = [int(v) for v in args.root_tokens.split(",")]
        except ValueError:
            raise SettingError(
                f"--root-tokens takes comma-separated integers, got {args.root_tokens!r}"
            ) from None
    root = tuple(_floats(args.root, 3, "--root")) if args.root else None
    s = generate(
        args.ckpt, args.n_jets, args.out, batch_size=args.batch_size, temperature=args.temperature,
        top_k=args.top_k, seed=args.seed, device=args.device, max_nodes=args.max_nodes,
        root_tokens=roots, root=root, tokenizer=args.tokenizer,
        particle_mass=args.particle_mass,
        baseline=args.baseline, resolution=not args.no_resolution, prefix=args.prefix,
        prefix_depth=args.prefix_depth, prefix_nodes=args.prefix_nodes,
        completions=args.completions, shard=args.shard, progress=not args.quiet,
    )  # fmt: skip
    print(f"{format_summary(s)}; {args.out}/{Shard(*s.get('shard', (0, 1))).summary}")


def _evaluate(args: argparse.Namespace) -> None:
    from jetevo.evaluate import evaluate, format_table

    result = evaluate(
        args.generated,
        args.reference,
        args.out,
        n_resamples=args.resamples,
        seed=args.seed,
        plots=not args.no_plots,
        massless=args.massless,
    )
    print(format_table(result))
    print(
        f"{result['n_generated']} generated vs {result['n_reference']} reference jets; {args.out}/metrics.json, plots in {args.out}"
    )


def _add_decoding_options(p: argparse.ArgumentParser, what: str = "decoded") -> None:
    from jetevo.tokenize.decode import PARTICLE_MASSES  # torch-free

    p.add_argument(
        "--particle-mass", choices=tuple(PARTICLE_MASSES), default="pion",
        help=f"mass of every {what} particle of a flat (jet-relative) tokenizer, whose tokens "
        "carry none (default: %(default)s); a tree tokenizer's particles keep the masses "
        "their tokens decode to, which conserves four-momentum exactly",
    )  # fmt: skip


def _simulate_parser(sub) -> None:
    p = sub.add_parser(
        "simulate", help="generate Pythia 8 jets in the JetClass or AspenOpenJets layout"
    )
    p.add_argument("--process", choices=("top", "qcd", "qcd-wide"), required=True)
    p.add_argument("--n-jets", type=int, required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--index", type=int, default=0, help="file number NNN in the output name")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_simulate)


def _recluster_parser(sub) -> None:
    p = sub.add_parser(
        "recluster", help="recluster JetClass/AOJ jets into kt declustering trees (Parquet)"
    )
    add_recluster_options(p)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--dask", metavar="local[:N]",
        help="run the shards as Dask tasks on a LocalCluster of N one-thread worker processes "
        "(default: one per core); needs jetevo[cluster]",
    )  # fmt: skip
    p.add_argument(
        "--dask-scheduler", metavar="ADDRESS",
        help="run the shards as Dask tasks on a running scheduler (tcp://HOST:8786); "
        "needs jetevo[cluster]",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_recluster)


def _tokenizer_parser(sub) -> None:
    tok = sub.add_parser("tokenizer", help="per-node VQ-VAE tokenizer: train, encode, decode, eval")
    tsub = tok.add_subparsers(dest="tokenizer_command", required=True)
    p = tsub.add_parser("train", help="train a tokenizer on tree files")
    p.add_argument("--trees", nargs="+", required=True, help="tree Parquet files or folders")
    p.add_argument("--out", required=True, help="checkpoint path (resumed if it exists)")
    p.add_argument(
        "--config", help="YAML config (e.g. configs/tokenizer.yaml); default: built-in defaults"
    )
    p.add_argument("--max-steps", type=int)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=_tokenizer_train)
    p = tsub.add_parser("encode", help="add a token column to tree files")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--trees", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_tokenizer_encode)
    p = tsub.add_parser(
        "decode", help="rebuild node kinematics from token files (as generated trees are decoded)"
    )
    p.add_argument("--ckpt", required=True)
    p.add_argument("--tokens", nargs="+", required=True)
    p.add_argument("--out", required=True)
    _add_decoding_options(p)
    p.set_defaults(func=_tokenizer_decode)
    p = tsub.add_parser("eval", help="resolution report (JSON) and residual plots")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--trees", nargs="+", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--plots", help="folder for plots (default: next to the JSON)")
    _add_decoding_options(p, "rebuilt")
    p.add_argument(
        "--massless", action="store_true", help="closure observables with particle energies |p|"
    )
    p.set_defaults(func=_tokenizer_eval)


def _train_parsers(sub) -> None:
    p = sub.add_parser("train", help="train the jet-evolution model on token files")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/tree_demo.yaml")
    p.add_argument("--train", nargs="+", required=True, help="token Parquet files or folders")
    p.add_argument("--val", nargs="+", required=True)
    p.add_argument("--out", required=True, help="run folder (resumed if it holds a run)")
    p.add_argument("--init-from", help="pretrained model.ckpt (same as train.init_from=...)")
    p.add_argument(
        "--tokenizer", help="tokenizer checkpoint (default: the path stored in the token files)"
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", help="config overrides like train.max_steps=200")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "evaluate-splits", help="held-out split NLL/top-k of a model and its count baselines"
    )
    p.add_argument("--ckpt", required=True)
    p.add_argument("--tokens", nargs="+", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--tokenizer", help="tokenizer checkpoint (default: the one the model records)")
    p.set_defaults(func=_evaluate_splits)

    p = sub.add_parser(
        "evaluate-particles",
        help="held-out per-particle NLL/top-k of a flat-mode model and its count baselines",
    )
    p.add_argument("--ckpt", required=True)
    p.add_argument("--tokens", nargs="+", required=True)
    p.add_argument("--json", required=True)
    p.set_defaults(func=_evaluate_particles)

    p = sub.add_parser(
        "score", help="exact log-likelihood of every jet of token files under a model"
    )
    p.add_argument("--ckpt", required=True)
    p.add_argument("--tokens", nargs="+", required=True)
    p.add_argument("--out", required=True, help="output Parquet file, one row per jet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokenizer", help="tokenizer checkpoint (default: the one the model records)")
    p.set_defaults(func=_score)


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate jets as declustering trees from a trained model")
    p.add_argument("--ckpt", required=True, help="model.ckpt from jetevo train")
    p.add_argument(
        "--n-jets", type=int,
        help="jets to generate (with --prefix: the number of prefix jets to use, default all)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output folder (tree Parquet + summary.json)")
    p.add_argument(
        "--batch-size", type=int, default=1024, help="jets sampled together (default 1024)"
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--max-nodes", type=int, help="stop (and count) trees that grow beyond this many nodes"
    )
    p.add_argument("--root-tokens", help="comma-separated root tokens, cycled over the jets")
    p.add_argument(
        "--root", help="PT,ETA,MASS: start every jet from the root token nearest to this jet"
    )
    p.add_argument(
        "--tokenizer", help="tokenizer checkpoint (default: the one recorded in the model)"
    )
    _add_decoding_options(p)
    p.add_argument(
        "--baseline",
        choices=("bigram",),
        help="sample from the checkpoint's count baseline instead of the transformer",
    )
    p.add_argument(
        "--no-resolution", action="store_true",
        help="do not turn pseudojets below the checkpoint's resolution scale into particles",
    )  # fmt: skip
    p.add_argument(
        "--prefix", nargs="+",
        help="tree or token files of real jets to continue (tree-mode models)",
    )  # fmt: skip
    p.add_argument(
        "--prefix-depth", type=int, help="keep each prefix jet's splits above this depth"
    )
    p.add_argument(
        "--prefix-nodes", type=int, help="keep each prefix jet's first N expansions instead"
    )
    p.add_argument(
        "--completions", type=int, default=1, help="completions per prefix jet (default 1)"
    )
    p.add_argument(
        "--shard", metavar="K/N",
        help="make shard K of N of the run (its share of the jets, its own seed stream and "
        "files); N such processes fill one folder with one sample",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_generate)


def _evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="compare two sets of trees on jet observables (KL, W1, floors, plots)"
    )
    p.add_argument(
        "--generated", nargs="+", required=True,
        help="tree files or folders (e.g. jetevo generate output)",
    )  # fmt: skip
    p.add_argument(
        "--reference", nargs="+", required=True,
        help="tree files or folders (e.g. held-out reclustered jets)",
    )  # fmt: skip
    p.add_argument("--out", required=True)
    p.add_argument("--resamples", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--massless", action="store_true",
        help="take every particle's energy as |p| in both samples before computing observables",
    )  # fmt: skip
    p.set_defaults(func=_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jetevo", description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of a user error too"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _simulate_parser, _recluster_parser, _tokenizer_parser, _train_parsers,
        _generate_parser, _evaluate_parser,
    ):  # fmt: skip
        add(sub)
    return parser


# the commands whose steps allocate large torch tensors (see jetevo.allocator)
TORCH_COMMANDS = (
    "tokenizer",
    "train",
    "evaluate-splits",
    "evaluate-particles",
    "score",
    "generate",
)
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
FILE_LISTS = ("train", "val", "trees")  # nargs="+" options that swallow trailing overrides


def _reclaim_overrides(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Move ``key=value`` words that argparse put into a file list back to the overrides.

    ``jetevo train --config c.yaml --train a --val b train.max_steps=600`` otherwise reads
    the override as a third file. The rule is the word's shape alone (``dotted.key=...``),
    never whether such a file exists: a file named like that is passed as ``./name``.
    """
    if not hasattr(args, "overrides"):
        return
    for name in FILE_LISTS:
        words = getattr(args, name, None)
        if not isinstance(words, list):
            continue
        moved = [w for w in words if OVERRIDE.match(w)]
        if moved:
            kept = [w for w in words if w not in moved]
            if not kept:
                parser.error(f"--{name} needs at least one file before the overrides")
            setattr(args, name, kept)
            args.overrides = [*args.overrides, *moved]


def main(argv: list[str] | None = None) -> int:
    """Parse, configure the process once (:func:`jetevo.runtime.configure_process`), run.

    Problems with the user's input (:class:`~jetevo.errors.JetevoError`) are one line on
    stderr and exit 2 (``--debug``: the traceback too); anything else is a bug and keeps its
    traceback."""
    from jetevo.runtime import configure_process

    parser = build_parser()
    args = parser.parse_args(argv)
    _reclaim_overrides(args, parser)
    configure_process(
        quiet=getattr(args, "quiet", False), keep_freed_memory=args.command in TORCH_COMMANDS
    )
    try:
        args.func(args)
    except JetevoError as err:
        if args.debug:
            raise
        print(f"jetevo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"jetevo {args.command}: interrupted; complete outputs are kept, partial ones removed",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
