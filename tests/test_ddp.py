"""DDP training on the CPU (gloo): two processes under torchrun take the steps one process
takes with the same global batch, a two-process run resumes on one, Lightning's
``last.ckpt`` reloads with ``load_from_checkpoint`` outside jetevo's code, and device
settings that cannot work are one-line errors."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch

from jetevo.cli import main
from jetevo.errors import SettingError
from jetevo.model.checkpoint import load_model
from jetevo.model.streaming import SequenceBuilder, StreamingDataset, TokenSource
from jetevo.model.train import TrainConfig, check_launcher
from jetevo.tokenize.resolution import code_log_z

# one step is a whole epoch of the 110 test jets (so any split of them over the processes
# is the same global batch), validation every step over all of them, no dropout
RUN = (
    "model: {n_layer: 1, n_head: 2, n_embd: 16, dropout: 0.0}\n"
    "train: {max_steps: 3, batch_size: 55, val_every: 1, val_batches: 2, warmup_steps: 1}\n"
)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def train_args(cfg, tokens, out, *overrides) -> list[str]:
    return ["train", "--config", str(cfg), "--train", str(tokens), "--val", str(tokens),
            "--out", str(out), "--quiet", *overrides]  # fmt: skip


def metrics(run, version: int = 0) -> dict[str, dict[int, float]]:
    """Per-step train_nll and val_nll of a run's CSV log."""
    out: dict[str, dict[int, float]] = {"train_nll": {}, "val_nll": {}}
    with open(run / "logs" / f"version_{version}" / "metrics.csv") as fh:
        for row in csv.DictReader(fh):
            for key, values in out.items():
                if row.get(key):
                    values[int(row["step"])] = float(row[key])
    return out


@pytest.fixture(scope="module")
def runs(token_dir, tmp_path_factory):
    """The same training on two processes (torchrun, gloo) and on one with their global
    batch: (config, two-process run folder, one-process run folder)."""
    d = tmp_path_factory.mktemp("ddp")
    cfg = d / "run.yaml"
    cfg.write_text(RUN)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node=2", "-m", "jetevo.cli"]  # fmt: skip
    two = subprocess.run(
        [*torchrun, *train_args(cfg, token_dir, d / "two", "train.devices=2")],
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    # logs on rank zero only: one line of each, not one per process
    assert two.stdout.count("training jets in") == 1 and two.stdout.count("saved") == 1
    one = main(train_args(cfg, token_dir, d / "one", "train.batch_size=110"))
    assert one == 0
    return cfg, d / "two", d / "one"


def test_two_processes_take_the_steps_of_one_with_their_global_batch(
    runs, token_dir, tiny_tokenizer
):
    _, two, one = runs
    m2, m1 = metrics(two), metrics(one)
    assert sorted(m2["train_nll"]) == sorted(m1["train_nll"]) == [0, 1, 2]
    for key in ("train_nll", "val_nll"):
        for step, value in m1[key].items():
            assert m2[key][step] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, step)
    # a real test of the normalisation: the two processes' batches hold different numbers
    # of children, so averaging per-process means would not give the one-process loss
    builder = SequenceBuilder("tree", 64, 128, code_log_z(tiny_tokenizer), 32)
    source = TokenSource.of(token_dir)
    children = []
    for rank in range(2):
        (batch,) = StreamingDataset(source, builder, 55, 500_000, 0, rank, 2).epoch(0, 0)
        children.append(int((batch["left"] != -100).sum() + (batch["right"] != -100).sum()))
    assert children[0] != children[1]
    # the final models agree too
    w2, w1 = (
        load_model(two / "model.ckpt").state_dict(),
        load_model(one / "model.ckpt").state_dict(),
    )
    assert all(torch.allclose(w2[k], w1[k], atol=1e-5) for k in w1)


def test_a_two_process_checkpoint_resumes_on_one(runs, token_dir, tmp_path, capsys):
    cfg, two, _ = runs
    run = tmp_path / "resumed"
    shutil.copytree(two, run)
    assert main(train_args(cfg, token_dir, run, "train.max_steps=5")) == 0  # devices: auto
    assert torch.load(run / "model.ckpt", weights_only=False)["train"]["steps"] == 5
    assert sorted(metrics(run, version=1)["train_nll"]) == [3, 4]  # the steps continue
    assert "resumed on 1 process(es)" in capsys.readouterr().out
    # any other setting is still another run
    assert main(train_args(cfg, token_dir, run, "train.max_steps=6", "train.lr=1e-2")) == 2
    err = capsys.readouterr().err
    assert "train.lr 0.0003 -> 0.01" in err and "train.devices" not in err


def test_last_ckpt_reloads_with_load_from_checkpoint_in_a_fresh_process(runs):
    _, two, _ = runs
    code = (
        "import sys, torch\n"
        "from jetevo.model.training_module import TrainingModule\n"
        "from jetevo.model.checkpoint import load_model\n"
        "m = TrainingModule.load_from_checkpoint(sys.argv[1], map_location='cpu')\n"
        "ref = load_model(sys.argv[2]).state_dict()\n"
        "own = m.model.state_dict()\n"
        "assert own.keys() == ref.keys() and all(torch.equal(own[k], ref[k]) for k in ref)\n"
        "print(m.hparams['train']['batch_size'], m.hparams['model']['n_embd'], "
        "m.model.tokenizer_identity == load_model(sys.argv[2]).tokenizer_identity)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(two / "lightning" / "last.ckpt"), str(two / "model.ckpt")],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["55", "16", "True"]


def test_device_settings_that_cannot_work_are_one_line_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto: one device
    for bad in (0, "two", True):
        with pytest.raises(
            SettingError, match=r"train\.devices takes one of auto or an integer >= 1, got "
        ):
            TrainConfig(devices=bad)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # as torchrun sets it
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(SettingError, match=r"train.devices=2 x train.num_nodes=1 is not the 4"):
        check_launcher(TrainConfig(devices=2))
    check_launcher(TrainConfig(devices=2, num_nodes=2))
    with pytest.raises(SettingError, match=r"train.devices=auto \(1 here\) x"):
        check_launcher(TrainConfig())  # auto on the CPU: one device
    check_launcher(TrainConfig(num_nodes=4))
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    with pytest.raises(SettingError, match=r"8 process\(es\) SLURM \(srun\) started"):
        check_launcher(TrainConfig(devices=4, num_nodes=1))
    check_launcher(TrainConfig(devices=4, num_nodes=2))
