"""Real jets to continue: ``jetevo generate --prefix``.

A prefix jet's tree is kept down to a depth K (or for its first N expansions in the
training order) and the model samples the rest, M times per jet. The prefix is read from
tree files (encoded with the model's tokenizer) or token files (which must come from that
tokenizer). Its nodes enter the sampler as a :class:`~jetevo.generate.sampler.Teacher`
limited to the prefix, so they sit at exactly the positions, depths and sides the model
was trained on, and keep their stored four-momenta (the sampled subtrees are decoded
relative to them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np

from jetevo.errors import InputError, SettingError
from jetevo.generate.sampler import Teacher
from jetevo.kinematics import JET_KINEMATICS
from jetevo.tokenize.tokens import TOKENIZER_KEY, tokenizer_metadata
from jetevo.trees.format import (
    NODE_FLOAT_FIELDS,
    JetColumns,
    Topology,
    load,
    read_schema,
    tree_files,
)


@dataclass
class PrefixJets:
    """Real jets, flat over nodes in stored order (``topology.offsets`` per jet): their
    tokens, four-momenta and jet kinematics (as stored: the root is real in every
    completion), jet columns and the float type they were stored in."""

    token: np.ndarray
    p: np.ndarray
    topology: Topology
    jets: JetColumns
    kinematics: dict[str, np.ndarray]
    precision: str
    files: list[Path]

    def __len__(self) -> int:
        return len(self.topology)

    def select(self, rows: np.ndarray) -> PrefixJets:
        """The jets ``rows`` (repeats allowed), in that order."""
        off = self.topology.offsets
        counts = np.diff(off)[rows]
        new_off = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(counts, out=new_off[1:])
        nodes = np.repeat(off[:-1][rows] - new_off[:-1], counts) + np.arange(new_off[-1])
        t = self.topology
        topology = Topology(t.left[nodes], t.right[nodes], t.parent[nodes], t.depth[nodes], new_off)
        kinematics = {k: v[rows] for k, v in self.kinematics.items()}
        return PrefixJets(
            self.token[nodes], self.p[nodes], topology, self.jets.select(rows), kinematics,
            self.precision, self.files,
        )  # fmt: skip

    def teacher(self, max_depth: int | None, max_steps: int | None) -> Teacher:
        return Teacher(self.token, self.topology, max_depth, max_steps)

    def expansions(self, max_depth: int | None, max_steps: int | None) -> np.ndarray:
        """Per jet, how many of its splits the prefix keeps."""
        t = self.topology
        internal = t.left >= 0
        if max_depth is not None:
            internal &= t.depth < max_depth
        jet = np.repeat(np.arange(len(self)), np.diff(t.offsets))
        n = np.bincount(jet[internal], minlength=len(self))
        return n if max_steps is None else np.minimum(n, max_steps)


def read_prefix(paths, tokenizer, n_jets: int | None = None) -> PrefixJets:
    """The jets of tree files (encoded here with ``tokenizer``) or of token files (which
    must come from ``tokenizer``; refused in one line otherwise), the first ``n_jets``."""
    files = tree_files(paths)
    token_files = [f for f in files if TOKENIZER_KEY in (read_schema(f).metadata or {})]
    if token_files and len(token_files) < len(files):
        raise InputError(files[0], "prefix files mix token files and tree files")
    for f in token_files:
        identity = tokenizer_metadata(f)["identity"]
        if identity != tokenizer.identity:
            raise InputError(
                f, f"tokens come from tokenizer {identity}, the model's is {tokenizer.identity}"
            )
    trees = load(files)  # refuses a file that is not a jetevo tree file
    if n_jets is not None:
        trees = trees[:n_jets]
    if len(trees) == 0:
        raise InputError(files[0], "the prefix files hold no jets")
    if token_files:
        tokens = ak.to_numpy(ak.flatten(trees["token"])).astype(np.int64)
    else:
        tokens = np.asarray(tokenizer.encode_trees(trees), np.int64)
    p = np.column_stack([ak.to_numpy(ak.flatten(trees[k])) for k in NODE_FLOAT_FIELDS])
    kinematics = {k: ak.to_numpy(trees[k]) for k in JET_KINEMATICS}
    return PrefixJets(
        tokens, p, Topology.of(trees), JetColumns.of(trees), kinematics, str(p.dtype), files
    )


def check_prefix_settings(depth, nodes, completions) -> None:
    """Exactly one of ``--prefix-depth`` and ``--prefix-nodes``, each a whole number >= 0;
    ``--completions`` >= 1."""
    if (depth is None) == (nodes is None):
        raise SettingError("--prefix needs exactly one of --prefix-depth and --prefix-nodes")
    for name, value in (("--prefix-depth", depth), ("--prefix-nodes", nodes)):
        if value is not None and not (isinstance(value, int) and value >= 0):
            raise SettingError(f"{name} must be a whole number >= 0, got {value!r}")
    if not (isinstance(completions, int) and completions >= 1):
        raise SettingError(f"--completions must be a whole number >= 1, got {completions!r}")
