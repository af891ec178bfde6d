"""The one vocabulary layout shared by the tokenizer, the model and the generator.

A node token says two things: which codebook entry describes the node's kinematics, and
whether the node is a leaf (a particle, never expanded) or a pseudojet (expanded later):

- ``0 .. K-1``: pseudojet (internal node, root included) with code ``t``;
- ``K .. 2K-1``: leaf (particle) with code ``t - K``;
- then the named special tokens ``START``, ``STOP``, ``PAD``.

Every other module asks this one for token arithmetic; there are no magic numbers elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPECIALS = ("START", "STOP", "PAD")


@dataclass(frozen=True)
class Vocab:
    """Token layout for a codebook of ``n_codes`` entries."""

    n_codes: int

    @property
    def leaf_offset(self) -> int:
        return self.n_codes

    @property
    def start(self) -> int:
        return 2 * self.n_codes

    @property
    def stop(self) -> int:
        return 2 * self.n_codes + 1

    @property
    def pad(self) -> int:
        return 2 * self.n_codes + 2

    @property
    def size(self) -> int:
        """Number of distinct tokens (node tokens and specials)."""
        return 2 * self.n_codes + len(SPECIALS)

    @property
    def n_node_tokens(self) -> int:
        """Tokens that describe a node (what a split head predicts)."""
        return 2 * self.n_codes

    def token(self, code, is_leaf):
        """Node token(s) from code(s) and leaf flag(s)."""
        return np.asarray(code) + self.n_codes * np.asarray(is_leaf, dtype=np.int64)

    def code(self, token):
        """Codebook index of node token(s)."""
        return np.asarray(token) % self.n_codes

    def is_leaf(self, token):
        t = np.asarray(token)
        return (t >= self.n_codes) & (t < 2 * self.n_codes)

    def is_pseudojet(self, token):
        t = np.asarray(token)
        return (t >= 0) & (t < self.n_codes)

    def is_node(self, token):
        t = np.asarray(token)
        return (t >= 0) & (t < 2 * self.n_codes)

    # flat mode (OmniJet-alpha): a jet is a sequence of particles ended by STOP, so what a
    # flat model predicts is a particle's code or STOP: K + 1 classes
    @property
    def n_flat_classes(self) -> int:
        return self.n_codes + 1

    def flat_class(self, token):
        """Class of leaf token(s) or STOP in a flat model's output (code, or K for STOP)."""
        t = np.asarray(token)
        if not np.all(self.is_leaf(t) | (t == self.stop)):
            raise ValueError("flat classes exist for leaf tokens and STOP only")
        return np.where(t == self.stop, self.n_codes, t - self.leaf_offset)

    def flat_token(self, cls):
        """Token of flat class(es): the leaf token of the code, or STOP."""
        c = np.asarray(cls)
        return np.where(c == self.n_codes, self.stop, c + self.leaf_offset)
