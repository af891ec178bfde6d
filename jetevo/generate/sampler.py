"""Batched tree sampling in the training order, with a KV cache.

Every jet of a batch keeps its own frontier stack of pseudojets still to expand. A step
feeds, for each unfinished jet, the node popped from its stack (at the same position
index for all jets: every unfinished jet expands exactly one node per step), samples the
left child, then the right child given that left child, and pushes the children whose
tokens say *pseudojet* (right first, so the left subtree is expanded first: depth-first
pre-order, the order the model was trained in). Leaves are never pushed, so never
expanded; a jet ends when its stack is empty, and leaves the batch (its rows are dropped
from the cache). A jet that would need more than ``max_nodes`` nodes (or more positions
than the model has) is stopped and reported as runaway, never written as a tree.

Nodes are stored in generation order: root first, and the two children of the node
expanded at step s appended as nodes 2s-1 (left) and 2s (right).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from jetevo.model.gpt import (
    SIDE_LEFT,
    SIDE_RIGHT,
    SIDE_ROOT,
    SIDE_START,
    JetEvolutionModel,
)
from jetevo.tokenize.resolution import Resolution
from jetevo.trees.format import Topology


def node_limit(max_len: int, max_nodes: int | None) -> int:
    """Most nodes a tree may reach: ``max_nodes``, at most what the model's context allows
    (START + max_len - 1 expansions give 2 max_len - 1 nodes)."""
    cap = 2 * max_len - 1
    return cap if max_nodes is None else min(int(max_nodes), cap)


@dataclass
class SampledTrees(Topology):
    """Trees in generation order (flat over jets, ``offsets`` per jet): the topology
    (:class:`~jetevo.trees.format.Topology`, local indices) and each node's ``token``.

    ``runaway``: jets stopped by the node guard, in the order they were started (their
    nodes are not included). ``nodes_sampled`` counts every sampled node, runaway trees
    included (the work done).
    """

    token: np.ndarray
    runaway: np.ndarray
    steps: int
    nodes_sampled: int = 0
    n_resolved: int = 0  # pseudojets turned into particles by the resolution scale

    @classmethod
    def from_batch(
        cls, tok, par, dep, lft, rgt, n_nodes, runaway, steps: int, n_resolved: int = 0
    ) -> SampledTrees:
        """The complete trees of a batch's per-jet (b, max_nodes) arrays, runaways left out."""
        done = ~runaway
        counts = n_nodes[done]
        offsets = np.zeros(done.sum() + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        mask = np.arange(tok.shape[1])[None, :] < counts[:, None]
        return cls(
            token=tok[done][mask],
            parent=par[done][mask],
            depth=dep[done][mask],
            left=lft[done][mask],
            right=rgt[done][mask],
            offsets=offsets,
            runaway=np.flatnonzero(runaway),
            steps=steps,
            nodes_sampled=int(n_nodes.sum()),
            n_resolved=n_resolved,
        )


@torch.no_grad()
def sample_trees(
    model: JetEvolutionModel,
    n_jets: int,
    *,
    root_tokens: np.ndarray | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    max_nodes: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    resolution: Resolution | None = None,
) -> SampledTrees:
    """Sample ``n_jets`` trees in one batch (see the module docstring).

    ``resolution``: pseudojets below its scale become particles as they are sampled (a left
    child before the right head sees it), see :mod:`jetevo.tokenize.resolution`.
    """
    cfg = model.cfg
    device = model.out_bias.device
    k_codes = cfg.n_codes
    max_nodes = node_limit(cfg.max_len, max_nodes)
    b = n_jets
    table = model.tokens.table()
    output_cache = model.output_cache(table) if model.group_size else None
    cache = model.kv_cache() if use_cache else None

    # per-jet storage in generation order (jets indexed 0..b-1 throughout)
    tok = np.full((b, max_nodes), -1, np.int64)
    par = np.full((b, max_nodes), -1, np.int64)
    dep = np.zeros((b, max_nodes), np.int64)
    lft = np.full((b, max_nodes), -1, np.int64)
    rgt = np.full((b, max_nodes), -1, np.int64)
    n_nodes = np.ones(b, np.int64)
    stack = np.zeros((b, max_nodes), np.int64)
    sp = np.zeros(b, np.int64)
    runaway = np.zeros(b, bool)
    # token-chain log pT of every node: the model's scale input and the resolution scale
    log_z = model.log_z_table()
    if log_z is None and resolution is not None:
        log_z = resolution.code_log_z
    chain = None if log_z is None else Resolution(log_z, -np.inf)
    log_pt = np.zeros((b, max_nodes))
    n_resolved = 0
    resolved_left = [0]  # counted inside the left child's resolver

    # position 0: START for every jet; its left head gives the root
    start = torch.full((b, 1), cfg.n_node_tokens, device=device)
    seq = {
        "tokens": start,
        "depth": torch.zeros_like(start),
        "side": torch.full_like(start, SIDE_START),
        "scale": torch.zeros_like(start),
    }
    h = model.backbone(seq["tokens"], seq["depth"], seq["side"], table, cache, scale=seq["scale"])[
        :, -1
    ]
    if root_tokens is None:
        sampled = model.sample_root(h, table, temperature, top_k, generator, output_cache)
        roots = sampled.cpu().numpy()
    else:
        roots = np.asarray(root_tokens, np.int64).reshape(b)
    if chain is not None:
        log_pt[:, 0] = chain.root_log_pt(roots)
    if resolution is not None:
        resolved = resolution.resolve(roots, log_pt[:, 0])
        n_resolved += int(np.count_nonzero(resolved != roots))
        roots = resolved
    tok[:, 0] = roots
    pseudo = roots < k_codes
    stack[pseudo, 0] = 0
    sp[pseudo] = 1

    rows = np.flatnonzero(sp > 0)  # jets still in the batch, in batch-row order
    if cache is not None:
        cache.keep(torch.as_tensor(rows, device=device))
    seq = {k: v[torch.as_tensor(rows, device=device)] for k, v in seq.items()}
    steps = 0
    while len(rows):
        steps += 1
        sp[rows] -= 1
        node = stack[rows, sp[rows]]
        # inputs of this position: the node's token, depth (tree depth + 1) and side
        t_in = tok[rows, node]
        side = np.where(
            node == 0,
            SIDE_ROOT,
            np.where(lft[rows, np.maximum(par[rows, node], 0)] == node, SIDE_LEFT, SIDE_RIGHT),
        )
        step_in = {
            "tokens": torch.as_tensor(t_in, device=device)[:, None],
            "depth": torch.as_tensor(dep[rows, node] + 1, device=device)[:, None],
            "side": torch.as_tensor(side, device=device)[:, None],
            "scale": torch.as_tensor(model.scale_of(log_pt[rows, node]), device=device)[:, None],
        }
        if cache is None:
            seq = {k: torch.cat([seq[k], step_in[k]], 1) for k in seq}
            h = model.backbone(seq["tokens"], seq["depth"], seq["side"], table, scale=seq["scale"])
        else:
            h = model.backbone(
                step_in["tokens"], step_in["depth"], step_in["side"], table, cache,
                scale=step_in["scale"],
            )  # fmt: skip
        context = model.right_context(h, cache)  # what the right head attends over
        resolve = None
        parent_log_pt = log_pt[rows, node]
        if resolution is not None:
            resolve = _left_resolver(resolution, parent_log_pt, resolved_left)
        left_t, right_t = model.sample_children(
            h[:, -1], table, temperature, top_k, generator, output_cache, context, resolve
        )
        left, right = left_t.cpu().numpy(), right_t.cpu().numpy()
        if chain is not None:
            lpt_l = chain.child_log_pt(parent_log_pt, left)
            lpt_r = chain.child_log_pt(parent_log_pt, right)
        if resolution is not None:
            resolved = resolution.resolve(right, lpt_r)
            n_resolved += int(np.count_nonzero(resolved != right))
            right = resolved
        if chain is not None:
            # the pair is unordered (permutation-min); training sequences always expand the
            # harder child first, so the harder one becomes the left child here too
            swap = lpt_r > lpt_l
            left, right = np.where(swap, right, left), np.where(swap, left, right)
            lpt_l, lpt_r = np.where(swap, lpt_r, lpt_l), np.where(swap, lpt_l, lpt_r)

        li, ri = n_nodes[rows], n_nodes[rows] + 1
        over = ri >= max_nodes
        ok = ~over
        r_ok, li, ri, node = rows[ok], li[ok], ri[ok], node[ok]
        left, right = left[ok], right[ok]
        tok[r_ok, li], tok[r_ok, ri] = left, right
        if chain is not None:
            log_pt[r_ok, li], log_pt[r_ok, ri] = lpt_l[ok], lpt_r[ok]
        par[r_ok, li] = par[r_ok, ri] = node
        dep[r_ok, li] = dep[r_ok, ri] = dep[r_ok, node] + 1
        lft[r_ok, node], rgt[r_ok, node] = li, ri
        n_nodes[r_ok] += 2
        # push right then left (left popped first: pre-order); leaves never pushed
        push_r = right < k_codes
        stack[r_ok[push_r], sp[r_ok[push_r]]] = ri[push_r]
        sp[r_ok[push_r]] += 1
        push_l = left < k_codes
        stack[r_ok[push_l], sp[r_ok[push_l]]] = li[push_l]
        sp[r_ok[push_l]] += 1

        runaway[rows[over]] = True
        # the next position must fit the model: a jet that still has nodes to expand
        # at the last position is a runaway too
        if steps + 1 >= cfg.max_len:
            runaway[rows[sp[rows] > 0]] = True
        alive = (~runaway[rows]) & (sp[rows] > 0)
        if not alive.all():
            keep = torch.as_tensor(np.flatnonzero(alive), device=device)
            if cache is not None:
                cache.keep(keep)
            else:
                seq = {k: v.index_select(0, keep) for k, v in seq.items()}
            rows = rows[alive]

    return SampledTrees.from_batch(
        tok, par, dep, lft, rgt, n_nodes, runaway, steps, n_resolved + resolved_left[0]
    )


def _left_resolver(resolution: Resolution, parent_log_pt: np.ndarray, count: list[int]):
    """The map from sampled left tokens to resolved ones, applied before the right head."""

    def resolve(tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.cpu().numpy()
        out = resolution.resolve(t, resolution.child_log_pt(parent_log_pt, t))
        count[0] += int(np.count_nonzero(out != t))
        return torch.as_tensor(out, device=tokens.device)

    return resolve
