"""The output layer of a head: log-probabilities of, and samples from, the classes it predicts.

A head's classes are tokens (a tree model's split heads: every node token; a flat model:
the particle codes and STOP). Their output vectors are the token vectors themselves (tied
with the input table) plus a learned bias per class.

Two exact forms: a flat softmax over all classes, or a two-level output P(class) =
P(group) P(class | group) with groups of kinematically close codes
(:func:`balanced_groups`), so that sampling needs two softmaxes of about sqrt(V) instead of
one of V. Everything outside this module (loss, sampler, ``predict``) uses only
:meth:`OutputLayer.log_probs`, :meth:`OutputLayer.nll`, :meth:`OutputLayer.rank` and
:meth:`OutputLayer.sample`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def choose(
    log_probs: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    greedy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A class per row, sampled (or the most likely with ``greedy``) from the tempered and
    top-k truncated softmax of ``log_probs`` (logits are fine too), and its probability."""
    logits = log_probs.float() / max(temperature, 1e-6)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if greedy:
        token = probs.argmax(-1)
    else:
        # inverse-CDF sampling: one uniform per row (torch.multinomial was far slower on CPU
        # over 16k tokens: docs/benchmarks.md); side="right" never lands on a zero-probability
        # class
        cdf = probs.cumsum(-1)
        u = (
            torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype)
            * cdf[:, -1:]
        )
        token = torch.searchsorted(cdf, u, side="right")[:, 0].clamp(max=probs.shape[-1] - 1)
    return token, probs.gather(-1, token[:, None])[:, 0]


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


class OutputLayer(nn.Module):
    """Scores of head states ``h`` (N, C) over ``class_tokens`` (the token of each class,
    whose row of the token table is its output vector)."""

    class_tokens: torch.Tensor
    group_members: torch.Tensor
    class_column: torch.Tensor

    def __init__(self, n_embd: int, class_tokens: torch.Tensor, group_size: int = 0):
        super().__init__()
        n = len(class_tokens)
        # the vocabulary's layout, not saved (derived from the config)
        self.register_buffer(
            "class_tokens", torch.as_tensor(class_tokens, dtype=torch.long), persistent=False
        )
        self.bias = nn.Parameter(torch.zeros(n))
        self.group_size = group_size
        if group_size:
            if n % group_size:
                raise ValueError(f"{n} classes do not split into groups of {group_size}")
            self.n_groups = n // group_size
            self.group_emb = nn.Embedding(self.n_groups, n_embd)
            nn.init.normal_(self.group_emb.weight, std=0.02)
            self.group_bias = nn.Parameter(torch.zeros(self.n_groups))
            # member classes of every group (n_groups, group_size), and each class's column
            # in the group-by-group layout of the scores
            self.register_buffer("group_members", torch.arange(n).view(self.n_groups, group_size))
            self.register_buffer("class_column", torch.arange(n))

    @property
    def n_classes(self) -> int:
        return len(self.class_tokens)

    def set_groups(self, members: np.ndarray) -> None:
        """Group the classes as ``members`` (n_groups, group_size) says."""
        with torch.no_grad():
            m = torch.as_tensor(members, dtype=torch.long, device=self.group_members.device)
            self.group_members.copy_(m)
            flat = m.reshape(-1)
            self.class_column.index_copy_(0, flat, torch.arange(len(flat), device=flat.device))

    # ------------------------------------------------------------------ scores
    def _vectors(self, table: torch.Tensor) -> torch.Tensor:
        return table[self.class_tokens]

    def _group_vectors(self, vecs: torch.Tensor) -> torch.Tensor:
        """Group vectors = learned + mean of the members' vectors, so groups start from the
        kinematic structure the token vectors already carry."""
        members = vecs[self.group_members.reshape(-1)].unflatten(
            0, (self.n_groups, self.group_size)
        )
        return self.group_emb.weight + members.mean(1)

    def _scores(self, h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Flat logits in class order, or for a grouped output exact log-probabilities
        laid out group by group (so the loss never gathers over the (N, V) scores)."""
        vecs = self._vectors(table)
        if not self.group_size:
            return h @ vecs.T + self.bias
        members = self.group_members.reshape(-1)
        within = h @ vecs[members].T + self.bias[members]
        within = within.unflatten(-1, (self.n_groups, self.group_size)).log_softmax(-1)
        groups = (h @ self._group_vectors(vecs).T + self.group_bias).log_softmax(-1)
        return (within + groups[..., None]).flatten(-2)

    def _columns(self, classes: torch.Tensor) -> torch.Tensor:
        return self.class_column[classes] if self.group_size else classes

    def log_probs(self, h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """(N, n_classes) log-probabilities in class order."""
        scores = self._scores(h, table)
        if not self.group_size:
            return scores.log_softmax(-1)
        return scores.index_select(-1, self.class_column)

    def nll(self, h: torch.Tensor, table: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of ``classes`` (N,) or (N, m): m targets per row under
        one computation of the scores; same shape as ``classes``."""
        scores = self._scores(h, table)
        cols = self._columns(classes)
        one = cols.dim() == 1
        cols = cols[:, None] if one else cols
        picked = scores.gather(-1, cols)
        if not self.group_size:  # logits: normalise
            picked = picked - scores.logsumexp(-1, keepdim=True)
        return -(picked[:, 0] if one else picked)

    def rank(self, h: torch.Tensor, table: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(N,) how many classes score above ``classes`` (0: the most likely)."""
        scores = self._scores(h, table)
        own = scores.gather(-1, self._columns(classes)[:, None])
        return (scores > own).sum(-1)

    @torch.no_grad()
    def shift_log_odds(self, classes: torch.Tensor, delta: float) -> None:
        """Add ``delta`` to the log-odds of ``classes`` (a grouped output: whole groups)."""
        mask = torch.zeros(self.n_classes, dtype=torch.bool, device=self.bias.device)
        mask[classes] = True
        if not self.group_size:
            self.bias[mask] += delta
            return
        in_group = mask[self.group_members]
        if not torch.all(in_group.all(1) | ~in_group.any(1)):
            raise ValueError("a grouped output shifts whole groups only")
        self.group_bias[in_group.all(1)] += delta

    # ------------------------------------------------------------------ sampling
    def sampling_cache(self, table: torch.Tensor) -> dict:
        """Per-batch constants of grouped sampling: group vectors, and member vectors and
        biases laid out group by group (one contiguous block per group to read per row)."""
        if not self.group_size:
            return {}
        vecs = self._vectors(table)
        members = self.group_members.reshape(-1)
        return {
            "group_vecs": self._group_vectors(vecs),
            "vecs": vecs[members].unflatten(0, (self.n_groups, self.group_size)).contiguous(),
            "bias": self.bias[members].view(self.n_groups, self.group_size),
        }

    def sample(
        self,
        h: torch.Tensor,
        table: torch.Tensor,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        greedy: bool = False,
        cache: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A class per row and its probability: for a grouped output at temperature 1
        without top-k, group then class (only the chosen group's scores are computed),
        otherwise from the full tempered / truncated distribution."""
        if not (self.group_size and temperature == 1.0 and top_k is None and not greedy):
            return choose(self.log_probs(h, table), temperature, top_k, generator, greedy)
        cache = cache or self.sampling_cache(table)
        group_logits = h @ cache["group_vecs"].T + self.group_bias
        group, p_group = choose(group_logits, generator=generator)
        logits = torch.bmm(cache["vecs"][group], h[:, :, None])[..., 0] + cache["bias"][group]
        slot, p_slot = choose(logits, generator=generator)
        return self.group_members[group, slot], p_group * p_slot
