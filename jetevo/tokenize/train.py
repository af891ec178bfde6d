"""Tokenizer training: k-means-initialised codebook, then VQ-VAE steps over real nodes.

Only real nodes enter the losses (trees have no padding; OmniJet-alpha quantized and
reconstructed its zero padding too): every child of a split for the tree feature set (the
roots are quantized on a grid of their own, fitted here to all the files' jets), the
particles (leaves) alone for the flat one, which only ever tokenizes particles. Resumable: the checkpoint at ``out`` carries the
optimizer state and step, the settings and the tree files it was started with, and a
rerun with the same ones continues to ``max_steps`` (other ones are refused).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from jetevo.config import file_fingerprints, files_difference, settings_difference
from jetevo.errors import InputError
from jetevo.io.atomic import ensure_writable_dir
from jetevo.tokenize import features as F
from jetevo.tokenize.kmeans import kmeans
from jetevo.tokenize.root import RootQuantizer
from jetevo.tokenize.tokenizer import Tokenizer, TokenizerConfig, read_checkpoint
from jetevo.trees.format import load, tree_files

TREE_COLUMNS = ["px", "py", "pz", "E", "left", "parent"]

logger = logging.getLogger(__name__)


def node_features(paths, features: F.FeatureSet = F.SPLIT_EXACT) -> tuple[np.ndarray, dict]:
    """Features of the nodes a tokenizer of ``features`` codes from its codebook (every
    child of a split, or the particles alone for a ``particles_only`` set), plus those
    nodes' arrays (as :func:`~jetevo.tokenize.features.node_arrays`, global ``parent``
    indices kept, ``context``: each node's true context, and ``is_first``: the root's two
    children), and ``roots``: the jets' root four-momenta."""
    a = F.node_arrays(load(paths, columns=TREE_COLUMNS))
    a["p"] = features.node_momenta(a)
    a["context"] = features.tree_context(a)
    has = a["parent"] >= 0
    a["is_first"] = np.zeros(len(has), bool)
    a["is_first"][has] = a["parent"][a["parent"][has]] < 0
    kept_mask = a["is_leaf"] if features.particles_only else has
    jet = np.repeat(np.arange(len(a["counts"])), a["counts"])
    kept = {k: a[k][kept_mask] for k in ("p", "parent", "is_leaf", "context", "is_first")}
    kept["counts"] = np.bincount(jet[kept_mask], minlength=len(a["counts"])).astype(np.int64)
    kept["roots"] = a["p"][a["parent"] < 0]
    return features.forward(kept["p"], kept["context"]), kept


def _oversampled(groups: list[tuple[np.ndarray, float]], n_total: int, n: int, rng) -> list:
    """Row indices: from each (indices, fraction) group ``round(fraction * n)`` rows (at least
    the group's natural share, at most what is left of ``n``), every member repeated
    equally, then a random remainder."""
    picks, left = [], n
    for idx, fraction in groups:
        if len(idx) == 0:
            continue
        k = min(left, max(round(fraction * n), round(n * len(idx) / n_total)))
        left -= k
        repeats = k // len(idx)
        picks.append(np.tile(idx, repeats))
        picks.append(rng.choice(idx, k - repeats * len(idx), replace=False))
    return picks


def _kmeans_rows(is_first: np.ndarray, cfg: TokenizerConfig, rng) -> np.ndarray:
    """Rows for the k-means initialisation, with the root's children at
    ``cfg.first_split_fraction``, as in the training batches (repeated equally where there
    are fewer: a repeated row weighs that node more, which is what k-means needs to give
    them their share of codes). The root's children are ~1.5% of nodes: drawn in that
    share, the parent-relative tokenizer's first splittings came back 23% too narrow, and
    every jet's R_g, τ21, τ32 with them (docs/tokenizer.md).
    """
    n = min(cfg.kmeans_sample, len(is_first))
    groups = [(np.flatnonzero(is_first), cfg.first_split_fraction)]
    picks = _oversampled(groups, len(is_first), n, rng)
    n_special = sum(len(p) for p in picks)
    others = np.flatnonzero(~is_first)
    picks.append(rng.choice(others, min(len(others), n - n_special), replace=False))
    return np.sort(np.concatenate(picks))


def check_resume(out: Path, state: dict, cfg: TokenizerConfig, trees: list[dict]) -> None:
    """Refuse, in one line, to resume the checkpoint ``out`` with other settings (but
    :attr:`TokenizerConfig.RESUMABLE`) or other tree files than it was started with."""
    restart = "use another --out, or remove it to start over"
    if state.get("trees") is None:
        raise InputError(
            out,
            "the checkpoint does not record the tree files it was trained on (it predates "
            "that record), so resuming it cannot be checked to continue the same training; "
            + restart,
        )
    saved = Tokenizer.from_state(state, out).cfg
    diffs = settings_difference(asdict(saved), asdict(cfg), "", TokenizerConfig.RESUMABLE)
    changed = files_difference(state["trees"], trees, "--trees")
    if changed:
        diffs.append(changed)
    if diffs:
        raise InputError(
            out,
            f"this checkpoint was started with other inputs ({'; '.join(diffs)}); a resume only "
            f"continues the same training: {restart}",
        )


def train_tokenizer(
    tree_paths,
    out: str | Path,
    cfg: TokenizerConfig | None = None,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], object] | None = None,
) -> Tokenizer:
    """Train (or resume) a tokenizer on tree files; status lines go to ``log`` (default:
    the ``jetevo.tokenize.train`` logger, which the CLI prints)."""
    import torch

    log = logger.info if log is None else log
    from tqdm import tqdm

    cfg = cfg or TokenizerConfig()
    out = Path(out)
    ensure_writable_dir(out.parent)
    trees = file_fingerprints(tree_files(tree_paths))
    resume = read_checkpoint(out) if out.exists() else None
    if resume is not None:
        check_resume(out, resume, cfg, trees)
    torch.manual_seed(cfg.seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    features = F.feature_set(cfg.feature_set)
    feats, nodes = node_features(tree_paths, features)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(feats))
    n_val = max(1, len(feats) // 20)
    val, train = feats[order[:n_val]], feats[order[n_val:]]
    # no first splits among particles to oversample
    is_first = np.zeros(len(feats), bool) if features.particles_only else nodes["is_first"]
    train_is_first = is_first[order[n_val:]]
    if len(train) < cfg.n_codes:
        what = "particles" if features.particles_only else "nodes"
        raise InputError(
            tree_paths[0] if isinstance(tree_paths, list) else tree_paths,
            f"only {len(train)} training {what} for {cfg.n_codes} codes",
        )

    step = 0
    if resume is not None:
        tok = Tokenizer.from_state(resume, out)
        tok.cfg = cfg  # the same settings (check_resume) but for how far it goes
        step = int(resume.get("step", 0))
        log(f"resuming {out} at step {step}")
    else:
        std = F.Standardizer.fit(train, cfg.feature_weights)
        t0 = time.perf_counter()
        sample = std.forward(train[_kmeans_rows(train_is_first, cfg, rng)])
        centroids = kmeans(sample, cfg.n_codes, iters=cfg.kmeans_iters, seed=cfg.seed)
        log(
            f"k-means init: {cfg.n_codes} codes on {len(sample)} nodes in {time.perf_counter() - t0:.1f}s"
        )
        model = Tokenizer.build_model(cfg)
        model.set_codebook(torch.as_tensor(centroids, dtype=torch.float32), cfg.batch_size)
        root = None if features.particles_only else RootQuantizer.fit(nodes["roots"], cfg.n_codes)
        tok = Tokenizer(cfg, std, model, floor_centroids=centroids.astype(np.float32), root=root)

    model = tok.model.to(device).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    if resume is not None and resume.get("optimizer"):
        opt.load_state_dict(resume["optimizer"])
    x_train = torch.as_tensor(tok.standardizer.forward(train), dtype=torch.float32, device=device)
    x_val = torch.as_tensor(tok.standardizer.forward(val), dtype=torch.float32, device=device)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + step)
    # the root's children (~1.5% of nodes) fix every jet's first splitting: they get a
    # fixed share of every batch
    shallow = (
        [
            (
                torch.as_tensor(np.flatnonzero(train_is_first)),
                round(cfg.first_split_fraction * cfg.batch_size),
            )
        ]
        if train_is_first.any()
        else []
    )
    n_shallow = sum(k for _, k in shallow)

    def checkpoint(final: bool) -> None:
        model.eval()
        tok._code_index = tok._decoded_codes = None
        with torch.no_grad():
            recon, _, _ = model(x_val)
            val_mse = float(torch.mean((recon - x_val) ** 2))
        tok.model = model.cpu()
        tok.save(
            out,
            {
                "step": step,
                "optimizer": opt.state_dict(),
                "val_mse": val_mse,
                "n_train_nodes": len(train),
                "trees": trees,
            },
        )
        tok.model = model.to(device)
        model.train()
        if final:
            log(f"step {step}: validation MSE (standardized features) {val_mse:.4f}; saved {out}")

    bar = tqdm(
        total=cfg.max_steps, initial=step, disable=not progress, file=sys.stderr, desc="tokenizer"
    )
    while step < cfg.max_steps:
        idx = torch.cat(
            [torch.randint(0, len(x_train), (cfg.batch_size - n_shallow,), generator=gen)]
            + [group[torch.randint(0, len(group), (k,), generator=gen)] for group, k in shallow]
        )
        idx = idx.to(device)
        x = x_train[idx]
        recon, _, commit = model(x)
        loss = torch.mean((recon - x) ** 2) + commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            checkpoint(final=False)
    bar.close()
    checkpoint(final=True)
    tok.model = model.cpu().eval()
    tok._code_index = tok._decoded_codes = None
    tok.path = str(out)
    return tok
