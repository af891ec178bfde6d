"""``jetevo train``: Lightning training of the jet-evolution model on token files.

CPU and GPU (bf16 mixed precision on CUDA), one or many devices (DDP: ``train.devices``
and ``train.num_nodes``, launched by Lightning itself, ``torchrun`` or SLURM's ``srun``,
see ``cluster/``), Ranger or AdamW, CSV logging (Comet optional, offline without a key,
never a crash when missing). The training jets are streamed from the token files
(:mod:`jetevo.model.streaming`), so memory does not grow with the data. Resumable from
``OUT/lightning/last.ckpt``: ``OUT/run.json`` records what a run was started with (model
and training settings, tokenizer identity, token files) and a resume with other ones is
refused (:func:`check_resume`), except for the number of devices. The final
``OUT/model.ckpt`` embeds the config, the tokenizer identity and the count baselines of
the training data. The Lightning module is :mod:`jetevo.model.training_module`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch

from jetevo.config import (
    build,
    check_fields,
    file_fingerprints,
    files_difference,
    setting,
    settings_difference,
)
from jetevo.errors import InputError, SettingError
from jetevo.io.atomic import ensure_writable_dir
from jetevo.model.baselines import CountBaselines
from jetevo.model.checkpoint import build_model, save_model
from jetevo.model.checkpoint import init_from as load_init
from jetevo.model.gpt import ModelConfig, count_parameters
from jetevo.model.sequences import IGNORE
from jetevo.model.streaming import (
    SequenceBuilder,
    TokenSource,
    constituent_counts,
    node_columns,
    sample_units,
)
from jetevo.model.tree import JetEvolutionModel
from jetevo.tokenize.resolution import QUANTILE as RESOLUTION_QUANTILE
from jetevo.tokenize.resolution import code_log_z, learn_scale
from jetevo.trees.format import tree_files

logger = logging.getLogger(__name__)


PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")


@dataclass
class TrainConfig:
    """The ``train:`` section of a training config; types and ranges are checked on every
    construction (:func:`jetevo.config.check_fields`), settings named ``train.*``."""

    max_steps: int = setting(2000, ge=1)
    batch_size: int = setting(64, ge=1)  # jets per process and step
    lr: float = setting(3e-4, gt=0)
    weight_decay: float = setting(0.01, ge=0)
    warmup_steps: int = setting(100, ge=0)
    optimizer: Literal["adamw", "ranger"] = "adamw"
    permutation_min: bool = True
    val_every: int = setting(200, ge=1)  # steps between validations and checkpoints
    val_batches: int = setting(50, ge=1)  # validation: the first val_batches x batch_size jets
    precision: str = setting("auto", choices=PRECISIONS)  # auto: bf16-mixed on CUDA, else 32
    accelerator: str = setting("auto", choices=ACCELERATORS)
    devices: Literal["auto"] | int = setting("auto", ge=1)  # per node; auto: 1 on CPU
    num_nodes: int = setting(1, ge=1)
    strategy: str = setting("auto", choices=STRATEGIES)
    seed: int = setting(0, ge=0)
    num_workers: int = setting(0, ge=0)
    shuffle_buffer: int = setting(500_000, ge=1)  # jets each reader shuffles at a time
    stats_jets: int = setting(100_000, ge=1)  # jets the count baselines and resolution see
    logger: Literal["csv", "comet"] = "csv"
    init_from: str | None = None
    init_heads: Literal["keep", "reinit"] = "keep"
    # loss weights of the first generation steps: [root token, root split, splits of the
    # root's children, ...]; later splits weigh 1. Validation NLL stays unweighted.
    split_weights: list[float] | None = setting(None, ge=0)  # noqa: RUF009 (a field)

    # settings a resumed run may change: how far it goes, how often it validates (and
    # saves), how it loads and logs, on how many devices; any other change makes it
    # another run
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "max_steps", "val_every", "val_batches", "num_workers", "logger", "devices",
        "num_nodes",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self, "train.")


def parse_config(cfg: dict) -> tuple[ModelConfig, TrainConfig]:
    """The model and train sections of a training config, checked (:func:`jetevo.config.build`).
    ``model.n_codes`` is the tokenizer's: :func:`train` sets it from the token files."""
    if not isinstance(cfg, dict):
        raise SettingError(f"a training config takes the sections model and train, got {cfg!r}")
    unknown = sorted(map(str, set(cfg) - {"model", "train"}))
    if unknown:
        raise SettingError(
            f"unknown config section(s): {', '.join(unknown)} (expected model, train)"
        )
    model = cfg.get("model")
    for key, what in (("n_codes", "codebook size"), ("n_code_features", "number of features")):
        if isinstance(model, dict) and key in model:
            raise SettingError(
                f"model.{key} is the tokenizer's {what}, taken from the token files: remove it"
            )
    return build(ModelConfig, model, "model"), build(TrainConfig, cfg.get("train"), "train")


RUN_RECORD = "run.json"


def run_record(mc: ModelConfig, tc: TrainConfig, identity: str, train_files, val_files) -> dict:
    """What a run is started with, stored as ``OUT/run.json``: a resume must match it."""
    return {
        "kind": "jetevo-run",
        "model": asdict(mc),
        "train": asdict(tc),
        "tokenizer": identity,
        "train_files": file_fingerprints(train_files),
        "val_files": file_fingerprints(val_files),
    }


def check_resume(out: Path, record: dict) -> None:
    """Refuse, in one line, to resume ``OUT/lightning/last.ckpt`` with other inputs than the
    run's (``OUT/run.json``): another tokenizer, model, training setting (except
    :attr:`TrainConfig.RESUMABLE`) or token files."""
    saved_path, restart = out / RUN_RECORD, f"use a new --out, or remove {out / 'lightning'}"
    if not saved_path.is_file():
        raise InputError(
            out / "lightning" / "last.ckpt",
            f"no {RUN_RECORD} records what this run was started with, so resuming it cannot "
            f"be checked to continue the same run; {restart} to start over",
        )
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict) or saved.get("kind") != "jetevo-run":
        raise InputError(saved_path, f"not a readable jetevo run record; {restart}")
    diffs = []
    if saved.get("tokenizer") != record["tokenizer"]:
        diffs.append(f"tokenizer {saved.get('tokenizer')} -> {record['tokenizer']}")
    diffs += settings_difference(saved.get("model", {}), record["model"], "model.")
    # a record from before a setting existed ran with its default
    saved_train = {**asdict(TrainConfig()), **(saved.get("train") or {})}
    diffs += settings_difference(saved_train, record["train"], "train.", TrainConfig.RESUMABLE)
    for key, option in (("train_files", "--train"), ("val_files", "--val")):
        d = files_difference(saved.get(key, []), record[key], option)
        if d:
            diffs.append(d)
    if diffs:
        raise InputError(
            out,
            f"this run was started with other inputs ({'; '.join(diffs)}); a resume only "
            f"continues the same run: {restart} to start over",
        )


def _logger(kind: str, out: Path, log: Callable[[str], object]):
    from lightning.pytorch.loggers import CSVLogger

    if kind == "comet":
        try:
            import comet_ml  # noqa: F401
            from lightning.pytorch.loggers import CometLogger

            online = bool(os.environ.get("COMET_API_KEY"))
            if not online:
                log("comet: no COMET_API_KEY, logging offline")
            return CometLogger(
                project="jetevo", online=online, offline_directory=str(out / "comet")
            )
        except Exception as exc:  # missing package or no network: keep training, log to CSV
            log(f"comet logger unavailable ({type(exc).__name__}: {exc}); logging to CSV instead")
    elif kind != "csv":
        raise SettingError(f"train.logger takes csv or comet, got {kind!r}")
    return CSVLogger(str(out), name="logs")


def training_statistics(
    source: TokenSource, builder: SequenceBuilder, tokenizer, n_jets: int, seed: int
) -> tuple[CountBaselines, dict | None, int]:
    """The count baselines, the generation resolution scale (tree mode,
    :mod:`jetevo.tokenize.resolution`) and the number of jets they were fitted on: every
    training jet when there are at most ``n_jets``, else whole row groups drawn in a seeded
    order until they hold ``n_jets``. Read a slice at a time and kept compact, so memory
    goes with the sample, not the data; the pairs are in the order of the sequences'
    :meth:`~jetevo.model.sequences.TreeSequences.pairs` over all the sample, so on a small
    run the baselines are those of the whole training set."""
    flat = builder.mode == "flat"
    heads: list[tuple[np.ndarray, np.ndarray]] = []  # pairs of every position, per slice
    tails: list[tuple[np.ndarray, np.ndarray]] = []  # ... then the further ones (right child)
    nodes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    jets = seen_nodes = 0
    order = sample_units(source, n_jets, seed)
    for table, where, _ in source.read(order, 0, n_jets, builder.columns):
        seqs = builder.sequences(table, where)
        parents, children = (x.astype(np.int32) for x in seqs.pairs())
        k = len(seqs.tokens)
        heads.append((parents[:k], children[:k]))
        tails.append((parents[k:], children[k:]))
        jets += len(seqs)
        if not flat:
            counts, cols = node_columns(table, ["token", "parent", "depth"])
            first = np.repeat(np.cumsum(counts) - counts, counts) + seen_nodes
            parent = np.asarray(cols["parent"], np.int64)
            nodes.append((cols["token"], np.where(parent >= 0, first + parent, -1), cols["depth"]))
            seen_nodes += int(counts.sum())
    resolution = None
    if not flat:
        tok, parent, depth = (np.concatenate([n[i] for n in nodes]) for i in range(3))
        nodes.clear()
        scale = learn_scale(tokenizer, tok, parent, depth)
        resolution = {"log_pt_min": scale, "quantile": RESOLUTION_QUANTILE}
        del tok, parent, depth
    vocab = builder.vocab
    parents = np.concatenate([h[0] for h in heads] + [t[0] for t in tails])
    children = np.concatenate([h[1] for h in heads] + [t[1] for t in tails])
    known = children != IGNORE  # a cut flat jet's last position predicts nothing
    parents, children = parents[known], children[known]
    n_classes = vocab.n_flat_classes if flat else vocab.n_node_tokens
    baselines = CountBaselines.fit(parents, children, n_classes, vocab.size, seed=seed)
    return baselines, resolution, jets


def position_count(source: TokenSource, mode: str, max_len: int) -> tuple[int, int]:
    """Positions of an epoch and the jets longer than ``max_len`` (flat mode: cut to it),
    from the files' constituent counts alone. A tree-mode jet of N constituents has N
    positions: longer ones are refused here, before training starts, in one line."""
    positions = over = 0
    for path, n in constituent_counts(source):
        if mode == "flat":
            positions += int(np.minimum(n, max_len - 1).sum()) + len(n)
            over += int(np.count_nonzero(n > max_len - 1))
            continue
        positions += int(n.sum())
        too_long = int(np.count_nonzero(n > max_len))
        if too_long:
            raise InputError(
                path,
                f"{too_long} jet(s) need more than max_len={max_len} positions (model.max_len)",
            )
    return positions, over


def launcher_world() -> tuple[int, str] | None:
    """The processes a launcher started, as Lightning detects it (torchrun first, as
    Lightning does: it may run inside a SLURM job), or None."""
    if torch.distributed.is_available() and torch.distributed.is_torchelastic_launched():
        return int(os.environ["WORLD_SIZE"]), "torchrun"
    if "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in (
        "bash",
        "interactive",
    ):
        return int(os.environ["SLURM_NTASKS"]), "SLURM (srun)"
    return None


def check_launcher(tc: TrainConfig) -> None:
    """Refuse, in one line, devices x nodes that differ from the processes a launcher
    started (Lightning would stop with a traceback). ``devices: auto`` counts as Lightning
    resolves it: every visible GPU when it trains on CUDA, else 1."""
    found = launcher_world()
    if found is None:
        return
    world, launcher = found
    devices, shown = tc.devices, str(tc.devices)
    if devices == "auto":
        on_cuda = tc.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        devices = torch.cuda.device_count() if on_cuda else 1
        shown = f"auto ({devices} here)"
    if int(devices) * tc.num_nodes != world:
        raise SettingError(
            f"train.devices={shown} x train.num_nodes={tc.num_nodes} is not the "
            f"{world} process(es) {launcher} started: set train.devices to the processes per "
            "node and train.num_nodes to the nodes"
        )


def code_feature_table(tokenizer) -> np.ndarray:
    """What the model knows about each code: its standardized decoded features and, for a
    tree tokenizer, the standardized log pT and log mass of the root grid point it stands
    for at the root. Without the latter a root code would be a bare index among K, and a
    root distribution learned from a few hundred jets could not generalise from one grid
    cell to its neighbours (the demo's fine-tuned roots came out 55 GeV too light)."""
    codes = np.arange(tokenizer.cfg.n_codes)
    node = tokenizer.standardizer.forward(tokenizer.features_from_codes(codes))
    if tokenizer.root is None:
        return node.astype(np.float32)
    root = tokenizer.root.code_features()
    return np.concatenate([node, root], axis=1).astype(np.float32)


def find_tokenizer(info: dict, given: str | None, first_file: Path):
    from jetevo.tokenize.tokenizer import Tokenizer

    path = given or info.get("path")
    if not path or not Path(path).is_file():
        raise InputError(first_file, f"tokenizer checkpoint {path!r} not found; pass --tokenizer")
    tok = Tokenizer.load(path)
    if tok.identity != info["identity"]:
        raise InputError(
            path,
            f"tokenizer identity {tok.identity} differs from the token files' {info['identity']}",
        )
    return tok


def train(
    cfg: dict,
    train_paths,
    val_paths,
    out_dir: str | Path,
    tokenizer: str | None = None,
    progress: bool = True,
    log: Callable[[str], object] | None = None,
) -> Path:
    """Train on the token files ``train_paths``, validate on ``val_paths``; return the path of
    ``OUT/model.ckpt``. Status messages go to ``log`` (default: this module's logger at INFO;
    :func:`jetevo.runtime.configure_process` prints them on rank 0), on global rank zero
    only. Process-wide settings (warning filters, Lightning's banners, the allocator) are
    the entry point's, see :mod:`jetevo.runtime`."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities import rank_zero_only

    from jetevo.model.training_module import TokenData, TrainingModule, WriteOnce, hyperparameters

    say = rank_zero_only(logger.info if log is None else log)
    model_cfg, tc = parse_config(cfg)
    flat = model_cfg.mode == "flat"
    if flat and tc.split_weights:
        raise SettingError("train.split_weights weigh tree splits; flat mode has none (remove it)")
    out = ensure_writable_dir(out_dir)
    train_src = TokenSource.of(train_paths, "training token files")  # footers only
    files, info = list(train_src.files), train_src.tokenizer
    tok = find_tokenizer(info, tokenizer, files[0])
    if tok.features.particles_only != flat:
        raise InputError(
            files[0],
            f"tokens of feature set {tok.feature_set} are for "
            f"{'flat' if tok.features.particles_only else 'tree'} mode, model.mode is {model_cfg.mode}",
        )
    code_features = code_feature_table(tok)
    # the vocabulary and the code features are the tokenizer's
    mc = dataclasses.replace(
        model_cfg, n_codes=tok.cfg.n_codes, n_code_features=code_features.shape[1]
    )
    last = out / "lightning" / "last.ckpt"
    record = run_record(mc, tc, info["identity"], files, tree_files(val_paths))
    if last.exists():
        check_resume(out, record)
    check_launcher(tc)
    L.seed_everything(tc.seed, workers=True, verbose=False)

    log_z = code_log_z(tok)
    model = build_model(mc)
    model.set_code_features(torch.from_numpy(code_features), log_z)
    model.tokenizer_identity = info["identity"]
    # tree mode: every split's children in the order of the model's stored log z (what
    # generation uses)
    order_log_z = None if flat else cast(JetEvolutionModel, model).log_z_table()
    builder = SequenceBuilder(mc.mode, mc.n_codes, mc.max_len, order_log_z, mc.scale_bins)
    val_src = TokenSource.of(val_paths, "validation token files")
    if val_src.tokenizer["identity"] != info["identity"]:
        raise InputError(
            val_src.files[0],
            "validation tokens come from another tokenizer than the training tokens",
        )
    positions, over = position_count(train_src, mc.mode, mc.max_len)
    if over:
        say(f"{over} training jets cut to their {mc.max_len - 1} hardest particles")
    init_report = None
    if tc.init_from:
        init_report = load_init(model, tc.init_from, tc.init_heads)
        say(
            f"init_from {tc.init_from} (heads: {tc.init_heads}): missing keys {init_report['missing'] or 'none'}; unexpected keys {init_report['unexpected'] or 'none'}"
        )

    cuda = torch.cuda.is_available()
    precision = tc.precision if tc.precision != "auto" else ("bf16-mixed" if cuda else "32-true")
    callbacks: list = [
        ModelCheckpoint(
            dirpath=str(out / "lightning"), save_last=True, every_n_train_steps=tc.val_every
        )
    ]
    if not last.exists():  # a new run: record what it starts with
        callbacks.append(WriteOnce(out / RUN_RECORD, record))
    # devices, nodes and strategy as configured: Lightning detects torchrun and srun itself
    trainer = L.Trainer(
        default_root_dir=str(out),  # what Lightning writes on its own (SLURM requeue)
        max_steps=tc.max_steps,
        accelerator=tc.accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=tc.strategy,
        precision=cast(Any, precision),  # a config string; Lightning validates it
        logger=_logger(tc.logger, out, say),
        callbacks=callbacks,
        val_check_interval=tc.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=min(10, tc.val_every),
        use_distributed_sampler=False,  # the data split their jets over the processes
    )
    module = TrainingModule(*hyperparameters(mc, tc), info["identity"], net=model)
    data = TokenData(train_src, val_src, builder, tc, say)
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.exists() else None)
    final = out / "model.ckpt"
    if not trainer.is_global_zero:
        return final
    baselines, resolution, sample = training_statistics(
        train_src, builder, tok, tc.stats_jets, tc.seed
    )
    val = trainer.callback_metrics.get("val_nll")
    save_model(
        model.cpu(),
        final,
        {
            "baselines": baselines.state(),
            "resolution": resolution,
            "tokenizer": {"identity": info["identity"], "path": str(tok.path)},
            "train": {
                "steps": trainer.global_step,
                "val_nll": float(val) if val is not None else None,
                "init_from": tc.init_from,
                "init_keys": init_report,
                "parameters": count_parameters(model),
                "positions_per_epoch": positions,
                "statistics_jets": sample,
            },
            "train_config": cfg,
        },
    )
    say(
        f"step {trainer.global_step}: val_nll {float(val) if val is not None else float('nan'):.4f}; saved {final}"
    )
    return final
