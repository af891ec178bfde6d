"""The flat (OmniJet-alpha) model: next-token generation of pT-ordered particles.

The baseline the tree model is measured against, on the same backbone
(:class:`~jetevo.model.gpt.GPT`): a jet is ``[START, t1, ..., tN]`` of particle tokens in
decreasing pT (:class:`~jetevo.model.sequences.FlatSequences`), and one head predicts the
next particle's code or STOP (:meth:`~jetevo.tokenize.vocab.Vocab.flat_class`) at every
position. OmniJet-alpha's design: no position embedding (``positional: none``), causal
attention alone; unlike it, padding is never in the loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from jetevo.errors import SettingError
from jetevo.model.gpt import GPT, KVCache, ModelConfig, scale_residual_projections
from jetevo.model.heads import TokenTable
from jetevo.model.loss import flat_nll
from jetevo.model.output import OutputLayer


class FlatModel(nn.Module):
    extra: dict  # the checkpoint's other entries (set by load_model)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.mode != "flat":
            raise SettingError(f"FlatModel is the flat mode; model.mode is {cfg.mode}")
        self.cfg = cfg
        self.vocab = cfg.vocab
        self.tokens = TokenTable(cfg)
        self.gpt = GPT(cfg)
        self.head = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        classes = self.vocab.flat_token(np.arange(self.vocab.n_flat_classes))
        self.output = OutputLayer(cfg.n_embd, torch.as_tensor(classes))
        scale_residual_projections(self, cfg.n_layer)
        self.tokenizer_identity: str | None = None
        self.extra = {}

    def hidden(
        self, inputs: dict, table: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Hidden states (B, T, C) of the input ``tokens`` (B, T) (after those in ``cache``)."""
        table = self.tokens.table() if table is None else table
        return self.gpt(table[inputs["tokens"]], cache)

    def kv_cache(self) -> KVCache:
        return KVCache(self.cfg.n_layer)

    def state(self, h: torch.Tensor) -> torch.Tensor:
        """The next-particle head's output state."""
        return self.head(h)

    def set_code_features(self, features: torch.Tensor, log_z: np.ndarray | None = None) -> None:
        """Store what each code decodes to (``log_z`` is the tree model's; unused here)."""
        with torch.no_grad():
            self.tokens.code_features.copy_(torch.as_tensor(features, dtype=torch.float32))

    def sample_next(
        self,
        h: torch.Tensor,
        table: torch.Tensor,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        greedy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next tokens (a particle's leaf token, or STOP) for states ``h`` (B, C), and their
        probabilities."""
        cls, p = self.output.sample(self.state(h), table, temperature, top_k, generator, greedy)
        return self.output.class_tokens[cls], p

    def forward(self, batch: dict) -> torch.Tensor:
        """Mean NLL per prediction of a batch (the training loss)."""
        out = flat_nll(self, batch)
        return out["nll_sum"] / out["n_targets"].clamp(min=1)
