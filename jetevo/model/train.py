"""``jetevo train``: Lightning training of the jet-evolution model on token files.

CPU and GPU (bf16 mixed precision on CUDA), one or many devices (DDP through torchrun, see
``cluster/``), Ranger or AdamW, CSV logging (Comet optional, offline without a key, never a
crash when missing), resumable from ``OUT/lightning/last.ckpt``: ``OUT/run.json`` records what
a run was started with (model and training settings, tokenizer identity, token files) and a
resume with other ones is refused (:func:`check_resume`). The final ``OUT/model.ckpt`` embeds
the config, the tokenizer identity and the count baselines of the training data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import awkward as ak
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
from jetevo.io.atomic import atomic_path, ensure_writable_dir
from jetevo.model.baselines import CountBaselines
from jetevo.model.checkpoint import Model, build_model, save_model
from jetevo.model.checkpoint import init_from as load_init
from jetevo.model.data import loader
from jetevo.model.gpt import ModelConfig, count_parameters
from jetevo.model.loss import flat_nll, split_nll, weighted_split_loss
from jetevo.model.sequences import FlatSequences, TreeSequences, token_file_info
from jetevo.model.tree import JetEvolutionModel
from jetevo.tokenize.resolution import QUANTILE as RESOLUTION_QUANTILE
from jetevo.tokenize.resolution import code_log_z, learn_scale
from jetevo.trees.format import load, tree_files

logger = logging.getLogger(__name__)


PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


@dataclass
class TrainConfig:
    """The ``train:`` section of a training config; types and ranges are checked on every
    construction (:func:`jetevo.config.check_fields`), settings named ``train.*``."""

    max_steps: int = setting(2000, ge=1)
    batch_size: int = setting(64, ge=1)
    lr: float = setting(3e-4, gt=0)
    weight_decay: float = setting(0.01, ge=0)
    warmup_steps: int = setting(100, ge=0)
    optimizer: Literal["adamw", "ranger"] = "adamw"
    permutation_min: bool = True
    val_every: int = setting(200, ge=1)  # steps between validations and checkpoints
    val_batches: int = setting(50, ge=1)
    precision: str = setting("auto", choices=PRECISIONS)  # auto: bf16-mixed on CUDA, else 32
    devices: str | int = "auto"
    seed: int = setting(0, ge=0)
    num_workers: int = setting(0, ge=0)
    logger: Literal["csv", "comet"] = "csv"
    init_from: str | None = None
    init_heads: Literal["keep", "reinit"] = "keep"
    # loss weights of the first generation steps: [root token, root split, splits of the
    # root's children, ...]; later splits weigh 1. Validation NLL stays unweighted.
    split_weights: list[float] | None = setting(None, ge=0)  # noqa: RUF009 (a field)

    # settings a resumed run may change: how far it goes, how often it validates (and
    # saves), how it loads and logs; any other change makes it another run
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "max_steps", "val_every", "val_batches", "num_workers", "logger",
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
    diffs += settings_difference(
        saved.get("train", {}), record["train"], "train.", TrainConfig.RESUMABLE
    )
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


def _lightning_module(model: Model, tc: TrainConfig):
    """The Lightning module of either mode (built here so that importing this module does
    not import Lightning)."""
    import lightning as L

    flat = model.cfg.mode == "flat"

    class TrainingModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self._val: list[torch.Tensor] = []

        def _losses(self, batch, stats: bool = False) -> tuple[dict, torch.Tensor]:
            if flat:
                out = flat_nll(self.model, batch, stats)
                return out, out["n_targets"]
            out = split_nll(self.model, batch, tc.permutation_min, stats)
            return out, out["n_children"]

        def training_step(self, batch, _):
            out, n = self._losses(batch)
            nll = out["nll_sum"] / n.clamp(min=1)
            self.log("train_nll", nll, prog_bar=True, batch_size=int(n))
            if flat or not tc.split_weights:
                return nll
            loss = weighted_split_loss(out["per_split"], batch, tc.split_weights)
            self.log("train_loss", loss, batch_size=int(n))
            return loss

        def validation_step(self, batch, _):
            out, n = self._losses(batch, stats=True)
            self._val.append(torch.stack([out["nll_sum"].float(), n.float(), out["top1"].float()]))

        def on_validation_epoch_end(self):
            if self._val:
                s = torch.stack(self._val).sum(0)
                s = self.all_gather(s).reshape(-1, 3).sum(0) if self.trainer.world_size > 1 else s
                self.log("val_nll", s[0] / s[1], prog_bar=True, sync_dist=False)
                self.log("val_top1", s[2] / s[1], sync_dist=False)
            self._val = []

        def configure_optimizers(self):
            decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
            other = [p for n, p in self.model.named_parameters() if p.dim() < 2]
            groups = [
                {"params": decay, "weight_decay": tc.weight_decay},
                {"params": other, "weight_decay": 0.0},
            ]
            if tc.optimizer == "ranger":
                from pytorch_optimizer import Ranger

                opt = Ranger(groups, lr=tc.lr)
            elif tc.optimizer == "adamw":
                opt = torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.95))
            else:
                raise SettingError(f"train.optimizer takes ranger or adamw, got {tc.optimizer!r}")

            def schedule(step: int) -> float:
                if step < tc.warmup_steps:
                    return (step + 1) / tc.warmup_steps
                progress = (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps)
                return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return TrainingModule()


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


def training_resolution_scale(tokenizer, files) -> float:
    """The generation resolution scale (log GeV) learned from the training trees
    (:mod:`jetevo.tokenize.resolution`)."""
    trees = load(files, columns=["token", "parent", "depth"])
    counts = ak.to_numpy(ak.num(trees["token"], axis=1)).astype(np.int64)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    tok, parent, depth = (
        ak.to_numpy(ak.flatten(trees[k])).astype(np.int64) for k in ("token", "parent", "depth")
    )
    return learn_scale(tokenizer, tok, np.where(parent >= 0, first + parent, -1), depth)


def code_feature_table(tokenizer) -> np.ndarray:
    """Standardized decoded features of every code: what the model knows about each token."""
    codes = np.arange(tokenizer.cfg.n_codes)
    return tokenizer.standardizer.forward(tokenizer.features_from_codes(codes)).astype(np.float32)


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
    :func:`jetevo.runtime.configure_process` prints them on rank 0). Process-wide settings
    (warning filters, Lightning's banners, the allocator) are the entry point's, see
    :mod:`jetevo.runtime`."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    log = logger.info if log is None else log
    model_cfg, tc = parse_config(cfg)
    flat = model_cfg.mode == "flat"
    if flat and tc.split_weights:
        raise SettingError("train.split_weights weigh tree splits; flat mode has none (remove it)")
    out = ensure_writable_dir(out_dir)
    files, info = token_file_info(train_paths)
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
    L.seed_everything(tc.seed, workers=True, verbose=False)

    log_z = code_log_z(tok)
    model = build_model(mc)
    model.set_code_features(torch.from_numpy(code_features), log_z)
    model.tokenizer_identity = info["identity"]
    vocab = mc.vocab
    train_seq: TreeSequences | FlatSequences
    val_seq: TreeSequences | FlatSequences
    if flat:
        train_seq = FlatSequences(train_paths, vocab, mc.max_len)
        val_seq = FlatSequences(val_paths, vocab, mc.max_len)
        if train_seq.truncated:
            log(
                f"{train_seq.truncated} training jets cut to their {mc.max_len - 1} hardest particles"
            )
    else:
        # the order of every split's children: the model's stored log z (what generation uses)
        assert isinstance(model, JetEvolutionModel)
        order_log_z = model.log_z_table()
        train_seq = TreeSequences(train_paths, vocab, mc.max_len, order_log_z, mc.scale_bins)
        val_seq = TreeSequences(val_paths, vocab, mc.max_len, order_log_z, mc.scale_bins)
    if val_seq.tokenizer["identity"] != info["identity"]:
        raise InputError(
            val_seq.files[0],
            "validation tokens come from another tokenizer than the training tokens",
        )
    init_report = None
    if tc.init_from:
        init_report = load_init(model, tc.init_from, tc.init_heads)
        log(
            f"init_from {tc.init_from} (heads: {tc.init_heads}): missing keys {init_report['missing'] or 'none'}; unexpected keys {init_report['unexpected'] or 'none'}"
        )

    parents, children = train_seq.pairs()
    n_classes = vocab.n_flat_classes if flat else vocab.n_node_tokens
    baselines = CountBaselines.fit(parents, children, n_classes, vocab.size, seed=tc.seed)
    resolution = None
    if not flat:
        resolution = {
            "log_pt_min": training_resolution_scale(tok, files),
            "quantile": RESOLUTION_QUANTILE,
        }

    cuda = torch.cuda.is_available()
    precision = tc.precision if tc.precision != "auto" else ("bf16-mixed" if cuda else "32-true")
    # under torchrun (cluster/train_slurm.sh) every process drives one device; Lightning
    # needs the per-node count and the number of nodes to match the launcher's world
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    devices = local_world if world > 1 else tc.devices
    num_nodes = max(1, world // max(1, local_world))
    ckpt_cb = ModelCheckpoint(
        dirpath=str(out / "lightning"), save_last=True, every_n_train_steps=tc.val_every
    )
    batches_per_epoch = max(1, -(-len(train_seq) // tc.batch_size))
    train_loader = loader(train_seq, tc.batch_size, True, tc.seed, tc.num_workers)
    val_loader = loader(val_seq, tc.batch_size, False, tc.seed, tc.num_workers)
    trainer = L.Trainer(
        max_steps=tc.max_steps,
        accelerator="auto",
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp" if world > 1 else "auto",
        precision=cast(Any, precision),  # a config string; Lightning validates it
        logger=_logger(tc.logger, out, log),
        callbacks=[ckpt_cb],
        val_check_interval=min(tc.val_every, batches_per_epoch),
        check_val_every_n_epoch=None,
        limit_val_batches=tc.val_batches,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=min(10, batches_per_epoch),
    )
    module = _lightning_module(model, tc)
    if trainer.is_global_zero and not last.exists():  # a new run: record what it starts with
        with atomic_path(out / RUN_RECORD) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
    trainer.fit(
        module,
        train_loader,
        val_loader,
        ckpt_path=str(last) if last.exists() else None,
    )
    val = trainer.callback_metrics.get("val_nll")
    final = out / "model.ckpt"
    if trainer.is_global_zero:
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
                    "positions_per_epoch": int(train_seq.offsets[-1]),
                },
                "train_config": cfg,
            },
        )
        log(
            f"step {trainer.global_step}: val_nll {float(val) if val is not None else float('nan'):.4f}; saved {final}"
        )
    return final
