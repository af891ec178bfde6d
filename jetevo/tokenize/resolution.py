"""The resolution scale: below it a generated node is a particle, never expanded.

Every pseudojet of the training trees has a transverse momentum above the scale at which
the detector (and the simulation's particle thresholds) stop resolving structure, but a
model that sees tokens, not momenta, can keep splitting soft pseudojets into ever softer
ones: a runaway cascade of sub-GeV nodes that never stops. Generation therefore follows
each node's transverse momentum as its tokens say it (the root's pT from its grid, then
every child's decoded share of its parent, ``exp(log_u)``, the momentum fraction of a fast
split: a chain of table lookups, without the full decoding) and turns a pseudojet token
below the scale into the leaf token of the same code: same kinematics, but a particle.

That chain is kept in one *order table* per tokenizer, of 2K entries: the log z of every
node code, then the log pT (GeV) of every root code (root and node codes share the token
range, :mod:`jetevo.tokenize.root`). It also orders every split's children (harder first)
and gives the model's scale input.

The scale is learned by ``jetevo train`` from the training trees (a low quantile of the
same token-chain pT of their pseudojets, so the rule almost never fires on a tree like the
training data) and stored in the model checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jetevo.tokenize.vocab import Vocab

QUANTILE = 0.001  # of the training pseudojets' token-chain pT


def root_log_pt(table: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """log pT (GeV) of root tokens from the order ``table`` (see the module docstring)."""
    n_codes = len(table) // 2
    return table[n_codes + Vocab(n_codes).code(tokens)]


def child_log_z(table: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """log z of child tokens from the order ``table``."""
    return table[Vocab(len(table) // 2).code(tokens)]


@dataclass(frozen=True)
class Resolution:
    """The order table ``code_log_z`` (from the tokenizer) and the scale ``log_pt_min`` (GeV)."""

    code_log_z: np.ndarray
    log_pt_min: float

    @property
    def vocab(self) -> Vocab:
        return Vocab(len(self.code_log_z) // 2)

    def root_log_pt(self, tokens: np.ndarray) -> np.ndarray:
        return root_log_pt(self.code_log_z, tokens)

    def child_log_pt(self, parent_log_pt: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return parent_log_pt + child_log_z(self.code_log_z, tokens)

    def resolve(self, tokens: np.ndarray, log_pt: np.ndarray) -> np.ndarray:
        """``tokens`` with every pseudojet below the scale turned into a leaf."""
        v = self.vocab
        below = v.is_pseudojet(tokens) & (log_pt < self.log_pt_min)
        return np.where(below, v.token(v.code(tokens), True), tokens)


def code_log_z(tokenizer) -> np.ndarray:
    """The order table of a tokenizer (see the module docstring; a flat tokenizer, which
    has neither splits nor a root grid, gets its first feature twice)."""
    node = tokenizer.features_from_codes(np.arange(tokenizer.cfg.n_codes))[:, 0]
    root = tokenizer.root_code_log_pt()
    return np.concatenate([node, node if root is None else root])


def chain_log_pt(
    table: np.ndarray, tokens: np.ndarray, parent: np.ndarray, depth: np.ndarray
) -> np.ndarray:
    """Token-chain log pT of every node of flat trees (``parent``: global index, -1 for
    roots) from their tokens and the order ``table``, top-down."""
    out = np.empty(len(tokens))
    for d in range(int(depth.max(initial=0)) + 1):
        at = np.flatnonzero(depth == d)
        if d == 0:
            out[at] = root_log_pt(table, tokens[at])
        else:
            out[at] = out[parent[at]] + child_log_z(table, tokens[at])
    return out


def learn_scale(tokenizer, tokens: np.ndarray, parent: np.ndarray, depth: np.ndarray) -> float:
    """log of the :data:`QUANTILE` of the token-chain pT of the pseudojets in flat trees."""
    vocab = tokenizer.vocab
    log_pt = chain_log_pt(code_log_z(tokenizer), tokens, parent, depth)
    pseudo = vocab.is_pseudojet(tokens)
    if not pseudo.any():
        return float("-inf")
    return float(np.quantile(log_pt[pseudo], QUANTILE))
