"""The pieces a mode puts around the backbone: token vectors and the right head's attention.

Token vectors (:class:`TokenTable`) are a learned table plus a projection of what each code
decodes to (the tokenizer's node features and the leaf flag, stored as a buffer), so
tokens with similar kinematics share statistics from the first step; they are both the
input embedding and the output vectors (:mod:`jetevo.model.output`).

The tree model's right head is conditioned on *this split's* left child: with
``right_head="context"`` the parent's state plus the left child's token vector queries the
final hidden states of every position the parent can see (:class:`ContextCrossAttention`);
``"left-child"`` is the earlier head, a cross-attention to the left child's embedding alone
(:class:`ChildCrossAttention`, one key: an additive conditioning), kept for its checkpoints.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from jetevo.model.gpt import ModelConfig


class ChildCrossAttention(nn.Module):
    """Cross-attention from the parent state (query) to the left child's embedding (key/value)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.kv = nn.Linear(cfg.n_embd, 2 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.ln = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)

    def forward(self, h: torch.Tensor, child: torch.Tensor) -> torch.Tensor:
        """``h``, ``child``: (..., C). Each parent attends to its own left child only."""
        shape = h.shape
        c = shape[-1]
        hd = c // self.n_head
        q = self.q(h).reshape(-1, self.n_head, 1, hd)
        k, v = (z.reshape(-1, self.n_head, 1, hd) for z in self.kv(child).split(c, dim=-1))
        y = nnf.scaled_dot_product_attention(q, k, v).reshape(shape)
        return self.ln(h + self.proj(y))


class ContextCrossAttention(nn.Module):
    """Right-head attention over the context: the query is the parent's state plus its left
    child's token vector, the keys and values are the final hidden states of every position
    the parent can see (itself and before, never later ones).

    A single key (:class:`ChildCrossAttention`) always gets softmax weight 1, so its query
    never learns; here the left child decides which nodes of the jet's history to read.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.child = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.kv = nn.Linear(cfg.n_embd, 2 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.ln = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def context(self, h_all: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, S, hd) of the final hidden states ``h_all`` (B, S, C)."""
        b, s, c = h_all.shape
        k, v = self.kv(h_all).split(c, dim=2)
        return tuple(z.view(b, s, self.n_head, c // self.n_head).transpose(1, 2) for z in (k, v))

    def forward(
        self, h: torch.Tensor, child: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """``h``, ``child``: (B, T, C), the parents at the *last* T of the S positions in
        ``context``; (B, C) for one parent per row, at the last position."""
        if h.dim() == 2:
            return self(h[:, None], child[:, None], context)[:, 0]
        b, t, c = h.shape
        k, v = context
        s = k.shape[2]
        x = h + self.child(child)
        q = self.q(x).view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        # query i sits at position s - t + i and sees positions 0..s - t + i: causal when
        # t == s, everything for one new position, a shifted triangle in between
        causal, mask = t == s and t > 1, None
        if 1 < t < s:
            mask = torch.ones(t, s, dtype=torch.bool, device=h.device).tril(s - t)
        drop = self.dropout if self.training else 0.0
        y = nnf.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=drop
        )
        return self.ln(x + self.proj(y.transpose(1, 2).reshape(b, t, c)))


class TokenTable(nn.Module):
    """Per-token vectors: a learned table plus a projection of the code's decoded features."""

    # buffers and the optional feature net, declared for type checkers (nn.Module's
    # __getattr__ would type them Tensor | Module)
    code_features: torch.Tensor
    node_code: torch.Tensor
    node_is_leaf: torch.Tensor
    freqs: torch.Tensor
    feature_net: nn.Sequential

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.learned = nn.Embedding(cfg.vocab.size, cfg.n_embd)
        nn.init.normal_(self.learned.weight, std=0.02)
        # decoded features of every code (filled from the tokenizer) and the leaf flag
        self.register_buffer("code_features", torch.zeros(cfg.n_codes, cfg.n_code_features))
        # code and leaf flag of every node token (the vocabulary's layout; not saved)
        nodes = np.arange(cfg.vocab.n_node_tokens)
        code, leaf = cfg.vocab.code(nodes), cfg.vocab.is_leaf(nodes)
        self.register_buffer("node_code", torch.as_tensor(code), persistent=False)
        self.register_buffer(
            "node_is_leaf", torch.as_tensor(leaf, dtype=torch.float32), persistent=False
        )
        if cfg.token_features:
            n_in = 2 * 4 * (cfg.n_code_features + 1)
            self.register_buffer("freqs", 2.0 ** torch.arange(4, dtype=torch.float32) * math.pi / 4)
            self.feature_net = nn.Sequential(
                nn.Linear(n_in, cfg.n_embd), nn.GELU(), nn.Linear(cfg.n_embd, cfg.n_embd)
            )

    def table(self) -> torch.Tensor:
        """(vocab size, C) vectors for every token (node tokens in the vocabulary's order:
        pseudojets, then leaves, then the specials)."""
        w = self.learned.weight
        if not self.cfg.token_features:
            return w
        n_nodes = self.cfg.vocab.n_node_tokens
        x = torch.cat([self.code_features[self.node_code], self.node_is_leaf[:, None]], dim=1)
        ang = x[:, :, None] * self.freqs
        feats = self.feature_net(torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(1))
        return torch.cat([w[:n_nodes] + feats, w[n_nodes:]], dim=0)
