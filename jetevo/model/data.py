"""Expansion sequences from token files, for training and split evaluation.

Per jet (see :mod:`jetevo.model.gpt` for the design): inputs ``[START, t(internal nodes in
pre-order)]`` with their depth (START 0, root 1, ...) and side, and targets: the root token
at START, then each node's left and right child tokens. Built with flat array operations,
no per-jet Python loop.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import torch

from jetevo.errors import InputError
from jetevo.model.gpt import IGNORE, SIDE_LEFT, SIDE_RIGHT, SIDE_ROOT, SIDE_START, scale_bin
from jetevo.tokenize.resolution import chain_log_pt
from jetevo.tokenize.tokens import tokenizer_metadata
from jetevo.tokenize.vocab import Vocab
from jetevo.trees.format import load, tree_files

COLUMNS = ["token", "left", "right", "parent", "depth"]
FIELDS = ("tokens", "depth", "side", "scale", "left", "right")


def token_file_info(paths) -> tuple[list[Path], dict]:
    """Token files and the tokenizer they were made with (all files must agree)."""
    files = tree_files(paths)
    infos = {}
    for f in files:
        infos[f] = tokenizer_metadata(f)
    identities = {i["identity"] for i in infos.values()}
    if len(identities) > 1:
        raise InputError(
            files[0],
            f"token files come from {len(identities)} different tokenizers: {sorted(identities)}",
        )
    return files, next(iter(infos.values()))


class Sequences:
    """All expansion sequences of a set of token files, flat, with per-jet offsets."""

    def __init__(
        self,
        paths,
        n_codes: int,
        max_len: int,
        code_log_z: np.ndarray | None = None,
        scale_bins: int = 0,
    ):
        """``code_log_z`` and ``scale_bins`` (a model with the scale input): each position's
        :func:`~jetevo.model.gpt.scale_bin` as ``scale`` (0 everywhere otherwise)."""
        files, self.tokenizer = token_file_info(paths)
        if self.tokenizer["n_codes"] != n_codes:
            raise InputError(
                files[0], f"tokens use {self.tokenizer['n_codes']} codes, the model {n_codes}"
            )
        trees = load(files, columns=COLUMNS)
        self.n_codes = n_codes
        start = 2 * n_codes
        counts = ak.to_numpy(ak.num(trees["token"], axis=1)).astype(np.int64)
        tok = ak.to_numpy(ak.flatten(trees["token"])).astype(np.int64)
        if not np.all(Vocab(n_codes).is_node(tok)):
            raise InputError(files[0], "token column holds values that are not node tokens")
        left, right, parent, depth = (
            ak.to_numpy(ak.flatten(trees[k])).astype(np.int64)
            for k in ("left", "right", "parent", "depth")
        )
        first = np.repeat(np.cumsum(counts) - counts, counts)
        internal = left >= 0
        n_internal = np.bincount(
            np.repeat(np.arange(len(counts)), counts)[internal], minlength=len(counts)
        )
        length = n_internal + 1
        too_long = np.flatnonzero(length > max_len)
        if len(too_long):
            raise InputError(
                files[0],
                f"{len(too_long)} jet(s) need more than max_len={max_len} positions (model.max_len)",
            )
        self.offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(length, out=self.offsets[1:])
        n = int(self.offsets[-1])
        self.tokens = np.empty(n, np.int64)
        self.depth = np.empty(n, np.int64)
        self.side = np.empty(n, np.int64)
        self.left = np.empty(n, np.int64)
        self.right = np.empty(n, np.int64)
        starts = self.offsets[:-1]
        roots = np.cumsum(counts) - counts
        self.tokens[starts], self.depth[starts], self.side[starts] = start, 0, SIDE_START
        self.left[starts], self.right[starts] = tok[roots], IGNORE
        rest = np.ones(n, bool)
        rest[starts] = False
        g = np.flatnonzero(internal)  # global node ids of internal nodes, in pre-order per jet
        g_parent = np.where(parent[g] >= 0, first[g] + parent[g], -1)
        is_left = (g_parent >= 0) & (first[g] + left[np.maximum(g_parent, 0)] == g)
        self.tokens[rest] = tok[g]
        self.depth[rest] = depth[g] + 1
        self.side[rest] = np.where(
            g_parent < 0, SIDE_ROOT, np.where(is_left, SIDE_LEFT, SIDE_RIGHT)
        )
        self.left[rest] = tok[first[g] + left[g]]
        self.right[rest] = tok[first[g] + right[g]]
        self.scale = np.zeros(n, np.int64)
        if scale_bins:
            if code_log_z is None:
                raise ValueError("scale_bins needs the codes' log z (code_log_z)")
            global_parent = np.where(parent >= 0, first + parent, -1)
            log_pt = chain_log_pt(code_log_z[tok % n_codes], global_parent, depth)
            self.scale[rest] = scale_bin(log_pt[g], scale_bins)
        self.files = files

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(parent token, child token) of every child (START is the root's parent)."""
        has_r = self.right != IGNORE
        return np.concatenate([self.tokens, self.tokens[has_r]]), np.concatenate(
            [self.left, self.right[has_r]]
        )

    def subset(self, jets: np.ndarray) -> SequenceSubset:
        return SequenceSubset(self, np.asarray(jets, np.int64))


class SequenceSubset(torch.utils.data.Dataset):
    def __init__(self, seqs: Sequences, jets: np.ndarray):
        self.seqs, self.jets = seqs, jets

    def __len__(self) -> int:
        return len(self.jets)

    def __getitem__(self, i: int) -> dict:
        s = self.seqs
        a, b = s.offsets[self.jets[i]], s.offsets[self.jets[i] + 1]
        return {k: getattr(s, k)[a:b] for k in FIELDS}


def collate(items: list[dict], pad_token: int) -> dict:
    """Right-pad a list of sequences; padded positions have ignored targets."""
    t = max(len(it["tokens"]) for it in items)
    out = {}
    for k, fill in (
        ("tokens", pad_token),
        ("depth", 0),
        ("side", SIDE_START),
        ("scale", 0),
        ("left", IGNORE),
        ("right", IGNORE),
    ):
        arr = np.full((len(items), t), fill, np.int64)
        for i, it in enumerate(items):
            arr[i, : len(it[k])] = it[k]
        out[k] = torch.from_numpy(arr)
    return out
