"""The Lightning pieces of ``jetevo train``, at module level so that Lightning's own
checkpoints (``OUT/lightning/last.ckpt``) reload outside our code::

    from jetevo.model.training_module import TrainingModule
    module = TrainingModule.load_from_checkpoint("runs/pretrain/lightning/last.ckpt")

- :class:`TrainingModule`: the loss of either mode, its optimizer and schedule; its
  hyperparameters are the model config, the train config and the tokenizer identity, from
  which it rebuilds the model (the weights and the code features are in the state dict).
- :class:`TokenData`: the streaming training batches and the fixed validation batches of
  every process (:mod:`jetevo.model.streaming`), and where a resumed run's data stream
  continues.
- :class:`WriteOnce`: a file written by global rank zero when training starts.

Under DDP the training loss is normalised by the children (flat mode: targets) of the
*global* batch, so N processes of ``batch_size`` jets take the same step as one process
of N x ``batch_size`` jets; the logged ``train_nll`` is the global batch's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from jetevo.errors import SettingError
from jetevo.io.atomic import atomic_path
from jetevo.model.checkpoint import Model, build_model
from jetevo.model.gpt import ModelConfig
from jetevo.model.loss import flat_nll, split_nll, weighted_split_loss
from jetevo.model.streaming import (
    CheckedBatches,
    SequenceBuilder,
    StreamingDataset,
    TokenSource,
    validation_batches,
)
from jetevo.model.train import TrainConfig


class TrainingModule(L.LightningModule):
    """Training of a jet model of either mode. ``model``, ``train``: the model and train
    configs as dicts (``ModelConfig.to_dict()``, ``asdict(TrainConfig)``); ``net``: the
    model to train (built from ``model`` when left out, as ``load_from_checkpoint`` does)."""

    def __init__(
        self,
        model: dict,
        train: dict,
        tokenizer_identity: str | None = None,
        net: Model | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.mc, self.tc = ModelConfig(**model), TrainConfig(**train)
        self.model = net if net is not None else build_model(self.mc)
        self.model.tokenizer_identity = tokenizer_identity
        self.flat = self.mc.mode == "flat"
        self._val: list[torch.Tensor] = []

    def _losses(self, batch, stats: bool = False) -> tuple[dict, torch.Tensor]:
        if self.flat:
            out = flat_nll(self.model, batch, stats)
            return out, out["n_targets"]
        out = split_nll(self.model, batch, self.tc.permutation_min, stats)
        return out, out["n_children"]

    def training_step(self, batch, _):
        out, n = self._losses(batch)
        weighted = not self.flat and bool(self.tc.split_weights)
        loss = out["nll_sum"] / n.clamp(min=1)
        if weighted:
            loss = weighted_split_loss(out["per_split"], batch, self.tc.split_weights)
        # this process's share of the global batch: DDP averages the processes' gradients,
        # so a share of n / N_global x world makes that the global mean (1 on one process)
        local = torch.stack([out["nll_sum"].detach().float(), n.float(), loss.detach().float() * n])
        total = self.trainer.strategy.reduce(local, reduce_op="sum")
        share = n / total[1].clamp(min=1) * self.trainer.world_size
        self.log("train_nll", total[0] / total[1].clamp(min=1), prog_bar=True, batch_size=int(n))
        if weighted:
            self.log("train_loss", total[2] / total[1].clamp(min=1), batch_size=int(n))
        return loss * share

    def validation_step(self, batch, _):
        out, n = self._losses(batch, stats=True)
        self._val.append(torch.stack([out["nll_sum"].float(), n.float(), out["top1"].float()]))

    def on_validation_epoch_end(self):
        # every process has validation jets (streaming.validation_batches), so all reduce
        s = torch.stack(self._val).sum(0) if self._val else torch.zeros(3, device=self.device)
        s = self.trainer.strategy.reduce(s, reduce_op="sum")
        if s[1] > 0:
            self.log("val_nll", s[0] / s[1], prog_bar=True, sync_dist=True)
            self.log("val_top1", s[2] / s[1], sync_dist=True)
        self._val = []

    def configure_optimizers(self):
        tc = self.tc
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


class TokenData(L.LightningDataModule):
    """Training and validation batches of every process, built when Lightning asks for
    them (then the process's rank and the world size are known). The training stream is
    endless (one data epoch after another, :class:`~jetevo.model.streaming.StreamingDataset`);
    its position is saved in Lightning's checkpoints, so a resume with the same number of
    processes and workers continues with the very batches the run would have had. With
    another number, the epoch continues at the same fraction of its steps: the jets each
    process had read cannot be re-split, so within that epoch some jets may come twice and
    others not at all; later epochs see every jet once."""

    def __init__(
        self,
        train: TokenSource,
        val: TokenSource,
        builder: SequenceBuilder,
        tc: TrainConfig,
        log: Callable[[str], object] = print,
    ):
        super().__init__()
        self.train, self.val, self.builder, self.tc = train, val, builder, tc
        self.say = rank_zero_only(log)
        self.dataset: StreamingDataset | None = None
        self._restored: dict | None = None
        self._start, self._start_step = (0, 0), 0

    def train_dataloader(self):
        trainer, tc = self.trainer, self.tc
        assert trainer is not None
        ds = StreamingDataset(
            self.train, self.builder, tc.batch_size, tc.shuffle_buffer, tc.seed,
            trainer.global_rank, trainer.world_size, tc.num_workers,
        )  # fmt: skip
        lay = ds.layout
        self.say(
            f"{lay.n_jets} training jets in {len(self.train.units)} row groups of "
            f"{len(self.train.files)} file(s); an epoch is {lay.steps} steps of at most "
            f"{tc.batch_size} jets on each of {lay.world} process(es) "
            f"({lay.workers} reader(s) each, shuffle windows of {tc.shuffle_buffer} jets)"
        )
        ds.start = self._start = self._resume_position(ds)
        self._start_step = trainer.global_step
        self.dataset = ds
        loader = torch.utils.data.DataLoader(
            ds, batch_size=None, num_workers=tc.num_workers, pin_memory=torch.cuda.is_available()
        )
        return CheckedBatches(loader)

    def val_dataloader(self):
        trainer, tc = self.trainer, self.tc
        assert trainer is not None
        batches = validation_batches(
            self.val, self.builder, tc.val_batches * tc.batch_size, tc.batch_size,
            trainer.global_rank, trainer.world_size,
        )  # fmt: skip
        return torch.utils.data.DataLoader(batches, batch_size=None)

    def _resume_position(self, ds: StreamingDataset) -> tuple[int, int]:
        s, lay = self._restored, ds.layout
        if not s:
            return 0, 0
        if (s["steps"], s["world"], s["workers"]) == (lay.steps, lay.world, lay.workers):
            return int(s["epoch"]), int(s["batch"])
        batch = int(s["batch"]) * lay.steps // int(s["steps"])
        self.say(
            f"resumed on {lay.world} process(es) x {lay.workers} reader(s), started on "
            f"{s['world']} x {s['workers']}: data epoch {s['epoch']} continues at step {batch} "
            f"of {lay.steps} (was {s['batch']} of {s['steps']}); in this epoch some jets may "
            "repeat and others be left out"
        )
        return int(s["epoch"]), batch

    def state_dict(self) -> dict:
        if self.dataset is None or self.trainer is None:
            return {}
        lay = self.dataset.layout
        epoch, batch = self._start
        batch += self.trainer.global_step - self._start_step
        return {"epoch": epoch + batch // lay.steps, "batch": batch % lay.steps,
                "steps": lay.steps, "world": lay.world, "workers": lay.workers}  # fmt: skip

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = dict(state_dict) or None


class WriteOnce(L.Callback):
    """Write ``record`` as JSON to ``path`` on global rank zero when fitting starts."""

    def __init__(self, path: Path, record: dict):
        self.path, self.record = path, record

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self.record, indent=1) + "\n")


def hyperparameters(mc: ModelConfig, tc: TrainConfig) -> tuple[dict, dict]:
    """The module's ``model`` and ``train`` arguments of these configs."""
    return mc.to_dict(), asdict(tc)


__all__ = ["TokenData", "TrainingModule", "WriteOnce", "hyperparameters"]
