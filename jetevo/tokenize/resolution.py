"""The resolution scale: below it a generated node is a particle, never expanded.

Every pseudojet of the training trees has a transverse momentum above the scale at which
the detector (and the simulation's particle thresholds) stop resolving structure, but a
model that sees tokens, not momenta, can keep splitting soft pseudojets into ever softer
ones: a runaway cascade of sub-GeV nodes that never stops. Generation therefore follows
each node's transverse momentum as its tokens say it (the root's pT, then every child's
decoded momentum fraction of its parent, ``exp(log_z)``: exactly the top-down decoding
before four-momentum conservation) and turns a pseudojet token below the scale into the
leaf token of the same code: same kinematics, but a particle.

The scale is learned by ``jetevo train`` from the training trees (a low quantile of the
same token-chain pT of their pseudojets, so the rule almost never fires on a tree like the
training data) and stored in the model checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jetevo.tokenize import features as F
from jetevo.tokenize.vocab import Vocab

QUANTILE = 0.001  # of the training pseudojets' token-chain pT
ROOT_LOG_PT = float(np.log(F.ROOT_PT_REF))  # a root's pT is relative to this virtual parent


@dataclass(frozen=True)
class Resolution:
    """``log_z`` of every code (from the tokenizer) and the scale ``log_pt_min`` (GeV)."""

    code_log_z: np.ndarray
    log_pt_min: float

    @property
    def vocab(self) -> Vocab:
        return Vocab(len(self.code_log_z))

    def root_log_pt(self, tokens: np.ndarray) -> np.ndarray:
        return ROOT_LOG_PT + self.code_log_z[self.vocab.code(tokens)]

    def child_log_pt(self, parent_log_pt: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return parent_log_pt + self.code_log_z[self.vocab.code(tokens)]

    def resolve(self, tokens: np.ndarray, log_pt: np.ndarray) -> np.ndarray:
        """``tokens`` with every pseudojet below the scale turned into a leaf."""
        v = self.vocab
        below = v.is_pseudojet(tokens) & (log_pt < self.log_pt_min)
        return np.where(below, v.token(v.code(tokens), True), tokens)


def code_log_z(tokenizer) -> np.ndarray:
    """``log_z`` that every code decodes to."""
    return tokenizer.features_from_codes(np.arange(tokenizer.cfg.n_codes))[:, 0]


def chain_log_pt(log_z: np.ndarray, parent: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Token-chain log pT of every node of flat trees (``parent``: global index, -1 for
    roots; ``log_z``: each node's decoded log z), top-down."""
    out = np.empty(len(log_z))
    for d in range(int(depth.max(initial=0)) + 1):
        at = np.flatnonzero(depth == d)
        base = ROOT_LOG_PT if d == 0 else out[parent[at]]
        out[at] = base + log_z[at]
    return out


def learn_scale(tokenizer, tokens: np.ndarray, parent: np.ndarray, depth: np.ndarray) -> float:
    """log of the :data:`QUANTILE` of the token-chain pT of the pseudojets in flat trees."""
    vocab = tokenizer.vocab
    log_z = code_log_z(tokenizer)[vocab.code(tokens)]
    log_pt = chain_log_pt(log_z, parent, depth)
    pseudo = vocab.is_pseudojet(tokens)
    if not pseudo.any():
        return float("-inf")
    return float(np.quantile(log_pt[pseudo], QUANTILE))
