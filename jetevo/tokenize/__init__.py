"""Per-node tokenizer: node kinematics <-> integer tokens (see :mod:`jetevo.tokenize.vocab`)."""

from jetevo.tokenize.tokenizer import Tokenizer, TokenizerConfig
from jetevo.tokenize.vocab import Vocab

__all__ = ["Tokenizer", "TokenizerConfig", "Vocab"]
