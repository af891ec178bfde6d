"""The jet-evolution network: a GPT backbone over the nodes to expand, and two split heads.

Sequence design (one order everywhere: training, ``predict`` and generation). A jet's
internal nodes are expanded in depth-first pre-order, which is what a frontier stack gives
(push right, then left; pop). The input is ``[START, t(root), t(n2), ..., t(n_{N-1})]``,
one position per node to expand (N positions for N constituents). At the START position
the left head predicts the root token; at the position of node p the left head predicts
p's left child and the right head p's right child. A child token says whether the child
is a leaf (never expanded) or a pseudojet (expanded later, at its own position).

No target leaks into its own prediction: attention is causal and a node's children only
ever appear as inputs at later positions. The right head is conditioned on *this split's*
left child (the true one in training, the sampled one at inference, through the same code
path). With ``right_head="context"`` (the default) the parent's state plus the left child's
token vector queries the final hidden states of every position the parent can see (itself
and before), so the left child picks what in the jet's history matters for its sibling;
``"left-child"`` is the earlier head, a cross-attention to the left child's embedding alone
(one key: an additive conditioning), kept for its checkpoints. Tree-aware embeddings add
each position's depth and side (start/root/left/right) to the learned position embedding.

Token embeddings and output weights are a learned table plus a projection of what each
code decodes to (the tokenizer's five node features and the leaf flag, stored as a buffer),
so tokens with similar kinematics share statistics from the first step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from jetevo.config import check_fields, setting
from jetevo.errors import SettingError

SIDE_START, SIDE_ROOT, SIDE_LEFT, SIDE_RIGHT = 0, 1, 2, 3
IGNORE = -100
RIGHT_HEADS = ("context", "left-child")
SCALE_LOG_PT = (math.log(0.1), math.log(2000.0))  # range of the scale bins (GeV)


def scale_bin(log_pt: np.ndarray, n_bins: int) -> np.ndarray:
    """Scale-embedding index of a node from its token-chain log pT: 1..n_bins over
    :data:`SCALE_LOG_PT` (clamped), 0 reserved for START."""
    lo, hi = SCALE_LOG_PT
    x = (np.asarray(log_pt, np.float64) - lo) / (hi - lo) * n_bins
    return 1 + np.clip(np.floor(x), 0, n_bins - 1).astype(np.int64)


@dataclass
class ModelConfig:
    """The ``model:`` section of a training config; types and ranges are checked on every
    construction (:func:`jetevo.config.check_fields`), settings named ``model.*``."""

    # tokenizer codebook size K: 2K node tokens + START, STOP, PAD (set from the tokenizer)
    n_codes: int = setting(8192, ge=1)
    n_code_features: int = setting(5, ge=1)  # the tokenizer's node features
    max_len: int = setting(128, ge=1)  # positions: START + up to 127 internal nodes
    n_layer: int = setting(3, ge=1)
    n_head: int = setting(8, ge=1)
    n_embd: int = setting(256, ge=1)  # a multiple of n_head
    dropout: float = setting(0.0, ge=0, lt=1)
    bias: bool = True
    token_features: bool = True
    # two-level output: P(token) = P(group) P(token | group), groups of this many tokens
    # (kinematically close codes, leaf and pseudojet tokens never mixed); 0 = flat softmax.
    # Exact either way; sampling then needs 2 x sqrt(V)-sized softmaxes instead of one of V.
    output_group_size: int = setting(128, ge=0)
    # right head: "context" attends over all visible positions given the left child;
    # "left-child" is the earlier one-key head (checkpoints without this field load as it)
    right_head: str = setting("context", choices=RIGHT_HEADS)
    # the expanded node's transverse momentum, as its token chain says it, as an input
    # (log bins): without it the model must infer from the tokens how soft a node is, and
    # soft pseudojets kept splitting (runaways); 0 = off (checkpoints without it load so)
    scale_bins: int = setting(32, ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "model.")
        if self.n_embd % self.n_head:
            raise SettingError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        # output_group_size must divide n_codes, which is the tokenizer's: checked where
        # the model is built (JetEvolutionModel), once n_codes is known

    @property
    def n_node_tokens(self) -> int:
        return 2 * self.n_codes

    @property
    def vocab_size(self) -> int:
        return 2 * self.n_codes + 3

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
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


class KVCache:
    """Keys and values (B, H, T, hd) of every layer for the positions fed so far.

    Generation feeds one new position per step, so each step costs one position, not the
    whole prefix; ``keep(rows)`` drops finished sequences from the batch. A context right
    head keeps its own keys and values in one more slot (see :meth:`JetEvolutionModel.kv_cache`).
    """

    def __init__(self, n_layer: int):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

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
    freqs: torch.Tensor
    feature_net: nn.Sequential

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.learned = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        nn.init.normal_(self.learned.weight, std=0.02)
        # decoded features of every code (filled from the tokenizer) and the leaf flag
        self.register_buffer("code_features", torch.zeros(cfg.n_codes, cfg.n_code_features))
        if cfg.token_features:
            n_in = 2 * 4 * (cfg.n_code_features + 1)
            self.register_buffer("freqs", 2.0 ** torch.arange(4, dtype=torch.float32) * math.pi / 4)
            self.feature_net = nn.Sequential(
                nn.Linear(n_in, cfg.n_embd), nn.GELU(), nn.Linear(cfg.n_embd, cfg.n_embd)
            )

    def table(self) -> torch.Tensor:
        """(vocab_size, C) vectors for every token."""
        w = self.learned.weight
        if not self.cfg.token_features:
            return w
        k = self.cfg.n_codes
        f = self.code_features
        leaf = torch.cat([torch.zeros(k, 1, device=f.device), torch.ones(k, 1, device=f.device)])
        x = torch.cat([f.repeat(2, 1), leaf], dim=1)
        ang = x[:, :, None] * self.freqs
        feats = self.feature_net(torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(1))
        return torch.cat([w[: 2 * k] + feats, w[2 * k :]], dim=0)


class JetEvolutionModel(nn.Module):
    # attributes set only for some configurations (or by load_model), and buffers, declared
    # for type checkers (nn.Module's __getattr__ would type them Tensor | Module)
    scale_emb: nn.Embedding
    code_log_z: torch.Tensor
    right_xattn: ContextCrossAttention | ChildCrossAttention
    n_groups: int
    group_emb: nn.Embedding
    group_bias: nn.Parameter
    group_members: torch.Tensor
    token_column: torch.Tensor
    extra: dict[str, Any]  # the checkpoint's other entries (set by load_model)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tokens = TokenTable(cfg)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.n_embd)
        self.depth_emb = nn.Embedding(cfg.max_len + 1, cfg.n_embd)
        self.side_emb = nn.Embedding(4, cfg.n_embd)
        if cfg.scale_bins:
            self.scale_emb = nn.Embedding(cfg.scale_bins + 1, cfg.n_embd)
            # log z of every code (set with the code features): the token-chain pT
            self.register_buffer("code_log_z", torch.zeros(cfg.n_codes))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.left_head = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        if cfg.right_head == "context":
            self.right_xattn = ContextCrossAttention(cfg)
        else:
            self.right_xattn = ChildCrossAttention(cfg)
        self.right_head = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.out_bias = nn.Parameter(torch.zeros(cfg.n_node_tokens))
        gs = self.group_size = (
            min(cfg.output_group_size, cfg.n_codes) if cfg.output_group_size else 0
        )
        if gs:
            if cfg.n_codes % gs:
                raise SettingError(
                    f"model.output_group_size ({cfg.output_group_size}) must divide the "
                    f"tokenizer's codebook size ({cfg.n_codes}), or be 0"
                )
            self.n_groups = cfg.n_node_tokens // gs
            self.group_emb = nn.Embedding(self.n_groups, cfg.n_embd)
            nn.init.normal_(self.group_emb.weight, std=0.02)
            self.group_bias = nn.Parameter(torch.zeros(self.n_groups))
            # member tokens of every group, (n_groups, group_size); set from the code features
            self.register_buffer(
                "group_members", torch.arange(cfg.n_node_tokens).view(self.n_groups, gs)
            )
            self.register_buffer("token_column", torch.arange(cfg.n_node_tokens))
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
        # identity of the tokenizer whose tokens this model speaks (set by training)
        self.tokenizer_identity: str | None = None

    # -------------------------------------------------------------- pieces
    def log_z_table(self) -> np.ndarray | None:
        """Decoded log z of every code (None for a model without the scale input)."""
        return self.code_log_z.double().cpu().numpy() if self.cfg.scale_bins else None

    def scale_of(self, log_pt: np.ndarray) -> np.ndarray:
        return scale_bin(log_pt, max(self.cfg.scale_bins, 1))

    def backbone(
        self,
        tokens: torch.Tensor,
        depth: torch.Tensor,
        side: torch.Tensor,
        table: torch.Tensor | None = None,
        cache: KVCache | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, C) of a batch of expansion sequences (``scale``: the
        positions' :func:`scale_bin`, needed when ``cfg.scale_bins``).

        With a ``cache`` (from :meth:`kv_cache`), ``tokens`` are the next position(s) after
        those already cached; a context right head's keys and values of them are cached too.
        """
        t0 = 0 if cache is None else cache.length
        t = tokens.shape[1]
        if t0 + t > self.cfg.max_len:
            raise ValueError(f"sequence of {t0 + t} positions exceeds max_len={self.cfg.max_len}")
        table = self.tokens.table() if table is None else table
        pos = torch.arange(t0, t0 + t, device=tokens.device)
        x = (
            table[tokens]
            + self.pos_emb(pos)
            + self.depth_emb(depth.clamp(max=self.cfg.max_len))
            + self.side_emb(side)
        )
        if self.cfg.scale_bins:
            if scale is None:
                raise ValueError("this model takes each position's scale bin (model.scale_bins)")
            x = x + self.scale_emb(scale)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        x = self.ln_f(x)
        if cache is not None and self.cfg.right_head == "context":
            if len(cache.k) <= self.cfg.n_layer:
                raise ValueError("a context right head needs the cache of model.kv_cache()")
            xattn = cast(ContextCrossAttention, self.right_xattn)
            cache.extend(self.cfg.n_layer, *xattn.context(x))
        return x

    def kv_cache(self) -> KVCache:
        """An empty generation cache: every layer, and the context right head's slot."""
        return KVCache(self.cfg.n_layer + (self.cfg.right_head == "context"))

    def right_context(
        self, h_all: torch.Tensor, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """What the right head attends over (None for the left-child head): keys and values
        of every position fed so far, from the ``cache`` when :meth:`backbone` ran with one,
        else from ``h_all`` (B, T, C), the hidden states of the whole sequence."""
        if self.cfg.right_head != "context":
            return None
        if cache is not None:
            k, v = cache.k[self.cfg.n_layer], cache.v[self.cfg.n_layer]
            if k is None or v is None:
                raise ValueError("the cache holds no context yet: run backbone() with it first")
            return k, v
        return cast(ContextCrossAttention, self.right_xattn).context(h_all)

    def set_code_features(self, features: torch.Tensor, log_z: np.ndarray | None = None) -> None:
        """Store what each code decodes to (standardized features; ``log_z``, the decoded
        momentum fraction, for the scale input) and group kinematically close codes."""
        with torch.no_grad():
            if self.cfg.scale_bins:
                if log_z is None:
                    raise ValueError("a model with scale_bins needs the codes' log z")
                self.code_log_z.copy_(torch.as_tensor(log_z, dtype=torch.float32))
            self.tokens.code_features.copy_(torch.as_tensor(features, dtype=torch.float32))
            if self.group_size:
                codes = balanced_groups(self.tokens.code_features.cpu().numpy(), self.group_size)
                k = self.cfg.n_codes
                members = torch.cat([torch.from_numpy(codes), torch.from_numpy(codes) + k])
                self.group_members.copy_(members.to(self.group_members.device))
                flat = self.group_members.reshape(-1)
                self.token_column.index_copy_(0, flat, torch.arange(len(flat), device=flat.device))

    def _scores(self, h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Output scores over all node tokens, in *column order* (see :meth:`column_of`):
        flat logits, or for a grouped output exact log-probabilities laid out group by group
        (so no gather or scatter over the (N, V) scores is ever needed)."""
        if not self.group_size:
            return h @ table[: self.cfg.n_node_tokens].T + self.out_bias
        members = self.group_members.reshape(-1)
        within = h @ table[members].T + self.out_bias[members]
        within = within.unflatten(-1, (self.n_groups, self.group_size)).log_softmax(-1)
        return (within + self._group_logits(h, table).log_softmax(-1)[..., None]).flatten(-2)

    def column_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """Column of each token in :meth:`_scores` (identity for a flat output)."""
        return self.token_column[tokens] if self.group_size else tokens

    def _logits(self, h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Logits (log-probabilities for a grouped output) over node tokens, in token order."""
        scores = self._scores(h, table)
        if not self.group_size:
            return scores
        return scores.index_select(-1, self.token_column)

    @torch.no_grad()
    def shift_leaf_odds(self, delta: float) -> None:
        """Add ``delta`` to the log-odds of every leaf token (smaller trees for delta > 0)."""
        k = self.cfg.n_codes
        if self.group_size:
            self.group_bias[self.n_groups // 2 :] += delta
        else:
            self.out_bias[k:] += delta

    def output_cache(self, table: torch.Tensor) -> dict:
        """Per-batch constants of grouped sampling: group vectors, and token vectors and
        biases laid out group by group (one contiguous block per group to copy per row)."""
        members = self.group_members.reshape(-1)
        return {
            "group_vecs": self.group_vectors(table),
            "table": table[members].unflatten(0, (self.n_groups, self.group_size)).contiguous(),
            "bias": self.out_bias[members].view(self.n_groups, self.group_size),
        }

    def group_vectors(self, table: torch.Tensor) -> torch.Tensor:
        """Group vectors = learned + mean of the members' token vectors, so groups start
        from the kinematic structure the token vectors already carry."""
        k = self.cfg.n_node_tokens
        members = table[:k][self.group_members.reshape(-1)].unflatten(
            0, (self.n_groups, self.group_size)
        )
        return self.group_emb.weight + members.mean(1)

    def _group_logits(
        self, h: torch.Tensor, table: torch.Tensor, group_vecs: torch.Tensor | None = None
    ) -> torch.Tensor:
        group_vecs = self.group_vectors(table) if group_vecs is None else group_vecs
        return h @ group_vecs.T + self.group_bias

    def _sample_grouped(
        self, h: torch.Tensor, table: torch.Tensor, generator, cache: dict | None = None
    ) -> torch.Tensor:
        """Exact sample of P(group) P(token | group), computing only the chosen group's logits."""
        cache = self.output_cache(table) if cache is None else cache
        group = choose(
            self._group_logits(h, table, cache["group_vecs"]), True, 1.0, None, generator
        )[0]
        logits = torch.bmm(cache["table"][group], h[:, :, None])[..., 0] + cache["bias"][group]
        slot = choose(logits, True, 1.0, None, generator)[0]
        return self.group_members[group, slot]

    def _sample_head(self, state, table, temperature, top_k, generator, cache) -> torch.Tensor:
        """One token per row from a head's output ``state``: group then token for a grouped
        output at temperature 1 without top-k (2 x sqrt(V) logits per row), otherwise the
        full tempered / truncated distribution."""
        if self.group_size and temperature == 1.0 and top_k is None:
            return self._sample_grouped(state, table, generator, cache)
        return choose(self._logits(state, table), True, temperature, top_k, generator)[0]

    def sample_children(
        self,
        h: torch.Tensor,
        table: torch.Tensor,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator=None,
        output_cache: dict | None = None,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
        resolve_left=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled left child, then right child given it, for parent states ``h`` (B, C) at
        the last position of ``context`` (see :meth:`right_context`). ``resolve_left``, if
        given, maps the sampled left tokens to the ones the right head is conditioned on
        (generation's resolution scale)."""
        if self.group_size and output_cache is None:
            output_cache = self.output_cache(table)
        args = (table, temperature, top_k, generator, output_cache)
        left = self._sample_head(self.left_head(h), *args)
        if resolve_left is not None:
            left = resolve_left(left)
        right = self._sample_head(self._right_state(h, left, table, context), *args)
        return left, right

    def sample_root(
        self,
        h: torch.Tensor,
        table: torch.Tensor,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator=None,
        output_cache: dict | None = None,
    ) -> torch.Tensor:
        """Root tokens sampled at the START position (left head)."""
        args = (table, temperature, top_k, generator, output_cache)
        return self._sample_head(self.left_head(h), *args)

    def left_logits(self, h: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        table = self.tokens.table() if table is None else table
        return self._logits(self.left_head(h), table)

    def right_logits(
        self,
        h: torch.Tensor,
        left_tokens: torch.Tensor,
        table: torch.Tensor | None = None,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Right-child logits given this split's left child tokens (same shape as h[..., 0]).

        Without ``context``, ``h`` (B, T, C) is taken as the whole sequence (every position
        a parent, seeing the positions up to itself); with it, see :meth:`_right_state`.
        """
        table = self.tokens.table() if table is None else table
        if context is None and h.dim() == 3:
            context = self.right_context(h)
        return self._logits(self._right_state(h, left_tokens, table, context), table)

    def _right_state(
        self,
        h: torch.Tensor,
        left_tokens: torch.Tensor,
        table: torch.Tensor,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The right head's output state: the one function of training, ``predict`` and
        generation. Left-child head: ``h`` (..., C), ``context`` unused. Context head: ``h``
        (B, T, C) are the parents at the last T positions of ``context`` (keys and values
        from :meth:`right_context`), or (B, C) one parent per row at its last position."""
        child = table[left_tokens]
        if self.cfg.right_head == "left-child":
            return self.right_head(self.right_xattn(h, child))
        if context is None:
            raise ValueError("the context right head needs the keys/values of its context")
        return self.right_head(self.right_xattn(h, child, context))

    # -------------------------------------------------------------- training objective
    def split_losses(self, batch: dict, permutation_min: bool = True) -> dict:
        """Per-child cross-entropies of a batch (see :func:`split_nll`)."""
        return split_nll(self, batch, permutation_min)

    def forward(self, batch: dict, permutation_min: bool = True) -> torch.Tensor:
        out = split_nll(self, batch, permutation_min)
        return out["nll_sum"] / out["n_children"].clamp(min=1)

    # -------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(
        self,
        parent_tokens,
        context: dict | None = None,
        sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        parent_depth=None,
        parent_side=None,
        generator: torch.Generator | None = None,
    ) -> dict:
        """Children of a batch of parents: tokens ``left``, ``right`` and their probabilities.

        Without ``context`` each parent is taken as a jet's root (sequence [START, parent]).
        ``context`` holds ``tokens``, ``depth``, ``side`` (B, T) of the positions before the
        parent, i.e. START and the nodes expanded so far in generation order.
        """
        device = self.out_bias.device
        parent = torch.as_tensor(parent_tokens, device=device).long().reshape(-1)
        b = len(parent)
        start = torch.full((b, 1), self.cfg.n_node_tokens, device=device)
        if context is None:
            ctx_t, ctx_d, ctx_s = start, torch.zeros_like(start), torch.full_like(start, SIDE_START)
        else:
            ctx_t, ctx_d, ctx_s = (
                torch.as_tensor(context[k], device=device).long().reshape(b, -1)
                for k in ("tokens", "depth", "side")
            )
        pd = (
            torch.ones(b, 1, device=device).long()
            if parent_depth is None
            else torch.as_tensor(parent_depth, device=device).long().reshape(b, 1)
        )
        ps = (
            torch.full((b, 1), SIDE_ROOT, device=device)
            if parent_side is None
            else torch.as_tensor(parent_side, device=device).long().reshape(b, 1)
        )
        tokens = torch.cat([ctx_t, parent[:, None]], 1)
        depth = torch.cat([ctx_d, pd], 1)
        side = torch.cat([ctx_s, ps], 1)
        table = self.tokens.table()
        scale = None
        log_z = self.log_z_table()  # None exactly without the scale input
        if log_z is not None:
            log_pt = sequence_log_pt(tokens.cpu().numpy(), depth.cpu().numpy(), log_z)
            scale = torch.as_tensor(self.scale_of(log_pt), device=device)
            scale[:, 0] = 0  # START
        h_all = self.backbone(tokens, depth, side, table, scale=scale)
        h = h_all[:, -1]
        left, p_left = choose(self.left_logits(h, table), sample, temperature, top_k, generator)
        right, p_right = choose(
            self.right_logits(h, left, table, self.right_context(h_all)),
            sample,
            temperature,
            top_k,
            generator,
        )
        return {"left": left, "right": right, "p_left": p_left, "p_right": p_right}

    # -------------------------------------------------------------- checkpoints
    def checkpoint_state(self, extra: dict | None = None) -> dict:
        return {
            "kind": CHECKPOINT_KIND,
            "config": self.cfg.to_dict(),
            "state_dict": self.state_dict(),
            "tokenizer_identity": self.tokenizer_identity,
            **(extra or {}),
        }

    @classmethod
    def load(cls, path) -> JetEvolutionModel:
        from jetevo.model.checkpoint import load_model

        return load_model(path)


CHECKPOINT_KIND = "jetevo-model"


def sequence_log_pt(tokens: np.ndarray, depth: np.ndarray, log_z: np.ndarray) -> np.ndarray:
    """Token-chain log pT of every position of expansion sequences (B, T) from their tokens
    and depths alone: in depth-first pre-order a node's parent is the last earlier position
    one level up. Position 0 (START) gets 0. Same values as the chain over the tree."""
    from jetevo.tokenize.resolution import ROOT_LOG_PT

    n_codes = len(log_z)
    out = np.zeros(tokens.shape)
    for b in range(tokens.shape[0]):
        last: dict[int, float] = {}  # depth -> log pT of the latest position at that depth
        for t in range(1, tokens.shape[1]):
            d = int(depth[b, t])
            base = ROOT_LOG_PT if d <= 1 else last.get(d - 1, ROOT_LOG_PT)
            out[b, t] = base + log_z[int(tokens[b, t]) % n_codes]
            last[d] = out[b, t]
    return out


def balanced_groups(features: np.ndarray, group_size: int) -> np.ndarray:
    """Partition codes into equal groups of nearby codes: (n_codes // group_size, group_size).

    Recursive median splits along the feature of largest spread (a balanced k-d tree), so
    every group holds kinematically similar codes and the group softmax is meaningful.
    """
    n = len(features)
    out = []
    stack = [np.arange(n)]
    while stack:
        idx = stack.pop()
        if len(idx) <= group_size:
            out.append(idx)
            continue
        x = features[idx]
        axis = int(np.argmax(x.std(axis=0)))
        order = idx[np.argsort(x[:, axis], kind="stable")]
        half = (len(idx) // group_size // 2) * group_size
        stack.extend([order[half:], order[:half]])
    return np.stack(out).astype(np.int64)


def choose(
    logits: torch.Tensor, sample: bool, temperature: float, top_k: int | None, generator=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy or sampled token per row, and its probability under the (tempered, top-k) softmax."""
    logits = logits.float() / max(temperature, 1e-6)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sample:
        # inverse-CDF sampling: one uniform per row (torch.multinomial was far slower on CPU
        # over 16k tokens: docs/benchmarks.md); side="right" never lands on a zero-probability
        # token
        cdf = probs.cumsum(-1)
        u = (
            torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
            * cdf[:, -1:]
        )
        token = torch.searchsorted(cdf, u, side="right")[:, 0].clamp(max=probs.shape[-1] - 1)
    else:
        token = probs.argmax(-1)
    return token, probs.gather(-1, token[:, None])[:, 0]


def split_nll(
    model: JetEvolutionModel, batch: dict, permutation_min: bool = True, stats: bool = False
) -> dict:
    """Cross-entropy per child, summed over the batch, with the permutation-min rule.

    Per split: min(CE(L, l) + CE(R|l, r), CE(L, r) + CE(R|r, l)) when ``permutation_min``;
    the canonical assignment otherwise. The root (START position) has a left target only.
    Logits are computed only at positions that have targets. With ``stats``, also the NLL
    of the canonical (harder-left) assignment, the NLL of the unordered pair of children
    (-log(P(l, r) + P(r, l)), the proper likelihood of a split whichever child is called
    left) and the children whose target is the top-1 / within the top-5 of its head.
    """
    l_all, r_all = batch["left"], batch["right"]
    table = model.tokens.table()
    h_all = model.backbone(
        batch["tokens"], batch["depth"], batch["side"], table, scale=batch.get("scale")
    )
    valid = l_all != IGNORE
    h, tgt_left, tgt_right = h_all[valid], l_all[valid], r_all[valid]
    has_r = tgt_right != IGNORE
    r_safe = tgt_right.clamp(min=0)
    context = model.right_context(h_all)

    def right_state(left_tokens: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Right states at the positions ``where`` (B, T) given left children (B, T)."""
        if context is None:  # left-child head: per position, on the selected rows only
            return model._right_state(h_all[where], left_tokens[where], table)
        # context head: every position attends causally over the sequence, then select
        return model._right_state(h_all, left_tokens.clamp(min=0), table, context)[where]

    # scores in column order; targets mapped to their columns (see JetEvolutionModel._scores)
    col_l, col_r = model.column_of(tgt_left), model.column_of(r_safe)
    lg = model._scores(model.left_head(h), table)
    lg_r = model._scores(right_state(l_all, valid), table)
    # grouped scores are already log-probabilities: no second log-softmax
    ce = nnf.nll_loss if model.group_size else nnf.cross_entropy
    ce_ll = ce(lg, col_l, reduction="none")
    ce_rr = ce(lg_r, col_r, reduction="none") * has_r
    per_split = ce_ll + ce_rr
    canonical = per_split
    swapped = torch.zeros_like(has_r)
    lg_sw = alt = None
    if (permutation_min or stats) and has_r.any():
        # swapped: the true right child as this split's left child
        lg_sw = model._scores(right_state(r_all, valid & (r_all != IGNORE)), table)
        alt = ce(lg[has_r], col_r[has_r], reduction="none") + ce(
            lg_sw, col_l[has_r], reduction="none"
        )
    if permutation_min and alt is not None:
        better = alt < per_split[has_r]
        swapped[has_r] = better
        per_split = per_split.clone()
        per_split[has_r] = torch.where(better, alt, per_split[has_r])
    out = {
        "nll_sum": per_split.sum(),
        "n_children": valid.sum() + has_r.sum(),
        "per_split": per_split,
    }
    if stats:
        with torch.no_grad():
            # NLL of the unordered pair {l, r}: -log(P(l, r) + P(r, l)), or -log P(l, l)
            pair = canonical.clone()
            if alt is not None:
                distinct = tgt_left[has_r] != tgt_right[has_r]
                both = -torch.logaddexp(-canonical[has_r], -alt)
                pair[has_r] = torch.where(distinct, both, canonical[has_r])
            out["pair_nll_sum"] = pair.sum()
            out["ordered_nll_sum"] = canonical.sum()
            tgt_l = torch.where(swapped, col_r, col_l)
            tgt_r = torch.where(swapped, col_l, col_r)
            right = lg_r.clone()
            if lg_sw is not None:
                right[has_r] = torch.where(swapped[has_r][:, None], lg_sw, lg_r[has_r])
            rank_l = (lg > lg.gather(-1, tgt_l[:, None])).sum(-1)
            rank_r = (right > right.gather(-1, tgt_r[:, None])).sum(-1)
            out["top1"] = (rank_l == 0).sum() + ((rank_r == 0) & has_r).sum()
            out["top5"] = (rank_l < 5).sum() + ((rank_r < 5) & has_r).sum()
    return out
