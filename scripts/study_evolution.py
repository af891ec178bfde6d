"""Can the evolution of a jet be predicted? Held-out real jets kept down to depth K and
completed M times by a tree model, against the real jets themselves, as K grows.

    python scripts/study_evolution.py --ckpt MODEL --heldout TREES --out evolution

For K = 0 (the real root alone: the jet's pT, η and mass kept), 1, 2, ... up to the jets'
full depth (every completion is then the real jet), ``jetevo generate --prefix`` makes M
completions of each of the first N held-out jets; an unconditional sample of N x M jets (in
groups of M) is the reference that knows nothing of the jet. Every observable is computed
from the particles by ``jetevo.evaluate.observables`` (massless: E = |p| in both, so no
decoder-invented particle mass enters), the same code as for real jets. Per observable and
K: the rank of the real value among its completions (a rank histogram and its KS distance
from uniform: calibration) and the completions' spread and the correlation of their mean
with the real value (sharpness), via :mod:`jetevo.evaluate.evolution`.

What else could make a rank histogram lopsided: the tokenizer. Each real jet is therefore
also decoded as a completion would be if the model had sampled the jet's own tokens: the
kept nodes real, every node below depth K decoded from its real token (same decoding as
generation). The rank of that *decoded* jet among the completions (``ks_decoded``) tests
the model alone; the rank of the real jet tests model and tokenizer together.

Writes ``OUT/results.json``, ``OUT/results.md``, ``OUT/calibration.png``,
``OUT/sharpness.png``, ``OUT/ranks.png`` and ``OUT/commands.sh``; generation stages resume.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_modes import JETEVO, ROOT, commit_id  # the sibling study's constants

OBSERVABLES = ("mass", "multiplicity", "tau21", "tau32", "zg", "rg")
UNDEFINED = -1.0  # an observable a jet does not have (τ32 of two particles, z_g without a
# soft-drop split) sits below every defined value, in the real jets and the completions alike


def run(out: Path, done: Path, *args) -> None:
    """One jetevo command, unless its output ``done`` exists; logged to commands.sh."""
    if done.exists():
        return
    cmd = [JETEVO, *map(str, args)]
    with (out / "commands.sh").open("a") as f:
        f.write(shlex.join(["jetevo", *cmd[1:]]) + "\n")
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def jet_observables(trees) -> dict[str, np.ndarray]:
    from jetevo.evaluate.observables import observables

    obs, _, _ = observables(trees, massless=True)
    return {k: np.where(np.isfinite(obs[k]), obs[k], UNDEFINED) for k in OBSERVABLES}


def completions_by_jet(folder: Path, keys: list, m: int) -> tuple[np.ndarray, dict]:
    """Observables of the completions arranged (jet, completion) in the order of ``keys``;
    jets without all M completions (a prefix too long for the model) are masked out."""
    from jetevo.trees.format import load

    trees = load(folder)
    obs = jet_observables(trees)
    where = {k: i for i, k in enumerate(keys)}
    jet = np.array(
        [
            where.get(k, -1)
            for k in zip(trees["source"].to_list(), trees["entry"].to_list(), strict=True)
        ]
    )
    completion = np.asarray(trees["completion"])
    ok = jet >= 0
    have = np.zeros((len(keys), m), bool)
    have[jet[ok], completion[ok]] = True
    out = {}
    for k, v in obs.items():
        a = np.full((len(keys), m), np.nan)
        a[jet[ok], completion[ok]] = v[ok]
        out[k] = a
    return have.all(axis=1), out


def prefix_observables(prefix, p: np.ndarray) -> dict[str, np.ndarray]:
    """Observables of the prefix jets' trees with node four-momenta ``p``."""
    import awkward as ak

    t = prefix.topology
    cols = {k: p[:, i] for i, k in enumerate(("px", "py", "pz", "E"))}
    cols.update(left=t.left, right=t.right, depth=t.depth)
    counts = np.diff(t.offsets)
    return jet_observables(
        ak.zip({k: ak.unflatten(v, counts) for k, v in cols.items()}, depth_limit=1)
    )


def decoded_real(prefix, tokenizer, depth: int) -> dict[str, np.ndarray]:
    """Observables of the real jets with every node below ``depth`` decoded from its own
    token (the kept nodes real), as generation decodes a completion."""
    from jetevo.tokenize.decode import decode_tree

    known = (prefix.topology.depth <= depth, prefix.p)
    return prefix_observables(
        prefix, decode_tree(tokenizer, prefix.token, prefix.topology, known=known)
    )


def analyse(real: dict, comp: dict, complete: np.ndarray, seed: int, decoded=None) -> dict:
    from jetevo.evaluate.evolution import calibration, ks_uniform, ranks

    out: dict = {"n_jets": int(complete.sum())}
    for k in OBSERVABLES:
        out[k] = calibration(real[k][complete], comp[k][complete], seed=seed)
        if decoded is not None:
            r = ranks(decoded[k][complete], comp[k][complete], np.random.default_rng(seed))
            out[k]["ks_decoded"] = ks_uniform(r, comp[k].shape[1])
            out[k]["rank_histogram_decoded"] = np.bincount(
                r, minlength=comp[k].shape[1] + 1
            ).tolist()
    return out


def plots(out: Path, results: dict, m: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = results["depths"]
    x = [r["depth"] for r in ks]
    uncond = results["unconditional"]
    names = []
    for fname, key, ylabel in (
        ("calibration.png", "ks", "KS distance of the rank from uniform"),
        ("sharpness.png", "correlation", "corr(real value, mean of completions)"),
        ("spread.png", "spread_over_marginal", "completion spread / real-jet spread"),
    ):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for i, obs in enumerate(OBSERVABLES):
            y = [np.nan if r[obs][key] is None else r[obs][key] for r in ks]
            line = ax.plot(x, y, marker="o", ms=3, label=obs)[0]
            if key == "ks":  # the real jet's own tokens decoded: the model alone
                yd = [r[obs].get("ks_decoded", np.nan) for r in ks]
                ax.plot(x, yd, color=line.get_color(), ls="--", lw=0.9)
            u = uncond[obs][key]
            if u is not None:
                ax.axhline(u, color=line.get_color(), ls=":", lw=0.8)
            if key == "ks" and i == 0:
                ax.plot(x, [r[obs]["ks_95"] for r in ks], color="grey", ls="--", lw=0.8,
                        label="95% of uniform")  # fmt: skip
        ax.set(xlabel="prefix depth K (levels of the real jet kept)", ylabel=ylabel)
        title = "dotted: unconditional" + ("; dashed: decoded real jet" if key == "ks" else "")
        ax.legend(fontsize=7, title=title, title_fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        names.append(fname)
    show = [r for r in ks if r["depth"] in (0, 1, 2, 4)] or ks[:4]
    fig, axes = plt.subplots(len(OBSERVABLES), len(show), figsize=(2.4 * len(show), 1.6 * len(OBSERVABLES)),
                             squeeze=False, sharex=True)  # fmt: skip
    for j, r in enumerate(show):
        for i, obs in enumerate(OBSERVABLES):
            h = np.asarray(r[obs]["rank_histogram"], float)
            axes[i][j].bar(np.arange(m + 1), h / h.sum() * (m + 1), width=1.0)
            axes[i][j].axhline(1.0, color="k", lw=0.8)
            axes[i][j].set_title(f"{obs}, K={r['depth']}", fontsize=7)
            axes[i][j].tick_params(labelsize=6)
    fig.supxlabel("rank of the real jet among its completions (density / uniform)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ranks.png", dpi=110)
    plt.close(fig)
    return [*names, "ranks.png"]


def table(results: dict) -> str:
    head = "| K | jets | " + " | ".join(f"{o} KS (decoded) / corr" for o in OBSERVABLES) + " |"
    rows = [head, "|---|---|" + "---|" * len(OBSERVABLES)]

    def cell(r, o):
        c, d = r[o]["correlation"], r[o].get("ks_decoded")
        decoded = "" if d is None else f" ({d:.3f})"
        return f"{r[o]['ks']:.3f}{decoded} / " + ("–" if c is None else f"{c:.2f}")

    for r in [*results["depths"], {**results["unconditional"], "depth": "uncond."}]:
        rows.append(
            f"| {r['depth']} | {r['n_jets']} | "
            + " | ".join(cell(r, o) for o in OBSERVABLES)
            + " |"
        )
    return "\n".join(rows)


def main() -> None:
    from jetevo.trees.format import load

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True, type=Path, help="a tree-mode model.ckpt")
    ap.add_argument("--heldout", required=True, nargs="+", help="held-out tree or token files")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--n-jets", type=int, default=400)
    ap.add_argument("--completions", type=int, default=15)
    ap.add_argument("--depths", default="0,1,2,3,4,5,6,8,10",
                    help="comma-separated K; the jets' full depth is always added")  # fmt: skip
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    m, n = args.completions, args.n_jets
    record = out / "settings.json"
    wanted = {"ckpt": str(args.ckpt.resolve()), "heldout": args.heldout, "n_jets": n,
              "completions": m, "seed": args.seed}  # fmt: skip
    if record.exists() and json.loads(record.read_text()) != wanted:
        sys.exit(f"{record}: this folder holds another run's settings; use a new --out")
    record.write_text(json.dumps(wanted, indent=1))
    t0 = time.perf_counter()
    from jetevo.generate.prefix import read_prefix
    from jetevo.model.checkpoint import load_model, model_tokenizer

    tok = model_tokenizer(load_model(args.ckpt), args.ckpt)
    prefix = read_prefix(args.heldout, tok, n)  # the real jets, their tokens as the model's
    jets = prefix.jets
    sources = [jets.source_names[c] for c in jets.source_codes]
    keys = list(zip(sources, jets.entry.tolist(), strict=True))
    real = prefix_observables(prefix, prefix.p.astype(np.float64))  # the jets as stored
    full = int(prefix.topology.depth.max())  # K = full: every node kept
    depths = sorted({*(int(k) for k in args.depths.split(",") if int(k) < full), full})
    common = ["--ckpt", args.ckpt, "--seed", args.seed, "--device", args.device, "--quiet"]
    results: dict = {"depths": []}
    for k in depths:
        folder = out / f"depth_{k}"
        run(out, folder / "summary.json", "generate", *common, "--prefix", *args.heldout,
            "--prefix-depth", k, "--completions", m, "--n-jets", n, "--out", folder)  # fmt: skip
        complete, comp = completions_by_jet(folder, keys, m)
        decoded = decoded_real(prefix, tok, k)
        results["depths"].append({"depth": k, **analyse(real, comp, complete, args.seed, decoded)})
    folder = out / "unconditional"
    run(out, folder / "summary.json", "generate", *common, "--n-jets", n * m, "--out", folder)
    obs = jet_observables(load(folder))
    uncond = {o: v[: n * m].reshape(n, m) for o, v in obs.items()}
    results["unconditional"] = {"depth": None, **analyse(real, uncond, np.ones(n, bool), args.seed)}
    commit = commit_id()
    results.update(
        command=shlex.join(["python", "scripts/study_evolution.py", *sys.argv[1:]]),
        commit=commit, settings=wanted, full_depth=full,
        plots=plots(out, results, m), wall_seconds_this_call=round(time.perf_counter() - t0, 1),
    )  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(
        f"Commit `{commit}`: `{results['command']}`\n\n{n} held-out jets x {m} completions; "
        "KS: distance of the real jet's rank among its completions from uniform (0 = "
        f"calibrated; 95% of uniform samples stay below {results['depths'][0]['mass']['ks_95']:.3f}); "
        "corr: correlation of the real value with the completions' mean.\n\n"
        + table(results)
        + "\n"
    )
    print(table(results))


if __name__ == "__main__":
    main()
