"""Top tagging by likelihood ratio: log P_top(jet) - log P_QCD(jet) from two generative models
fine-tuned from the same AOJ-pretrained checkpoint, against cut-based and learned baselines
on the same jets.

    python scripts/study_likelihood_tagging.py --profile quick --out tagging_quick
    python scripts/study_likelihood_tagging.py --profile gpu --out tagging_gpu

Per mode (``tree``, and the ``flat`` OmniJet-alpha baseline): one tokenizer trained on
AOJ-layout QCD + training tops + training QCD; one model pretrained on AOJ QCD; two fine-tunes
of it (JetClass-layout tops, JetClass-layout QCD, same steps); ``jetevo score`` of the held-out
tops and QCD under both. The baselines see the same training jets and are measured on the
same held-out jets: jet mass in a window around the top mass, τ32, the (mass, τ32) histogram
likelihood ratio, and a gradient-boosted classifier on (mass, τ21, τ32, D2, multiplicity),
every observable computed from the jets' particles by ``jetevo.evaluate.observables``.

Writes ``OUT/results.json`` (AUC, 1/ε_B at ε_S = 0.3 and 0.5 with bootstrap errors, per
tagger), ``OUT/results.md``, ``OUT/roc.png``, ``OUT/llr.png`` and ``OUT/commands.sh``;
stages resume as in ``scripts/compare_modes.py`` (another profile in the same OUT is
refused).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_modes import ROOT, Study, commit_id, open_run  # the sibling study's stage runner

CLASSES = ("top", "qcd")
SPLITS = ("train", "val", "heldout")
FEATURES = ("mass", "tau21", "tau32", "d2", "multiplicity")

PROFILES: dict[str, dict] = {
    # under 20 minutes on 2 cores (docs/results/likelihood_tagging.md)
    "quick": {
        "aoj_jets": 1000, "train": 1000, "val": 200, "heldout": 1000, "n_codes": 2048,
        "tokenizer_steps": 150, "model": {"n_layer": 2, "n_head": 4, "n_embd": 64},
        "batch_size": 16, "pretrain_steps": 150, "finetune_steps": 400, "lr": 1.0e-3,
        "finetune_lr": 5.0e-4, "val_every": 100, "device": "cpu", "bootstrap": 200,
    },
    # the sizes of scripts/compare_modes.py's medium profile, so that its pretrained models,
    # top fine-tunes and tokenizers can seed this study (docs/results/likelihood_tagging.md)
    "medium": {
        "aoj_jets": 20000, "train": 10000, "val": 1000, "heldout": 5000, "n_codes": 2048,
        "tokenizer_steps": 1000, "model": {"n_layer": 4, "n_head": 4, "n_embd": 128},
        "batch_size": 32, "pretrain_steps": 1500, "finetune_steps": 2500, "lr": 6.0e-4,
        "finetune_lr": 3.0e-4, "val_every": 500, "device": "cpu", "bootstrap": 200,
    },
    "gpu": {
        "aoj_jets": 40000, "train": 20000, "val": 2000, "heldout": 10000, "n_codes": 8192,
        "tokenizer_steps": 2000, "model": {"n_layer": 3, "n_head": 8, "n_embd": 256},
        "batch_size": 256, "pretrain_steps": 3000, "finetune_steps": 3000, "lr": 6.0e-4,
        "finetune_lr": 3.0e-4, "val_every": 1000, "device": "cuda", "bootstrap": 200,
    },
}  # fmt: skip

PROCESS = {"top": ("top", "TTBar"), "qcd": ("qcd", "ZJetsToNuNu")}


class TaggingStudy(Study):
    """The stages of the study; each is one jetevo command, skipped when its output exists."""

    def data(self) -> dict[str, list[Path]]:
        p, sim, trees = self.p, self.out / "sim", self.out / "trees"
        jobs = [("aoj", "qcd-wide", p["aoj_jets"], 13, 0, sim / "aoj")]
        for c, seed in (("top", 40), ("qcd", 50)):
            process = PROCESS[c][0]
            for index, (part, n) in enumerate((("train", p["train"]), ("val", p["val"]),
                                               ("heldout", p["heldout"]))):  # fmt: skip
                jobs.append((f"{c}_{part}", process, n, seed + index, index, sim / "jetclass"))
        self.simulate(jobs)
        aoj = self.recluster_aoj()
        self.run("recluster_jetclass", trees / "jetclass", "recluster", sim / "jetclass", "--out",
                 trees / "jetclass", "--workers", self.workers, "--quiet")  # fmt: skip
        parts: dict[str, list[Path]] = {"aoj_train": aoj[:1], "aoj_val": aoj[1:2]}
        for c in CLASSES:
            stem = PROCESS[c][1]
            for index, part in enumerate(("train", "val", "heldout")):
                parts[f"{c}_{part}"] = sorted(
                    (trees / "jetclass").glob(f"{stem}_00{index}*.parquet")
                )
        empty = [k for k, v in parts.items() if not v]
        if empty:
            sys.exit(f"{trees}: no tree files for {', '.join(empty)}")
        return parts

    def train_models(self, mode: str) -> dict[str, Path]:
        """The pretrained model and its two fine-tunes (same settings, one per class)."""
        p, base = self.p, "flat_base.yaml" if mode == "flat" else "tree_base.yaml"
        tokens, models = self.out / mode / "tokens", self.out / mode / "model"
        model = [f"model.{k}={v}" for k, v in p["model"].items()]
        common = [f"train.batch_size={p['batch_size']}", f"train.val_every={p['val_every']}",
                  "train.val_batches=20", "train.warmup_steps=50"]  # fmt: skip
        pre = models / "pretrain"
        self.run(f"{mode}_pretrain", pre / "model.ckpt", "train", "--config", ROOT / "configs" / base,
                 "--out", pre, "--quiet", "--train", tokens / "aoj_train", "--val", tokens / "aoj_val",
                 *model, *common, f"train.max_steps={p['pretrain_steps']}",
                 f"train.lr={p['lr']}")  # fmt: skip
        weights = ["train.split_weights=[8,8,4]"] if mode == "tree" else []
        out = {}
        for c in CLASSES:
            fine = models / c
            self.run(f"{mode}_finetune_{c}", fine / "model.ckpt", "train", "--config",
                     ROOT / "configs" / base, "--out", fine, "--quiet", "--init-from",
                     pre / "model.ckpt", "--train", tokens / f"{c}_train", "--val",
                     tokens / f"{c}_val", *model, *common, f"train.max_steps={p['finetune_steps']}",
                     f"train.lr={p['finetune_lr']}", *weights)  # fmt: skip
            out[c] = fine / "model.ckpt"
        return out

    def score(self, mode: str, ckpts: dict[str, Path]) -> dict[str, Path]:
        tokens = self.out / mode / "tokens"
        held = [tokens / f"{c}_heldout" for c in CLASSES]
        out = {}
        for c, ckpt in ckpts.items():
            path = self.out / mode / f"scores_{c}_model.parquet"
            self.run(f"{mode}_score_{c}", path, "score", "--ckpt", ckpt, "--tokens", *held,
                     "--out", path, "--device", self.p["device"])  # fmt: skip
            out[c] = path
        return out


def model_llr(scores: dict[str, Path]) -> tuple[dict, np.ndarray, list[tuple[str, int]], dict]:
    """log P_top - log P_QCD per held-out jet (and, for tree models, its root term alone and
    its split terms alone: how much of the ratio the jet's pT and mass in the root token
    carry), whether it is a top, its (source, entry), and the mean log-likelihood per jet
    of each class under each model."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def columns(path: Path):
        t = pq.read_table(path)
        keys = list(zip(t["source"].to_pylist(), t["entry"].to_pylist(), strict=True))
        is_top = np.array(t["label"].to_pylist()) == "Tbqq"
        ll = t["log_likelihood"].to_numpy()
        root = None
        if "level_log_likelihood" in t.column_names:
            root = pc.list_element(t["level_log_likelihood"], 0).to_numpy()
        return keys, is_top, ll, root

    (keys, is_top, ll_top, root_top) = columns(scores["top"])
    (keys_q, _, ll_qcd, root_qcd) = columns(scores["qcd"])
    if keys != keys_q:
        sys.exit("the two models' score files list different jets")
    llr = {"": ll_top - ll_qcd}
    if root_top is not None and root_qcd is not None:
        llr[" (root term only)"] = root_top - root_qcd
        llr[" (split terms only)"] = (ll_top - root_top) - (ll_qcd - root_qcd)
    means = {
        f"{model}_model": {
            cls: float(ll[mask].mean()) for cls, mask in (("top", is_top), ("qcd", ~is_top))
        }
        for model, ll in (("top", ll_top), ("qcd", ll_qcd))
    }
    return llr, is_top, keys, means


def jet_features(files: list[Path]) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """(mass, τ21, τ32, D2, multiplicity) of every jet, from its particles as stored."""
    from jetevo.evaluate.observables import observables
    from jetevo.trees.format import load

    trees = load(files)
    obs, _, _ = observables(trees, str(files[0]))
    x = np.column_stack([obs[k] for k in FEATURES])
    is_top = np.array(trees["label"].to_list()) == "Tbqq"
    keys = list(zip(trees["source"].to_list(), trees["entry"].to_list(), strict=True))
    return x, is_top, keys


def baselines(d: dict, held_keys, seed: int) -> dict[str, np.ndarray]:
    """Scores of the baseline taggers on the held-out jets, ordered like ``held_keys``."""
    from jetevo.evaluate.tagging import gradient_boosted_scores, histogram_llr, mass_window_score

    train_x, train_top, _ = jet_features([*d["top_train"], *d["qcd_train"]])
    x, _, keys = jet_features([*d["top_heldout"], *d["qcd_heldout"]])
    where = {k: i for i, k in enumerate(keys)}
    order = np.array([where[k] for k in held_keys])
    x = x[order]
    ok = np.all(np.isfinite(train_x), axis=1)
    i_m, i_t32 = FEATURES.index("mass"), FEATURES.index("tau32")
    # a jet with fewer than three particles has no τ32; it counts as the least top-like
    tau32 = np.where(np.isfinite(x[:, i_t32]), x[:, i_t32], np.inf)
    filled = np.where(np.isfinite(x), x, np.nanmax(train_x[ok], axis=0))
    return {
        "mass window": mass_window_score(x[:, i_m]),
        "tau32": -tau32,
        "(mass, tau32) histogram LR": histogram_llr(
            train_x[ok][:, [i_m, i_t32]], train_top[ok], filled[:, [i_m, i_t32]]
        ),
        "gradient boosting (5 features)": gradient_boosted_scores(
            train_x[ok], train_top[ok], filled, seed
        ),
    }


def plots(out: Path, curves: dict, llrs: dict, is_top: np.ndarray) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jetevo.evaluate.tagging import roc

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, score in curves.items():
        es, eb = roc(score, is_top)
        keep = eb > 0
        ax.plot(es[keep], 1 / eb[keep], label=name)
    ax.set(xlabel="signal efficiency ε_S (tops)", ylabel="background rejection 1/ε_B (QCD)",
           yscale="log", xlim=(0, 1))  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(llrs), figsize=(5 * len(llrs), 4), squeeze=False)
    for ax, (mode, llr) in zip(axes[0], llrs.items(), strict=True):
        lo, hi = np.quantile(llr, [0.005, 0.995])
        bins = np.linspace(lo, hi, 40)
        ax.hist(llr[is_top], bins, histtype="step", density=True, label="held-out tops")
        ax.hist(llr[~is_top], bins, histtype="step", density=True, label="held-out QCD")
        ax.set(xlabel=f"log P_top - log P_QCD ({mode} models)", ylabel="density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "llr.png", dpi=120)
    plt.close(fig)
    return ["roc.png", "llr.png"]


def table(results: dict) -> str:
    rows = ["| tagger | AUC | 1/ε_B at ε_S = 0.3 | 1/ε_B at ε_S = 0.5 |", "|---|---|---|---|"]

    def pm(v, s, fmt):
        return fmt.format(v) + ("" if s is None else " ± " + fmt.format(s))

    for name, m in results["taggers"].items():
        rows.append(
            f"| {name} | {pm(m['auc'], m['auc_std'], '{:.3f}')} | "
            f"{pm(m['rejection@0.3'], m['rejection@0.3_std'], '{:.1f}')} | "
            f"{pm(m['rejection@0.5'], m['rejection@0.5_std'], '{:.1f}')} |"
        )
    return "\n".join(rows)


def main() -> None:
    from jetevo.evaluate.tagging import tagger_metrics

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=tuple(PROFILES), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--modes", default="tree,flat", help="comma-separated: tree, flat")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"tree", "flat"}:
        sys.exit(f"--modes takes tree and/or flat, got {args.modes!r}")
    out = args.out.resolve()
    wanted = open_run(out, args.profile, PROFILES[args.profile], args.workers)
    study = TaggingStudy(out, args.profile, args.workers, PROFILES)
    t0 = time.perf_counter()
    d = study.data()
    curves: dict[str, np.ndarray] = {}
    llrs, means = {}, {}
    keys, is_top = None, None
    for mode in modes:
        # one tokenizer for both classes: trained on AOJ QCD, training tops and training QCD
        parts = ["aoj_train", "aoj_val", *(f"{c}_{s}" for c in CLASSES for s in SPLITS)]
        study.tokenizer(mode, d, ("aoj_train", "top_train", "qcd_train"), parts, None)
        scores = study.score(mode, study.train_models(mode))
        llr, top, k, means[mode] = model_llr(scores)
        if keys is None:
            keys, is_top = k, top
        elif k != keys:  # both modes score the same held-out jets in the same order
            sys.exit(f"{mode}: scored jets differ from {modes[0]}'s")
        llrs[mode] = llr[""]
        for part, values in llr.items():
            curves[f"{mode} likelihood ratio{part}"] = values
    assert keys is not None and is_top is not None
    curves.update(baselines(d, keys, seed=0))
    n_boot = PROFILES[args.profile]["bootstrap"]
    commit = commit_id()
    seconds = (
        json.loads((out / "seconds.json").read_text()) if (out / "seconds.json").exists() else {}
    )
    results = {
        "profile": wanted,
        "command": shlex.join(["python", "scripts/study_likelihood_tagging.py", *sys.argv[1:]]),
        "commit": commit,
        "heldout": {"tops": int(is_top.sum()), "qcd": int((~is_top).sum())},
        "taggers": {name: tagger_metrics(s, is_top, n_boot, seed=1) for name, s in curves.items()},
        "mean_log_likelihood_per_jet": means,
        "stage_seconds": seconds,
        "plots": plots(out, curves, llrs, is_top),
        "wall_seconds_this_call": round(time.perf_counter() - t0, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(
        f"Profile `{args.profile}`, commit `{commit}`: `{results['command']}`\n\n"
        f"{results['heldout']['tops']} held-out tops, {results['heldout']['qcd']} held-out QCD; "
        f"± is the standard deviation over {n_boot} bootstrap resamples.\n\n"
        + table(results)
        + "\n"
    )
    print(table(results))


if __name__ == "__main__":
    main()
