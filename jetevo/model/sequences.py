"""What the model reads at every position, one builder per mode, from token files.

Tree mode (see :mod:`jetevo.model.tree`). A jet's internal nodes are expanded in depth-first
pre-order with, at every split, the child whose *token-chain* transverse momentum is larger
expanded first (the root's decoded pT, then each child's decoded momentum fraction of its
parent: what generation knows of a node, :mod:`jetevo.tokenize.resolution`; on equal pT,
the larger token: :func:`expansion_key`). The order is a function of the tokens alone, so
swapping a split's children in the stored tree changes nothing. Generation orders each sampled pair the same way, so training, evaluation,
``predict`` and generation see one order. The inputs are ``[START, t(root), t(n2), ...]``,
one position per node to expand, each with the depth, side and scale bin of
:func:`position_inputs`; targets are the root token at START, then each node's left and
right child tokens.

Flat mode (see :mod:`jetevo.model.flat`): a jet is its particles' tokens in decreasing pT
(the first ``max_len - 1``), ``[START, t1, ..., tN]`` as inputs and the classes of
``[t1, ..., tN, STOP]`` as targets.

Built with flat array operations, no per-jet Python loop.
"""

from __future__ import annotations

import math
from pathlib import Path

import awkward as ak
import numpy as np

from jetevo.errors import InputError
from jetevo.tokenize.resolution import chain_log_pt, child_log_z, root_log_pt
from jetevo.tokenize.tokens import tokenizer_metadata
from jetevo.tokenize.vocab import Vocab
from jetevo.trees.format import JetColumns, load, tree_files
from jetevo.trees.kernel import preorder_batch

IGNORE = -100  # target of a position without one (padding, START's right child)
SIDE_START, SIDE_ROOT, SIDE_LEFT, SIDE_RIGHT = 0, 1, 2, 3
SCALE_LOG_PT = (math.log(0.1), math.log(2000.0))  # range of the scale bins (GeV)

TREE_COLUMNS = ["token", "left", "right", "parent", "depth"]
FLAT_COLUMNS = ["token", "left", "px", "py"]
JET_COLUMNS = ["label", "source", "entry"]


def scale_bin(log_pt: np.ndarray, n_bins: int) -> np.ndarray:
    """Scale-embedding index of a node from its token-chain log pT: 1..n_bins over
    :data:`SCALE_LOG_PT` (clamped), 0 reserved for START."""
    lo, hi = SCALE_LOG_PT
    x = (np.asarray(log_pt, np.float64) - lo) / (hi - lo) * n_bins
    return 1 + np.clip(np.floor(x), 0, n_bins - 1).astype(np.int64)


def position_inputs(
    tokens: np.ndarray,
    tree_depth: np.ndarray,
    side: np.ndarray,
    log_pt: np.ndarray,
    scale_bins: int,
) -> dict[str, np.ndarray]:
    """The inputs of positions that expand nodes: the node's token, its tree depth + 1
    (START is 0), its side, and its scale bin (0 for a model without the scale input).
    The one rule: training sequences, ``predict`` and the sampler all call it."""
    tokens = np.asarray(tokens, np.int64)
    scale = scale_bin(log_pt, scale_bins) if scale_bins else np.zeros(tokens.shape, np.int64)
    return {
        "tokens": tokens,
        "depth": np.asarray(tree_depth, np.int64) + 1,
        "side": np.asarray(side, np.int64),
        "scale": scale,
    }


def start_inputs(vocab: Vocab, n: int) -> dict[str, np.ndarray]:
    """The inputs of the START position of ``n`` jets."""
    return {
        "tokens": np.full(n, vocab.start, np.int64),
        "depth": np.zeros(n, np.int64),
        "side": np.full(n, SIDE_START, np.int64),
        "scale": np.zeros(n, np.int64),
    }


def node_side(is_root: np.ndarray, is_left: np.ndarray) -> np.ndarray:
    return np.where(is_root, SIDE_ROOT, np.where(is_left, SIDE_LEFT, SIDE_RIGHT))


def sequence_log_pt(tokens: np.ndarray, depth: np.ndarray, log_z: np.ndarray) -> np.ndarray:
    """Token-chain log pT of every position of expansion sequences (B, T) from their tokens
    and input depths alone (``log_z``: the order table): in depth-first pre-order a node's
    parent is the last earlier position one level up. Position 0 (START) gets 0. Same
    values as the chain over the tree (:func:`jetevo.tokenize.resolution.chain_log_pt`)."""
    out = np.zeros(tokens.shape)
    for b in range(tokens.shape[0]):
        last: dict[int, float] = {}  # depth -> log pT of the latest position at that depth
        for t in range(1, tokens.shape[1]):
            d = int(depth[b, t])
            token = tokens[b, t : t + 1]
            if d <= 1:
                out[b, t] = root_log_pt(log_z, token)[0]
            else:
                out[b, t] = last.get(d - 1, 0.0) + child_log_z(log_z, token)[0]
            last[d] = out[b, t]
    return out


def expansion_key(log_pt: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Which of two siblings is expanded first: the larger token-chain log pT, then (same
    code, leaf or pseudojet) the larger token, as the sampler orders each pair. Only two
    identical siblings tie, and for them the order is the stored one. A dense rank, so the
    pre-order writer compares one number."""
    idx = np.lexsort((tokens, log_pt))
    lp, tk = log_pt[idx], tokens[idx]
    new = np.ones(len(idx), bool)
    new[1:] = (lp[1:] != lp[:-1]) | (tk[1:] != tk[:-1])
    key = np.empty(len(idx))
    key[idx] = np.cumsum(new)
    return key


def token_file_info(paths) -> tuple[list[Path], dict]:
    """Token files and the tokenizer they were made with (all files must agree)."""
    files = tree_files(paths)
    infos = {f: tokenizer_metadata(f) for f in files}
    identities = {i["identity"] for i in infos.values()}
    if len(identities) > 1:
        raise InputError(
            files[0],
            f"token files come from {len(identities)} different tokenizers: {sorted(identities)}",
        )
    return files, next(iter(infos.values()))


class _Sequences:
    """Per-position arrays of many jets, flat, with per-jet ``offsets``; ``fields`` names
    the arrays a batch holds and ``fill`` their padding.

    Built from token files (the constructor: every jet in memory) or, by
    :meth:`from_columns`, from the flat node columns of a slice of jets (the streaming
    reader, :mod:`jetevo.model.streaming`): one builder either way."""

    fields: tuple[str, ...] = ()
    fill: dict[str, int]
    offsets: np.ndarray
    files: list[Path]
    tokenizer: dict
    jets: JetColumns
    where: str | Path  # what errors name: the first token file, or the slice's label

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def jet(self, i: int) -> dict[str, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return {k: getattr(self, k)[a:b] for k in self.fields}

    @classmethod
    def from_columns(cls, counts: np.ndarray, nodes: dict[str, np.ndarray], where, *args, **kw):
        """The sequences of jets given as node ``counts`` and flat node columns (``token``
        and those of the mode: :data:`TREE_COLUMNS` or :data:`FLAT_COLUMNS`); ``where``
        names them in errors; the other arguments are the constructor's after ``paths``."""
        self = cls.__new__(cls)
        self.where = where
        self._build(np.asarray(counts, np.int64), nodes, *args, **kw)
        return self

    def _build(self, counts: np.ndarray, nodes: dict[str, np.ndarray], *args, **kw) -> None:
        raise NotImplementedError  # each mode's builder

    def _open(self, paths, vocab: Vocab, columns: list[str]) -> tuple[np.ndarray, dict]:
        """Node counts and flat node columns of every jet of the token files."""
        self.files, self.tokenizer = token_file_info(paths)
        self.where = self.files[0]
        if self.tokenizer["n_codes"] != vocab.n_codes:
            raise InputError(
                self.files[0],
                f"tokens use {self.tokenizer['n_codes']} codes, the model {vocab.n_codes}",
            )
        trees = load(self.files, columns=[*columns, *JET_COLUMNS])
        self.jets = JetColumns.of(trees)  # label, source, entry of every jet, in order
        counts = ak.to_numpy(ak.num(trees["token"], axis=1)).astype(np.int64)
        return counts, {k: ak.to_numpy(ak.flatten(trees[k])) for k in columns}

    def _check_tokens(self, tok: np.ndarray, vocab: Vocab) -> None:
        if not np.all(vocab.is_node(tok)):
            raise InputError(self.where, "token column holds values that are not node tokens")

    def _too_long(self, length: np.ndarray, max_len: int) -> None:
        n = int(np.count_nonzero(length > max_len))
        if n:
            raise InputError(
                self.where,
                f"{n} jet(s) need more than max_len={max_len} positions (model.max_len)",
            )


class TreeSequences(_Sequences):
    """Tree-mode expansion sequences of a set of token files (see the module docstring).

    ``code_log_z``: each code's decoded log z, which orders every split's children (ties,
    and every split when it is None, keep the stored order) and, for a model with
    ``scale_bins``, gives each position's scale bin.
    """

    fields = ("tokens", "depth", "side", "scale", "left", "right")

    def __init__(
        self,
        paths,
        vocab: Vocab,
        max_len: int,
        code_log_z: np.ndarray | None = None,
        scale_bins: int = 0,
    ):
        if scale_bins and code_log_z is None:  # before reading the files
            raise ValueError("scale_bins needs the codes' log z (code_log_z)")
        counts, nodes = self._open(paths, vocab, TREE_COLUMNS)
        self._build(counts, nodes, vocab, max_len, code_log_z, scale_bins)

    @staticmethod
    def fill_values(vocab: Vocab) -> dict[str, int]:
        return {"tokens": vocab.pad, "depth": 0, "side": SIDE_START, "scale": 0,
                "left": IGNORE, "right": IGNORE}  # fmt: skip

    def _build(
        self,
        counts: np.ndarray,
        nodes: dict[str, np.ndarray],
        vocab: Vocab,
        max_len: int,
        code_log_z: np.ndarray | None = None,
        scale_bins: int = 0,
    ) -> None:
        if scale_bins and code_log_z is None:
            raise ValueError("scale_bins needs the codes' log z (code_log_z)")
        self.fill = self.fill_values(vocab)
        node_offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=node_offsets[1:])
        tok, left, right, parent, depth = (np.asarray(nodes[k], np.int64) for k in TREE_COLUMNS)
        self._check_tokens(tok, vocab)
        first = np.repeat(node_offsets[:-1], counts)
        log_pt = np.zeros(len(tok))
        if code_log_z is not None:
            global_parent = np.where(parent >= 0, first + parent, -1)
            log_pt = chain_log_pt(code_log_z, tok, global_parent, depth)
        # the expansion order: harder child (token chain) first at every split
        key = expansion_key(log_pt, tok)
        order, left, right, parent, depth, _ = preorder_batch(left, right, key, node_offsets)
        tok, log_pt = tok[order], log_pt[order]

        internal = left >= 0
        jet_of = np.repeat(np.arange(len(counts)), counts)
        length = np.bincount(jet_of[internal], minlength=len(counts)) + 1
        self._too_long(length, max_len)
        self.offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(length, out=self.offsets[1:])
        starts = self.offsets[:-1]
        rest = np.ones(int(self.offsets[-1]), bool)
        rest[starts] = False

        g = np.flatnonzero(internal)  # global ids of internal nodes, in expansion order
        g_parent = np.where(parent[g] >= 0, first[g] + parent[g], -1)
        is_left = (g_parent >= 0) & (first[g] + left[np.maximum(g_parent, 0)] == g)
        inputs = {k: np.empty(len(rest), np.int64) for k in ("tokens", "depth", "side", "scale")}
        for k, v in start_inputs(vocab, len(starts)).items():
            inputs[k][starts] = v
        nodes = position_inputs(
            tok[g], depth[g], node_side(g_parent < 0, is_left), log_pt[g], scale_bins
        )
        for k, v in nodes.items():
            inputs[k][rest] = v
        self.tokens, self.depth = inputs["tokens"], inputs["depth"]
        self.side, self.scale = inputs["side"], inputs["scale"]
        self.left = np.empty(len(rest), np.int64)
        self.right = np.empty(len(rest), np.int64)
        self.left[starts], self.right[starts] = tok[node_offsets[:-1]], IGNORE
        self.left[rest] = tok[first[g] + left[g]]
        self.right[rest] = tok[first[g] + right[g]]
        # the node each position expands, as an index into the files' nodes as stored (-1
        # at START): what ties a position to its real kinematics (the fidelity diagnosis)
        self.node = np.full(len(rest), -1, np.int64)
        self.node[rest] = order[g]

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(parent token, child token) of every child (START is the root's parent)."""
        has_r = self.right != IGNORE
        return np.concatenate([self.tokens, self.tokens[has_r]]), np.concatenate(
            [self.left, self.right[has_r]]
        )


class FlatSequences(_Sequences):
    """Flat-mode sequences of a set of token files (see the module docstring): input tokens
    and target classes (:meth:`jetevo.tokenize.vocab.Vocab.flat_class`). ``truncated``
    counts the jets with more than ``max_len - 1`` particles, cut to their hardest (and
    without a STOP target: they do not end there)."""

    fields = ("tokens", "target")

    def __init__(self, paths, vocab: Vocab, max_len: int):
        counts, nodes = self._open(paths, vocab, FLAT_COLUMNS)
        self._build(counts, nodes, vocab, max_len)

    @staticmethod
    def fill_values(vocab: Vocab) -> dict[str, int]:
        return {"tokens": vocab.pad, "target": IGNORE}

    def _build(
        self, counts: np.ndarray, nodes: dict[str, np.ndarray], vocab: Vocab, max_len: int
    ) -> None:
        self.fill = self.fill_values(vocab)
        tok, left = (np.asarray(nodes[k], np.int64) for k in ("token", "left"))
        self._check_tokens(tok, vocab)
        pt = np.hypot(*(np.asarray(nodes[k], np.float64) for k in ("px", "py")))
        jet_of = np.repeat(np.arange(len(counts)), counts)
        leaf = left < 0
        tok, pt, jet_of = tok[leaf], pt[leaf], jet_of[leaf]
        order = np.lexsort((-pt, jet_of))  # per jet, in decreasing pT (stable on ties)
        tok, jet_of = tok[order], jet_of[order]
        n_leaves = np.bincount(jet_of, minlength=len(counts))
        rank = np.arange(len(tok)) - np.repeat(np.cumsum(n_leaves) - n_leaves, n_leaves)
        keep = rank < max_len - 1
        self.truncated = int(np.count_nonzero(n_leaves > max_len - 1))
        tok, jet_of = tok[keep], jet_of[keep]
        n = np.bincount(jet_of, minlength=len(counts))
        length = n + 1
        self.offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(length, out=self.offsets[1:])
        starts, ends = self.offsets[:-1], self.offsets[1:] - 1
        rest = np.ones(int(self.offsets[-1]), bool)
        rest[starts] = False
        self.tokens = np.empty(len(rest), np.int64)
        self.tokens[starts] = vocab.start
        self.tokens[rest] = tok
        # targets: the next particle, and STOP after the last one
        self.target = np.empty(len(rest), np.int64)
        nxt = np.ones(len(rest), bool)
        nxt[ends] = False
        self.target[nxt] = vocab.flat_class(tok)
        # STOP after a jet's last particle; a cut jet goes on, so its last kept position
        # has no target (a STOP there would teach the model to stop at the cut)
        cut = n_leaves > max_len - 1
        self.target[ends] = np.where(cut, IGNORE, vocab.flat_class(vocab.stop))

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(previous token, next class) of every prediction (START before the first)."""
        return self.tokens, self.target
