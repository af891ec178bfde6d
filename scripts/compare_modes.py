"""Head-to-head: the tree model against the flat (OmniJet-alpha) baseline and the bigram
reference generator, on the same data, measured on the particles.

Same simulated data (AOJ-layout QCD for pretraining, JetClass-layout tops for fine-tuning,
held-out tops as the reference), one tokenizer per mode with the same codebook size and
budget, the same model size and training positions x steps, the same number of generated
jets; then ``jetevo evaluate --massless`` of every mode against the same held-out tops.

    python scripts/compare_modes.py --profile demo --out compare_demo
    python scripts/compare_modes.py --profile medium --out compare_medium

Writes ``OUT/<mode>/generated/`` (modes ``tree``, ``flat``, ``bigram``), the held-out trees
it compared against to ``OUT/reference/``, every number to ``OUT/results.json``, a table to
``OUT/results.md`` and every command it ran to ``OUT/commands.sh``. A rerun with the same
profile skips the stages whose outputs exist; another profile in the same OUT is refused.
The ``gpu`` profile is sized for one GPU (default model sizes); the CPU steps (simulation,
reclustering, tokenizers) are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JETEVO = str(Path(sys.executable).with_name("jetevo"))
OBSERVABLES = ("mass", "multiplicity", "tau21", "tau32", "d2", "zg", "rg", "n_primary")
MODES = ("tree", "flat", "bigram")

# sizes per profile: simulated jets, codebook and tokenizer steps, model, training steps,
# generated jets. medium uses K = 2048 codes: at 4 x 128 on 2 CPU cores the output layer over
# 2K node tokens dominates a training step (K = 8192 made it 2.9x slower, scripts/bench_train.py)
PROFILES: dict[str, dict] = {
    "demo": {
        "aoj_jets": 1000, "top_train": 500, "top_val": 250, "top_heldout": 500,
        "n_codes": 8192, "tokenizer_steps": 150, "model": {"n_layer": 2, "n_head": 4, "n_embd": 64},
        "batch_size": 16, "pretrain_steps": 150, "finetune_steps": 400, "lr": 1.0e-3,
        "finetune_lr": 5.0e-4, "val_every": 50, "generate": 1000, "device": "cpu",
    },
    "medium": {
        "aoj_jets": 20000, "top_train": 10000, "top_val": 1000, "top_heldout": 5000,
        "n_codes": 2048, "tokenizer_steps": 1000, "model": {"n_layer": 4, "n_head": 4, "n_embd": 128},
        "batch_size": 32, "pretrain_steps": 1500, "finetune_steps": 2500, "lr": 6.0e-4,
        "finetune_lr": 3.0e-4, "val_every": 500, "generate": 5000, "device": "cpu",
    },
    "gpu": {
        "aoj_jets": 40000, "top_train": 20000, "top_val": 2000, "top_heldout": 10000,
        "n_codes": 8192, "tokenizer_steps": 2000, "model": {"n_layer": 3, "n_head": 8, "n_embd": 256},
        "batch_size": 256, "pretrain_steps": 3000, "finetune_steps": 3000, "lr": 6.0e-4,
        "finetune_lr": 3.0e-4, "val_every": 1000, "generate": 10000, "device": "cuda",
    },
}  # fmt: skip


class Study:
    def __init__(self, out: Path, profile: str, workers: int, profiles: dict | None = None):
        self.out, self.name, self.workers = out, profile, workers
        self.p = (profiles or PROFILES)[profile]
        self.log = out / "commands.sh"
        self.seconds: dict[str, float] = {}

    def run(self, stage: str, done: Path, *args: str) -> None:
        """Run one jetevo command unless its output ``done`` exists (a rerun resumes)."""
        if done.exists():
            return
        cmd = [JETEVO, *map(str, args)]
        with self.log.open("a") as f:
            f.write(shlex.join(["jetevo", *cmd[1:]]) + "\n")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        self.seconds[stage] = round(time.perf_counter() - t0, 1)
        times = self.out / "seconds.json"
        old = json.loads(times.read_text()) if times.exists() else {}
        times.write_text(json.dumps({**old, stage: self.seconds[stage]}, indent=1))

    # ------------------------------------------------------------------ data
    def simulate(self, jobs) -> None:
        """Each (name, process, jets, seed, index, folder) simulated once (a marker file)."""
        for name, process, n, seed, index, folder in jobs:
            marker = self.out / "sim" / f"{name}.done"
            self.run(f"simulate_{name}", marker, "simulate", "--process", process, "--n-jets", n,
                     "--seed", seed, "--index", index, "--out", folder, "--workers",
                     self.workers, "--quiet")  # fmt: skip
            marker.touch()

    def recluster_aoj(self) -> list[Path]:
        """The AOJ trees in two shards: one for pretraining, one for its validation."""
        sim, trees = self.out / "sim", self.out / "trees"
        half = (self.p["aoj_jets"] + 1) // 2
        self.run("recluster_aoj", trees / "aoj", "recluster", sim / "aoj", "--out", trees / "aoj",
                 "--workers", self.workers, "--shard-size", half, "--quiet")  # fmt: skip
        return sorted((trees / "aoj").glob("*.trees.parquet"))

    def data(self) -> dict[str, list[Path]]:
        p, sim, trees = self.p, self.out / "sim", self.out / "trees"
        jobs = [
            ("aoj", "qcd-wide", p["aoj_jets"], 13, 0, sim / "aoj"),
            ("top_train", "top", p["top_train"], 11, 0, sim / "jetclass"),
            ("top_val", "top", p["top_val"], 21, 1, sim / "jetclass"),
            ("top_heldout", "top", p["top_heldout"], 31, 2, sim / "jetclass"),
        ]
        self.simulate(jobs)
        aoj = self.recluster_aoj()
        self.run("recluster_tops", trees / "tops", "recluster", sim / "jetclass", "--out",
                 trees / "tops", "--workers", self.workers, "--quiet")  # fmt: skip
        tops = {i: sorted((trees / "tops").glob(f"TTBar_00{i}*.trees.parquet")) for i in range(3)}
        reference = self.out / "reference"
        if not reference.exists():
            reference.mkdir()
            for f in tops[2]:
                shutil.copy2(f, reference / f.name)
        parts = {
            "aoj_train": aoj[:1], "aoj_val": aoj[1:2], "top_train": tops[0], "top_val": tops[1],
            "reference": sorted(reference.glob("*.parquet")),
        }  # fmt: skip
        empty = [k for k, v in parts.items() if not v]
        if empty:
            sys.exit(f"{trees}: no tree files for {', '.join(empty)}")
        return parts

    # ------------------------------------------------------------------ one mode
    def tokenizer(
        self,
        mode: str,
        d: dict,
        training=("aoj_train", "top_train"),
        encode=("aoj_train", "aoj_val", "top_train", "top_val", "reference"),
        report_on: str | None = "reference",
    ) -> Path:
        """The mode's tokenizer trained on the ``training`` parts (its report on
        ``report_on``), and the token files of the ``encode`` parts."""
        cfg = "tokenizer_flat.yaml" if mode == "flat" else "tokenizer.yaml"
        ckpt = self.out / mode / "tokenizer" / "tok.ckpt"
        trees = [f for part in training for f in d[part]]
        self.run(f"{mode}_tokenizer", ckpt, "tokenizer", "train", "--config", ROOT / "configs" / cfg,
                 "--out", ckpt, "--quiet", "--trees", *trees,
                 f"max_steps={self.p['tokenizer_steps']}", f"n_codes={self.p['n_codes']}",
                 "checkpoint_every=100000")  # fmt: skip
        if report_on is not None:
            report = self.out / mode / "tokenizer" / "report.json"
            self.run(f"{mode}_tokenizer_eval", report, "tokenizer", "eval", "--ckpt", ckpt,
                     "--trees", *d[report_on], "--json", report)  # fmt: skip
        tokens = self.out / mode / "tokens"
        for part in encode:
            self.run(f"{mode}_encode_{part}", tokens / part, "tokenizer", "encode", "--ckpt", ckpt,
                     "--trees", *d[part], "--out", tokens / part)  # fmt: skip
        return ckpt

    def train(self, mode: str) -> Path:
        p, base = self.p, "flat_base.yaml" if mode == "flat" else "tree_base.yaml"
        tokens, models = self.out / mode / "tokens", self.out / mode / "model"
        model = [f"model.{k}={v}" for k, v in p["model"].items()]
        common = [f"train.batch_size={p['batch_size']}", f"train.val_every={p['val_every']}",
                  "train.val_batches=20", "train.warmup_steps=50"]  # fmt: skip
        pre, fine = models / "pretrain", models / "finetune"
        self.run(f"{mode}_pretrain", pre / "model.ckpt", "train", "--config", ROOT / "configs" / base,
                 "--out", pre, "--quiet", "--train", tokens / "aoj_train", "--val", tokens / "aoj_val",
                 *model, *common, f"train.max_steps={p['pretrain_steps']}",
                 f"train.lr={p['lr']}")  # fmt: skip
        weights = ["train.split_weights=[8,8,4]"] if mode == "tree" else []
        self.run(f"{mode}_finetune", fine / "model.ckpt", "train", "--config",
                 ROOT / "configs" / base, "--out", fine, "--quiet", "--init-from",
                 pre / "model.ckpt", "--train", tokens / "top_train", "--val", tokens / "top_val",
                 *model, *common, f"train.max_steps={p['finetune_steps']}",
                 f"train.lr={p['finetune_lr']}", *weights)  # fmt: skip
        held = models / "heldout_nll.json"
        command = "evaluate-particles" if mode == "flat" else "evaluate-splits"
        self.run(f"{mode}_heldout_nll", held, command, "--ckpt", fine / "model.ckpt", "--tokens",
                 tokens / "reference", "--json", held)  # fmt: skip
        return fine / "model.ckpt"

    def generate(self, mode: str, ckpt: Path) -> Path:
        gen = self.out / mode / "generated"
        extra = ["--baseline", "bigram"] if mode == "bigram" else []
        self.run(f"{mode}_generate", gen / "summary.json", "generate", "--ckpt", ckpt, "--n-jets",
                 self.p["generate"], "--seed", 1, "--out", gen, "--device", self.p["device"],
                 "--quiet", *extra)  # fmt: skip
        ev = self.out / mode / "evaluate"
        self.run(f"{mode}_evaluate", ev / "metrics.json", "evaluate", "--generated", gen,
                 "--reference", self.out / "reference", "--out", ev, "--massless",
                 "--no-plots")  # fmt: skip
        return ev / "metrics.json"


def mode_results(study: Study, mode: str, metrics: Path, ckpt: Path) -> dict:

    m = json.loads(metrics.read_text())
    gen = json.loads((study.out / mode / "generated" / "summary.json").read_text())
    from jetevo.model.checkpoint import load_model

    model = load_model(ckpt)
    state = model.extra  # what training recorded (steps, positions per epoch)
    # trained parameters only (a state dict also holds buffers: groups, code features, log z)
    params = dict(model.named_parameters())
    n_params = int(sum(p.numel() for p in params.values()))
    table = int(params["tokens.learned.weight"].numel())
    seconds = json.loads((study.out / "seconds.json").read_text())
    trained = "flat" if mode == "flat" else "tree"
    held = json.loads((study.out / trained / "model" / "heldout_nll.json").read_text())
    out = {
        "observables": {
            k: {f: m["observables"][k][f] for f in ("w1", "w1_std", "w1_floor", "kl", "kl_floor")}
            for k in OBSERVABLES
        },
        "lund_plane": m["lund_plane"],
        "means": {k: m["means"][k] for k in OBSERVABLES},
        "particles": m["particles"]["generated"],
        "runaway_fraction": gen["runaway_fraction"],
        "empty": gen.get("empty", 0),
        "generated": gen["n_written"],
        "generation_s_per_jet": gen["seconds"] / max(gen["n_written"], 1),
        "parameters": n_params,
        "parameters_without_token_table": n_params - table,
        "train_seconds": {k: seconds.get(f"{trained}_{k}") for k in ("pretrain", "finetune")},
        "positions_per_epoch": state["train"].get("positions_per_epoch"),
        "steps": state["train"]["steps"],
        "heldout_nll": {k: held[k] for k in ("nll", "bigram_nll", "unigram_nll", "top1")},
    }
    out["w1_over_floor"] = {
        k: v["w1"] / v["w1_floor"] if v["w1_floor"] else None for k, v in out["observables"].items()
    }
    return out


def table(results: dict) -> str:
    modes = [m for m in MODES if m in results["modes"]]
    rows = ["| observable | " + " | ".join(f"{m} W1/floor" for m in modes) + " | floor W1 |",
            "|---|" + "---|" * (len(modes) + 1)]  # fmt: skip
    ref = results["modes"][modes[0]]["observables"]
    for k in OBSERVABLES:
        cells = [f"{results['modes'][m]['w1_over_floor'][k]:.2f}" for m in modes]
        rows.append(f"| {k} | " + " | ".join(cells) + f" | {ref[k]['w1_floor']:.3g} |")
    lund = [results["modes"][m]["lund_plane"] for m in modes]
    rows.append(
        "| Lund plane KL/floor | "
        + " | ".join(f"{x['kl'] / x['kl_floor']:.2f}" for x in lund)
        + " | |"
    )
    for label, key, fmt in (
        ("runaway fraction", "runaway_fraction", "{:.4f}"),
        ("generation ms/jet", "generation_s_per_jet", "{:.2f}"),
        ("parameters", "parameters", "{:,}"),
        ("parameters w/o token table", "parameters_without_token_table", "{:,}"),
    ):
        scale = 1000 if key == "generation_s_per_jet" else 1
        cells = [fmt.format(results["modes"][m][key] * scale) for m in modes]
        rows.append(f"| {label} | " + " | ".join(cells) + " | |")
    return "\n".join(rows)


def open_run(out: Path, profile: str, params: dict, workers: int) -> dict:
    """Make the study folder ``out`` for ``profile`` (its settings ``params``), refusing one
    that holds another profile's run (a rerun resumes only the same one); returns the
    recorded profile. Training threads default to ``workers``."""
    out.mkdir(parents=True, exist_ok=True)
    record = out / "profile.json"
    wanted = {"profile": profile, **params}
    if record.exists() and json.loads(record.read_text()) != wanted:
        sys.exit(f"{record}: this folder holds another profile's run; use a new --out")
    record.write_text(json.dumps(wanted, indent=1))
    os.environ.setdefault("OMP_NUM_THREADS", str(workers))
    return wanted


def commit_id() -> str:
    """The commit the results are made with (short hash)."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=tuple(PROFILES), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    out = args.out.resolve()
    wanted = open_run(out, args.profile, PROFILES[args.profile], args.workers)
    study = Study(out, args.profile, args.workers)
    t0 = time.perf_counter()
    d = study.data()
    ckpts, metrics = {}, {}
    for mode in ("tree", "flat"):
        study.tokenizer(mode, d)
        ckpts[mode] = study.train(mode)
        metrics[mode] = study.generate(mode, ckpts[mode])
    ckpts["bigram"] = ckpts["tree"]  # the tree model's count baselines
    metrics["bigram"] = study.generate("bigram", ckpts["bigram"])
    commit = commit_id()
    results = {
        "profile": wanted,
        "command": shlex.join(["python", "scripts/compare_modes.py", *sys.argv[1:]]),
        "commit": commit,
        "modes": {m: mode_results(study, m, metrics[m], ckpts[m]) for m in MODES},
        "tokenizers": {
            m: json.loads((out / m / "tokenizer" / "report.json").read_text()).get("closure")
            for m in ("tree", "flat")
        },
        "wall_seconds_this_call": round(time.perf_counter() - t0, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(
        f"Profile `{args.profile}`, commit `{commit}`: `{results['command']}`\n\n"
        + table(results)
        + "\n"
    )
    print(table(results))


if __name__ == "__main__":
    main()
