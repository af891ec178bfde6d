"""The exact log-likelihood of every jet of token files under a model: ``jetevo score``.

Tree mode: log P(tree) = log P(root | START) + the sum over splits of the log-probability
of the split's *unordered* pair of children, log(P(l, r) + P(r, l)) (or log P(l, l) for two
equal tokens), the terms ``jetevo evaluate-splits`` averages. The expansion order is a
function of the tokens alone (:func:`jetevo.model.sequences.expansion_key`), so a jet's score
does not depend on which child a file stores first. Flat mode: the sum of the next-token
log-probabilities of the jet's particles and of its STOP.

Beside the model, the same under the count baselines stored in its checkpoint (unigram and
bigram, with the same unordered-pair rule), so that a likelihood ratio can be read against
them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from jetevo.errors import SettingError
from jetevo.model.checkpoint import count_baselines, load_model, model_sequences
from jetevo.model.data import loader
from jetevo.model.loss import flat_nll, split_nll
from jetevo.model.sequences import IGNORE


@torch.no_grad()
def score(
    ckpt: str | Path,
    token_paths,
    batch_size: int = 64,
    tokenizer: str | Path | None = None,
    device: str = "cpu",
) -> pa.Table:
    """One row per jet of ``token_paths`` (in file order): ``label``, ``source``, ``entry``
    (as in the token files), ``log_likelihood`` (nats), ``n_predictions`` (splits plus the
    root, or particles plus STOP), ``level_log_likelihood`` (tree mode: per generation
    level, 0 the root token, 1 the root's split, ...), and ``unigram_log_likelihood``,
    ``bigram_log_likelihood``."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise SettingError(f"--batch-size must be a whole number >= 1, got {batch_size!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingError("--device cuda requested but no CUDA device is available")
    model = load_model(ckpt).to(device)
    flat = model.cfg.mode == "flat"
    seqs = model_sequences(model, ckpt, token_paths, tokenizer)
    # the model's negative log-likelihood of every position's prediction, in sequence order
    per_position = np.empty(int(seqs.offsets[-1]))
    at = 0
    for batch in loader(seqs, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        if flat:
            nll = flat_nll(model, batch)["per_target"]
            valid = batch["target"] != IGNORE
        else:
            nll = split_nll(model, batch, True, pairs=True)["pair_nll"]
            valid = batch["left"] != IGNORE
        # row-major over (jet, position): the jets' positions in order, padding left out
        per_position[at : at + int(valid.sum())] = nll.double().cpu().numpy()
        at += int(valid.sum())
    return _table(seqs, per_position, count_baselines(model, ckpt), flat)


def _table(seqs, per_position: np.ndarray, base, flat: bool) -> pa.Table:
    starts = seqs.offsets[:-1]
    if flat:
        # a cut jet's last position has no target: no term
        has = seqs.target != IGNORE
        uni, big = np.zeros(len(has)), np.zeros(len(has))
        uni[has], big[has] = base.nll(seqs.tokens[has], seqs.target[has])
        model_nll = np.zeros(len(has))
        model_nll[has] = per_position[: int(has.sum())]
        levels = None
    else:
        has_r = seqs.right != IGNORE
        uni_l, big_l = base.nll(seqs.tokens, seqs.left)
        uni, big = uni_l.copy(), big_l.copy()
        uni_r, big_r = base.nll(seqs.tokens[has_r], seqs.right[has_r])
        # both orders of two distinct children are equally likely under the baselines
        gain = np.log(2) * (seqs.left[has_r] != seqs.right[has_r])
        uni[has_r] += uni_r - gain
        big[has_r] += big_r - gain
        model_nll = per_position
        levels = seqs.depth
        has = np.ones(len(per_position), bool)
    n = np.add.reduceat(has.astype(np.int64), starts)
    jets = seqs.jets.arrow()
    columns = {
        "label": jets["label"].dictionary_decode(),
        "source": jets["source"].dictionary_decode(),
        "entry": jets["entry"],
        "log_likelihood": pa.array(-np.add.reduceat(model_nll, starts)),
        "n_predictions": pa.array(n),
        "unigram_log_likelihood": pa.array(-np.add.reduceat(uni, starts)),
        "bigram_log_likelihood": pa.array(-np.add.reduceat(big, starts)),
    }
    if levels is not None:
        columns["level_log_likelihood"] = _per_level(model_nll, levels, seqs.offsets)
    return pa.table(columns)


def _per_level(nll: np.ndarray, level: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """Per jet, the log-likelihood summed per generation level (a list, level 0 first)."""
    n_jets = len(offsets) - 1
    jet = np.repeat(np.arange(n_jets), np.diff(offsets))
    width = int(level.max(initial=0)) + 1
    sums = np.zeros((n_jets, width))
    np.add.at(sums, (jet, level), -nll)
    n_levels = np.zeros(n_jets, np.int64)
    np.maximum.at(n_levels, jet, level + 1)
    keep = np.arange(width)[None, :] < n_levels[:, None]
    level_offsets = np.concatenate([[0], np.cumsum(n_levels)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(level_offsets), pa.array(sums[keep]))


def write_scores(table: pa.Table, path: str | Path) -> Path:
    """The score table as Parquet, written atomically."""
    import pyarrow.parquet as pq

    from jetevo.io.atomic import atomic_path, ensure_writable_dir

    path = Path(path)
    ensure_writable_dir(path.parent)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def format_scores(table: pa.Table) -> str:
    """The one line ``jetevo score`` prints."""
    ll = np.asarray(table.column("log_likelihood"))
    n = np.asarray(table.column("n_predictions"))
    big = np.asarray(table.column("bigram_log_likelihood"))
    return (
        f"{len(ll)} jets: mean log-likelihood {ll.mean():.2f} nats per jet "
        f"({ll.sum() / n.sum():.3f} per prediction; bigram {big.sum() / n.sum():.3f})"
    )
