"""The jet-evolution (tree-mode) model: the GPT backbone over the nodes to expand, and two
split heads.

Sequence design (:mod:`jetevo.model.sequences`): one position per node to expand, in
depth-first pre-order, harder child (by token chain) first. At the START position the left
head predicts the root token; at the position of node p the left head predicts p's left
child and the right head p's right child. A child token says whether the child is a leaf
(never expanded) or a pseudojet (expanded later, at its own position).

No target leaks into its own prediction: attention is causal and a node's children only
ever appear as inputs at later positions. The right head is conditioned on *this split's*
left child (the true one in training, the sampled one at inference, through the same
:meth:`JetEvolutionModel.right_state`). Tree-aware embeddings add each position's depth,
side (start/root/left/right) and scale bin to the token vector (and, with
``positional="learned"``, the backbone adds the position).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from torch import nn

from jetevo.errors import SettingError
from jetevo.model.gpt import GPT, KVCache, ModelConfig, scale_residual_projections
from jetevo.model.heads import ChildCrossAttention, ContextCrossAttention, TokenTable
from jetevo.model.loss import split_nll
from jetevo.model.output import OutputLayer, balanced_groups
from jetevo.model.sequences import (
    SIDE_ROOT,
    position_inputs,
    scale_bin,
    sequence_log_pt,
    start_inputs,
)


class JetEvolutionModel(nn.Module):
    # set only for some configurations (or by load_model), declared for type checkers
    scale_emb: nn.Embedding
    code_log_z: torch.Tensor
    right_xattn: ContextCrossAttention | ChildCrossAttention
    extra: dict  # the checkpoint's other entries (set by load_model)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.mode != "tree":
            raise SettingError(f"JetEvolutionModel is the tree mode; model.mode is {cfg.mode}")
        self.cfg = cfg
        self.vocab = cfg.vocab
        self.tokens = TokenTable(cfg)
        self.gpt = GPT(cfg)
        self.depth_emb = nn.Embedding(cfg.max_len + 1, cfg.n_embd)
        self.side_emb = nn.Embedding(4, cfg.n_embd)
        if cfg.scale_bins:
            self.scale_emb = nn.Embedding(cfg.scale_bins + 1, cfg.n_embd)
        # log z of every code (set with the code features; NaN until then): the token-chain
        # pT that orders every split's children and gives the scale input
        self.register_buffer("code_log_z", torch.full((2 * cfg.n_codes,), float("nan")))
        self.left_head = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        if cfg.right_head == "context":
            self.right_xattn = ContextCrossAttention(cfg)
        else:
            self.right_xattn = ChildCrossAttention(cfg)
        self.right_head = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        gs = min(cfg.output_group_size, cfg.n_codes) if cfg.output_group_size else 0
        if gs and cfg.n_codes % gs:
            raise SettingError(
                f"model.output_group_size ({cfg.output_group_size}) must divide the "
                f"tokenizer's codebook size ({cfg.n_codes}), or be 0"
            )
        self.output = OutputLayer(cfg.n_embd, torch.arange(self.vocab.n_node_tokens), gs)
        scale_residual_projections(self, cfg.n_layer)
        # identity of the tokenizer whose tokens this model speaks (set by training)
        self.tokenizer_identity: str | None = None
        self.extra = {}

    # -------------------------------------------------------------- inputs and states
    def log_z_table(self) -> np.ndarray | None:
        """Decoded log z of every code, as training used it (None for a checkpoint from
        before it was stored, without the scale input: the tokenizer's then)."""
        log_z = self.code_log_z.double().cpu().numpy()
        return None if np.isnan(log_z).any() else log_z

    def hidden(
        self, inputs: dict, table: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Hidden states (B, T, C) of positions with ``inputs`` tokens, depth, side and scale
        (B, T) (:func:`~jetevo.model.sequences.position_inputs`). With a ``cache`` (from
        :meth:`kv_cache`) they are the next position(s) after those already cached, and a
        context right head's keys and values of them are cached too."""
        table = self.tokens.table() if table is None else table
        depth = inputs["depth"].clamp(max=self.cfg.max_len)
        x = table[inputs["tokens"]] + self.depth_emb(depth) + self.side_emb(inputs["side"])
        if self.cfg.scale_bins:
            x = x + self.scale_emb(inputs["scale"])
        h = self.gpt(x, cache)
        if cache is not None and self.cfg.right_head == "context":
            if len(cache.k) <= self.cfg.n_layer:
                raise ValueError("a context right head needs the cache of model.kv_cache()")
            xattn = cast(ContextCrossAttention, self.right_xattn)
            cache.extend(self.cfg.n_layer, *xattn.context(h))
        return h

    def kv_cache(self) -> KVCache:
        """An empty generation cache: every layer, and the context right head's slot."""
        return KVCache(self.cfg.n_layer + (self.cfg.right_head == "context"))

    def right_context(
        self, h_all: torch.Tensor, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """What the right head attends over (None for the left-child head): keys and values
        of every position fed so far, from the ``cache`` when :meth:`hidden` ran with one,
        else from ``h_all`` (B, T, C), the hidden states of the whole sequence."""
        if self.cfg.right_head != "context":
            return None
        if cache is not None:
            k, v = cache.k[self.cfg.n_layer], cache.v[self.cfg.n_layer]
            if k is None or v is None:
                raise ValueError("the cache holds no context yet: run hidden() with it first")
            return k, v
        return cast(ContextCrossAttention, self.right_xattn).context(h_all)

    def left_state(self, h: torch.Tensor) -> torch.Tensor:
        return self.left_head(h)

    def right_state(
        self,
        h: torch.Tensor,
        left_tokens: torch.Tensor,
        table: torch.Tensor,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The right head's output state given this split's left child: the one function
        of training, ``predict`` and generation. Left-child head: ``h`` (..., C), ``context``
        unused. Context head: ``h`` (B, T, C) are the parents at the last T positions of
        ``context`` (:meth:`right_context`), or (B, C) one parent per row at its last one."""
        child = table[left_tokens]
        if self.cfg.right_head == "left-child":
            return self.right_head(self.right_xattn(h, child))
        if context is None:
            raise ValueError("the context right head needs the keys/values of its context")
        return self.right_head(self.right_xattn(h, child, context))

    def left_log_probs(self, h: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probabilities (..., node tokens) of the left child (the root at START)."""
        table = self.tokens.table() if table is None else table
        return self.output.log_probs(self.left_state(h), table)

    def right_log_probs(
        self,
        h: torch.Tensor,
        left_tokens: torch.Tensor,
        table: torch.Tensor | None = None,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Log-probabilities of the right child given this split's left child tokens.
        Without ``context``, ``h`` (B, T, C) is taken as the whole sequence (every position
        a parent, seeing the positions up to itself); with it, see :meth:`right_state`."""
        table = self.tokens.table() if table is None else table
        if context is None and h.dim() == 3:
            context = self.right_context(h)
        return self.output.log_probs(self.right_state(h, left_tokens, table, context), table)

    def set_code_features(self, features: torch.Tensor, log_z: np.ndarray | None = None) -> None:
        """Store what each code decodes to (standardized features; ``log_z``, the decoded
        momentum fraction, for the scale input) and group kinematically close codes."""
        with torch.no_grad():
            if log_z is not None:
                self.code_log_z.copy_(torch.as_tensor(log_z, dtype=torch.float32))
            elif self.cfg.scale_bins:
                raise ValueError("a model with scale_bins needs the codes' log z")
            self.tokens.code_features.copy_(torch.as_tensor(features, dtype=torch.float32))
            gs = self.output.group_size
            if gs:
                codes = balanced_groups(self.tokens.code_features.cpu().numpy(), gs)
                # leaf and pseudojet tokens of the same codes, never in one group
                v = self.vocab
                self.output.set_groups(
                    np.concatenate([v.token(codes, False), v.token(codes, True)])
                )

    @torch.no_grad()
    def shift_leaf_odds(self, delta: float) -> None:
        """Add ``delta`` to the log-odds of every leaf token (smaller trees for delta > 0)."""
        nodes = np.arange(self.vocab.n_node_tokens)
        leaves = torch.as_tensor(nodes[self.vocab.is_leaf(nodes)])
        self.output.shift_log_odds(leaves, delta)

    # -------------------------------------------------------------- sampling
    def sample_root(
        self,
        h: torch.Tensor,
        table: torch.Tensor,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        greedy: bool = False,
        output_cache: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Root tokens (and their probabilities) from the START position's states (left head)."""
        return self.output.sample(
            self.left_state(h), table, temperature, top_k, generator, greedy, output_cache
        )

    def sample_children(
        self,
        h: torch.Tensor,
        table: torch.Tensor,
        context: tuple[torch.Tensor, torch.Tensor] | None,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        greedy: bool = False,
        output_cache: dict | None = None,
        resolve_left=None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left child, then right child given it, for parent states ``h`` (B, C) at the last
        position of ``context``: tokens and probabilities. ``resolve_left``, if given, maps
        the sampled left tokens to the ones the right head is conditioned on (generation's
        resolution scale). The one sampling step of generation and ``predict``."""
        args = (temperature, top_k, generator, greedy, output_cache)
        left, p_left = self.output.sample(self.left_state(h), table, *args)
        if resolve_left is not None:
            left = resolve_left(left)
        right_state = self.right_state(h, left, table, context)
        right, p_right = self.output.sample(right_state, table, *args)
        return left, right, p_left, p_right

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
        parent as the model reads them (START and the nodes expanded so far in expansion
        order); ``parent_depth`` is the parent's input depth (tree depth + 1; default 1, a
        root) and ``parent_side`` its side. Greedy unless ``sample``.
        """
        device = self.output.bias.device
        parent = np.asarray(torch.as_tensor(parent_tokens).cpu()).astype(np.int64).reshape(-1)
        b = len(parent)
        if context is None:
            ctx = {k: v[:, None] for k, v in start_inputs(self.vocab, b).items()}
        else:
            ctx = {
                k: np.asarray(torch.as_tensor(context[k]).cpu()).astype(np.int64).reshape(b, -1)
                for k in ("tokens", "depth", "side")
            }
        depth = np.ones(b, np.int64) if parent_depth is None else np.asarray(
            torch.as_tensor(parent_depth).cpu()
        ).astype(np.int64).reshape(b)  # fmt: skip
        side = np.full(b, SIDE_ROOT) if parent_side is None else np.asarray(
            torch.as_tensor(parent_side).cpu()
        ).astype(np.int64).reshape(b)  # fmt: skip
        tokens = np.concatenate([ctx["tokens"], parent[:, None]], 1)
        all_depth = np.concatenate([ctx["depth"], depth[:, None]], 1)
        log_z = self.log_z_table()
        log_pt = (
            np.zeros(tokens.shape) if log_z is None else sequence_log_pt(tokens, all_depth, log_z)
        )
        last = position_inputs(parent, depth - 1, side, log_pt[:, -1], self.cfg.scale_bins)
        ctx_scale = np.zeros_like(ctx["tokens"])
        if self.cfg.scale_bins and ctx["tokens"].shape[1] > 1:
            ctx_scale[:, 1:] = scale_bin(log_pt[:, 1:-1], self.cfg.scale_bins)
        seq = {
            "tokens": tokens,
            "depth": all_depth,
            "side": np.concatenate([ctx["side"], last["side"][:, None]], 1),
            "scale": np.concatenate([ctx_scale, last["scale"][:, None]], 1),
        }
        inputs = {k: torch.as_tensor(v, device=device) for k, v in seq.items()}
        table = self.tokens.table()
        h_all = self.hidden(inputs, table)
        left, right, p_left, p_right = self.sample_children(
            h_all[:, -1], table, self.right_context(h_all), temperature, top_k, generator,
            greedy=not sample,
        )  # fmt: skip
        return {"left": left, "right": right, "p_left": p_left, "p_right": p_right}

    def forward(self, batch: dict, permutation_min: bool = True) -> torch.Tensor:
        """Mean NLL per child of a batch (the training loss without split weights)."""
        out = split_nll(self, batch, permutation_min)
        return out["nll_sum"] / out["n_children"].clamp(min=1)
