"""The GPT backbone both modes share: config, causal self-attention, MLP, block, backbone.

nanoGPT's design: pre-norm blocks, learned (or no) absolute positions, a final LayerNorm.
What a mode feeds it (token vectors plus the tree model's depth, side and scale, or the
flat model's tokens alone) and what it reads off the hidden states (split heads, or one
next-token head) live in :mod:`jetevo.model.tree` and :mod:`jetevo.model.flat`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as nnf
from torch import nn

from jetevo.config import check_fields, setting
from jetevo.errors import SettingError
from jetevo.tokenize.vocab import Vocab

MODES = ("tree", "flat")
POSITIONALS = ("learned", "none")
RIGHT_HEADS = ("context", "left-child")


@dataclass
class ModelConfig:
    """The ``model:`` section of a training config; types and ranges are checked on every
    construction (:func:`jetevo.config.check_fields`), settings named ``model.*``."""

    # "tree": split heads over declustering trees; "flat": OmniJet-alpha's next-token
    # generation of pT-ordered particles (the baseline), same backbone
    mode: str = setting("tree", choices=MODES)
    # tokenizer codebook size K and its node features (both set from the tokenizer)
    n_codes: int = setting(8192, ge=1)
    n_code_features: int = setting(6, ge=1)  # tree: 4 split features + the root grid's 2
    # positions: START + up to max_len - 1 expanded nodes (tree) or particles (flat)
    max_len: int = setting(128, ge=1)
    n_layer: int = setting(3, ge=1)
    n_head: int = setting(8, ge=1)
    n_embd: int = setting(256, ge=1)  # a multiple of n_head
    dropout: float = setting(0.0, ge=0, lt=1)
    bias: bool = True
    # "learned" absolute position embeddings, or "none" (OmniJet-alpha: causal attention
    # alone tells positions apart)
    positional: str = setting("learned", choices=POSITIONALS)
    token_features: bool = True
    # two-level output: P(token) = P(group) P(token | group), groups of this many tokens
    # (kinematically close codes, leaf and pseudojet tokens never mixed); 0 = flat softmax.
    # Exact either way; sampling then needs 2 x sqrt(V)-sized softmaxes instead of one of V.
    # Tree mode only: the flat model's output (codes and STOP) is a flat softmax.
    output_group_size: int = setting(128, ge=0)
    # tree mode: "context" right head attends over all visible positions given the left
    # child; "left-child" is the earlier one-key head (checkpoints without it load as it)
    right_head: str = setting("context", choices=RIGHT_HEADS)
    # tree mode: the expanded node's transverse momentum, as its token chain says it, as an
    # input (log bins): without it soft pseudojets kept splitting (runaways); 0 = off
    scale_bins: int = setting(32, ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "model.")
        if self.n_embd % self.n_head:
            raise SettingError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.mode == "flat" and self.output_group_size:
            raise SettingError(
                "model.output_group_size must be 0 in flat mode (its output is the codes and "
                "STOP, one softmax)"
            )
        # output_group_size must divide n_codes, which is the tokenizer's: checked where
        # the tree model is built, once n_codes is known

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.n_codes)

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values (B, H, T, hd) of every layer for the positions fed so far.

    Generation feeds one new position per step, so each step costs one position, not the
    whole prefix; ``keep(rows)`` drops finished sequences from the batch. A tree model's
    context right head keeps its own keys and values in one more slot.
    """

    def __init__(self, n_slots: int):
        self.k: list[torch.Tensor | None] = [None] * n_slots
        self.v: list[torch.Tensor | None] = [None] * n_slots

    def extend(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prev_k, prev_v = self.k[layer], self.v[layer]
        if prev_k is not None and prev_v is not None:  # both set together, by this method
            k = torch.cat([prev_k, k], dim=2)
            v = torch.cat([prev_v, v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def keep(self, rows: torch.Tensor) -> None:
        self.k = [None if z is None else z.index_select(0, rows) for z in self.k]
        self.v = [None if z is None else z.index_select(0, rows) for z in self.v]

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        causal = True
        if cache is not None:
            k, v = cache.extend(layer, k, v)
            if k.shape[2] > t:
                # one new position attending to everything before it and itself
                assert t == 1, "cached attention takes one new position at a time"
                causal = False
        y = nnf.scaled_dot_product_attention(
            q, k, v, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).contiguous().view(b, t, c))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(nnf.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Hidden states (B, T, C) of input vectors (B, T, C): positions, blocks, final norm.

    With a ``cache``, the inputs are the next position(s) after those already cached.
    """

    pos_emb: nn.Embedding | None

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.pos_emb = (
            nn.Embedding(cfg.max_len, cfg.n_embd) if cfg.positional == "learned" else None
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        t0 = 0 if cache is None else cache.length
        t = x.shape[1]
        if t0 + t > self.cfg.max_len:
            raise ValueError(f"sequence of {t0 + t} positions exceeds max_len={self.cfg.max_len}")
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(t0, t0 + t, device=x.device))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        return self.ln_f(x)


def scale_residual_projections(model: nn.Module, n_layer: int) -> None:
    """GPT-2's initialisation of the projections that write into the residual stream."""
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
