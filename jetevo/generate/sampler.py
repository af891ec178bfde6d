"""Batched sampling of both modes, with a KV cache.

Tree mode (:func:`sample_trees`), in the training order. Every jet of a batch keeps its own frontier stack of pseudojets still to expand. A step
feeds, for each unfinished jet, the node popped from its stack (at the same position
index for all jets: every unfinished jet expands exactly one node per step), samples the
left child, then the right child given that left child, and pushes the children whose
tokens say *pseudojet* (right first, so the left subtree is expanded first: depth-first
pre-order, the order the model was trained in). Leaves are never pushed, so never
expanded; a jet ends when its stack is empty, and leaves the batch (its rows are dropped
from the cache). A jet that would need more than ``max_nodes`` nodes (or more positions
than the model has) is stopped and reported as runaway, never written as a tree.

Nodes are stored in generation order: root first, and the two children of the node
expanded at step s appended as nodes 2s-1 (left) and 2s (right). With a
:class:`Teacher`, the real trees' children are taken instead of sampled ones (teacher
forcing): the inputs fed are then exactly the training sequence's. A teacher limited to a
prefix (its first levels, or its first expansions) gives the real splits there and lets
the model sample the rest: the completion of a real jet's history.

Flat mode (:func:`sample_flat`): one particle per step for every unfinished jet, each
ending at its own STOP; a jet that reaches the particle limit without STOP is a runaway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from jetevo.model.flat import FlatModel
from jetevo.model.sequences import node_side, position_inputs, start_inputs
from jetevo.model.tree import JetEvolutionModel
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
    # with a teacher: each node's (local) index in its teacher tree, -1 where sampled
    teacher_node: np.ndarray | None = None

    @property
    def batch_rows(self) -> np.ndarray:
        """The batch row (teacher jet) of every complete tree."""
        return np.setdiff1d(np.arange(len(self) + len(self.runaway)), self.runaway)

    @classmethod
    def from_batch(
        cls, tok, par, dep, lft, rgt, n_nodes, runaway, steps: int, n_resolved: int = 0,
        t_node=None,
    ) -> SampledTrees:  # fmt: skip
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
            teacher_node=None if t_node is None else t_node[done][mask],
        )


@dataclass
class Teacher:
    """Real trees to follow instead of sampling (teacher forcing): their tokens and topology
    (stored pre-order, local indices, root first). The sampler then feeds exactly the
    positions a training sequence of these trees holds.

    A prefix: only the splits of nodes at depth < ``max_depth``, or only the first
    ``max_steps`` expansions (in the training order), are the real ones; every split after
    them is sampled. ``max_depth=0`` (or ``max_steps=0``) keeps the real root alone.
    """

    token: np.ndarray
    topology: Topology
    max_depth: int | None = None
    max_steps: int | None = None

    def forced(self, depth: np.ndarray, step: int) -> np.ndarray:
        """Whether the expansion of real nodes at ``depth`` at ``step`` (1-based) is real."""
        out = np.ones(len(depth), bool)
        if self.max_depth is not None:
            out &= depth < self.max_depth
        if self.max_steps is not None:
            out &= step <= self.max_steps
        return out


class _GrowingTrees:
    """The per-jet arrays of a batch being sampled, in generation order (jets indexed
    0..b-1 throughout), with each jet's frontier stack of pseudojets still to expand."""

    def __init__(self, b: int, max_nodes: int, vocab, teacher: bool):
        self.vocab = vocab
        self.tok = np.full((b, max_nodes), -1, np.int64)
        self.par = np.full((b, max_nodes), -1, np.int64)
        self.dep = np.zeros((b, max_nodes), np.int64)
        self.lft = np.full((b, max_nodes), -1, np.int64)
        self.rgt = np.full((b, max_nodes), -1, np.int64)
        self.log_pt = np.zeros((b, max_nodes))  # token-chain log pT
        self.t_node = np.full((b, max_nodes), -1, np.int64) if teacher else None
        self.n_nodes = np.ones(b, np.int64)
        self.stack = np.zeros((b, max_nodes), np.int64)
        self.sp = np.zeros(b, np.int64)
        self.runaway = np.zeros(b, bool)
        self.max_nodes = max_nodes

    def set_roots(self, roots: np.ndarray, log_pt: np.ndarray) -> None:
        self.tok[:, 0], self.log_pt[:, 0] = roots, log_pt
        if self.t_node is not None:
            self.t_node[:, 0] = 0
        pseudo = self.vocab.is_pseudojet(roots)
        self.stack[pseudo, 0] = 0
        self.sp[pseudo] = 1

    def pop(self, rows: np.ndarray) -> np.ndarray:
        self.sp[rows] -= 1
        return self.stack[rows, self.sp[rows]]

    def inputs(self, rows: np.ndarray, node: np.ndarray, scale_bins: int) -> dict:
        """The position inputs of expanding ``node`` of jets ``rows``."""
        is_left = self.lft[rows, np.maximum(self.par[rows, node], 0)] == node
        return position_inputs(
            self.tok[rows, node], self.dep[rows, node], node_side(node == 0, is_left),
            self.log_pt[rows, node], scale_bins,
        )  # fmt: skip

    def add_children(self, rows, node, left, right, lpt_l, lpt_r, t_left, t_right):
        """Append the children of ``node`` (jets ``rows``; ``t_*``: their teacher nodes, -1
        where sampled) and push the pseudojets (right first: the left one is expanded
        next); a jet with no room left is a runaway."""
        li, ri = self.n_nodes[rows], self.n_nodes[rows] + 1
        over = ri >= self.max_nodes
        self.runaway[rows[over]] = True
        ok = ~over
        r, li, ri, node = rows[ok], li[ok], ri[ok], node[ok]
        left, right = left[ok], right[ok]
        self.tok[r, li], self.tok[r, ri] = left, right
        self.log_pt[r, li], self.log_pt[r, ri] = lpt_l[ok], lpt_r[ok]
        if self.t_node is not None:
            self.t_node[r, li], self.t_node[r, ri] = t_left[ok], t_right[ok]
        self.par[r, li] = self.par[r, ri] = node
        self.dep[r, li] = self.dep[r, ri] = self.dep[r, node] + 1
        self.lft[r, node], self.rgt[r, node] = li, ri
        self.n_nodes[r] += 2
        for child, slot in ((right, ri), (left, li)):
            push = self.vocab.is_pseudojet(child)
            self.stack[r[push], self.sp[r[push]]] = slot[push]
            self.sp[r[push]] += 1


class _Feeder:
    """Feeds the next position of some jets to the model: through the KV cache, or by
    re-feeding the whole sequence without one; optionally recording every input."""

    def __init__(self, model, table, use_cache: bool, trace: list[dict] | None):
        self.model, self.table, self.trace = model, table, trace
        self.device = model.output.bias.device
        self.cache = model.kv_cache() if use_cache else None
        self.seq: dict[str, torch.Tensor] | None = None

    def __call__(self, inputs: dict[str, np.ndarray], rows: np.ndarray) -> torch.Tensor:
        if self.trace is not None:
            self.trace.append({"rows": rows.copy(), **{k: v.copy() for k, v in inputs.items()}})
        step = {k: torch.as_tensor(v, device=self.device)[:, None] for k, v in inputs.items()}
        if self.cache is not None:
            return self.model.hidden(step, self.table, self.cache)
        seq = self.seq
        self.seq = step if seq is None else {k: torch.cat([seq[k], step[k]], 1) for k in seq}
        return self.model.hidden(self.seq, self.table)

    def keep(self, rows: np.ndarray) -> None:
        """Only these rows (indices into the current batch) go on."""
        keep = torch.as_tensor(rows, device=self.device)
        if self.cache is not None:
            self.cache.keep(keep)
        elif self.seq is not None:
            self.seq = {k: v.index_select(0, keep) for k, v in self.seq.items()}


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
    teacher: Teacher | None = None,
    trace: list[dict] | None = None,
) -> SampledTrees:
    """Sample ``n_jets`` trees in one batch (see the module docstring).

    ``resolution``: pseudojets below its scale become particles as they are sampled (a left
    child before the right head sees it), see :mod:`jetevo.tokenize.resolution`.
    ``teacher``: take the root and the children of every split the teacher covers from these
    real trees (``n_jets`` of them) instead; resolution never applies to real nodes. ``trace``: a list to which each step's fed inputs are appended (``rows``: the
    jets fed, and the inputs of :func:`~jetevo.model.sequences.position_inputs`).
    """
    cfg, vocab = model.cfg, model.vocab
    table = model.tokens.table()
    output_cache = model.output.sampling_cache(table)
    trees = _GrowingTrees(n_jets, node_limit(cfg.max_len, max_nodes), vocab, teacher is not None)
    feed = _Feeder(model, table, use_cache, trace)
    # token-chain log pT of every node: the model's scale input, the order of each pair
    # and the resolution scale
    log_z = model.log_z_table()
    if log_z is None and resolution is not None:
        log_z = resolution.code_log_z
    chain = Resolution(np.zeros(2 * cfg.n_codes) if log_z is None else log_z, -np.inf)
    n_resolved = [0]

    def resolve(tokens: np.ndarray, log_pt: np.ndarray) -> np.ndarray:
        if resolution is None:
            return tokens
        out = resolution.resolve(tokens, log_pt)
        n_resolved[0] += int(np.count_nonzero(out != tokens))
        return out

    # position 0: START for every jet; its left head gives the root
    h = feed(start_inputs(vocab, n_jets), np.arange(n_jets))[:, -1]
    root_log_pt: np.ndarray
    if teacher is not None:  # the real root, never resolved
        roots = teacher.token[teacher.topology.offsets[:-1]]
        root_log_pt = chain.root_log_pt(roots)
    else:
        if root_tokens is None:
            roots = model.sample_root(h, table, temperature, top_k, generator, False, output_cache)
            roots = roots[0].cpu().numpy()
        else:
            roots = np.asarray(root_tokens, np.int64).reshape(n_jets)
        root_log_pt = chain.root_log_pt(roots)
        roots = resolve(roots, root_log_pt)
    trees.set_roots(roots, root_log_pt)

    def sample_pairs(h: torch.Tensor, free: np.ndarray, parent_log_pt: np.ndarray):
        """Sampled children of the rows ``free`` (indices into the batch fed)."""

        def resolve_left(tokens: torch.Tensor) -> torch.Tensor:
            t = tokens.cpu().numpy()
            t = resolve(t, chain.child_log_pt(parent_log_pt, t))
            return torch.as_tensor(t, device=tokens.device)

        context = model.right_context(h, feed.cache)
        if len(free) < h.shape[0]:
            idx = torch.as_tensor(free, device=h.device)
            h = h.index_select(0, idx)
            if context is not None:
                context = (context[0].index_select(0, idx), context[1].index_select(0, idx))
        left_t, right_t, _, _ = model.sample_children(
            h[:, -1], table, context, temperature, top_k, generator, False, output_cache,
            resolve_left,
        )  # fmt: skip
        left = left_t.cpu().numpy()
        right = right_t.cpu().numpy()
        return left, resolve(right, chain.child_log_pt(parent_log_pt, right))

    rows = np.flatnonzero(trees.sp > 0)  # jets still in the batch, in batch-row order
    feed.keep(rows)
    steps = 0
    while len(rows):
        steps += 1
        node = trees.pop(rows)
        h = feed(trees.inputs(rows, node, cfg.scale_bins), rows)
        parent_log_pt = trees.log_pt[rows, node]
        left, right = np.empty(len(rows), np.int64), np.empty(len(rows), np.int64)
        t_left, t_right = np.full(len(rows), -1), np.full(len(rows), -1)
        real = np.zeros(len(rows), bool)
        if teacher is not None and trees.t_node is not None:
            t_nodes = trees.t_node[rows, node]
            real = (t_nodes >= 0) & teacher.forced(trees.dep[rows, node], steps)
            if real.any():
                t_left[real], t_right[real], left[real], right[real] = _teacher_children(
                    teacher, rows[real], t_nodes[real]
                )
        free = np.flatnonzero(~real)
        if len(free):
            left[free], right[free] = sample_pairs(h, free, parent_log_pt[free])
        lpt_l = chain.child_log_pt(parent_log_pt, left)
        lpt_r = chain.child_log_pt(parent_log_pt, right)
        # the pair is unordered (permutation-min); training sequences expand the harder
        # child (by token chain, then the larger token) first, so it becomes the left child
        swap = (lpt_r > lpt_l) | ((lpt_r == lpt_l) & (right > left))
        left, right = np.where(swap, right, left), np.where(swap, left, right)
        lpt_l, lpt_r = np.where(swap, lpt_r, lpt_l), np.where(swap, lpt_l, lpt_r)
        t_left, t_right = np.where(swap, t_right, t_left), np.where(swap, t_left, t_right)
        trees.add_children(rows, node, left, right, lpt_l, lpt_r, t_left, t_right)
        # the next position must fit the model: a jet that still has nodes to expand
        # at the last position is a runaway too
        if steps + 1 >= cfg.max_len:
            trees.runaway[rows[trees.sp[rows] > 0]] = True
        alive = (~trees.runaway[rows]) & (trees.sp[rows] > 0)
        if not alive.all():
            feed.keep(np.flatnonzero(alive))
            rows = rows[alive]

    t = trees
    return SampledTrees.from_batch(
        t.tok, t.par, t.dep, t.lft, t.rgt, t.n_nodes, t.runaway, steps, n_resolved[0], t.t_node
    )


def _teacher_children(teacher: Teacher, rows: np.ndarray, t_nodes: np.ndarray):
    """Teacher-tree node ids (local) of the stored left and right children of the teacher
    nodes ``t_nodes`` of jets ``rows``, and their tokens."""
    first = teacher.topology.offsets[:-1][rows]
    t_left = teacher.topology.left[first + t_nodes]
    t_right = teacher.topology.right[first + t_nodes]
    return t_left, t_right, teacher.token[first + t_left], teacher.token[first + t_right]


@dataclass
class FlatSamples:
    """Particles of flat-mode jets (leaf tokens, flat over jets, ``offsets`` per jet), in
    the order sampled (decreasing pT, as trained). ``runaway``: jets that reached the
    particle limit without STOP; ``empty``: jets whose first token was STOP; neither is
    included."""

    token: np.ndarray
    offsets: np.ndarray
    runaway: np.ndarray
    empty: np.ndarray
    steps: int
    nodes_sampled: int = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def first(self, n: int) -> FlatSamples:
        """The first ``n`` jets (the counts of failed ones kept)."""
        return FlatSamples(
            self.token[: self.offsets[n]], self.offsets[: n + 1], self.runaway, self.empty,
            self.steps, self.nodes_sampled,
        )  # fmt: skip


def _teacher_next(teacher: FlatSamples, rows: np.ndarray, position: int, vocab) -> np.ndarray:
    """The teacher jets' token at ``position`` (0-based particle index), STOP past the end."""
    a, b = teacher.offsets[rows], teacher.offsets[rows + 1]
    at = a + position
    return np.where(at < b, teacher.token[np.minimum(at, len(teacher.token) - 1)], vocab.stop)


def particle_limit(max_len: int, max_nodes: int | None) -> int:
    """Most particles a flat jet may have: ``max_nodes``, at most what the model's context
    allows (START + max_len - 1 particles, the last one's position predicting STOP)."""
    cap = max_len - 1
    return cap if max_nodes is None else max(1, min(int(max_nodes), cap))


@torch.no_grad()
def sample_flat(
    model: FlatModel,
    n_jets: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    max_nodes: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    teacher: FlatSamples | None = None,
    trace: list[dict] | None = None,
) -> FlatSamples:
    """Sample ``n_jets`` flat jets in one batch: from START, one token per step for every
    unfinished jet, each jet ending at its own STOP. ``teacher``: take every token from
    these jets (``n_jets`` of them, then STOP) instead; ``trace``: a list to which each
    step's fed tokens are appended with the ``rows`` (jets) fed."""
    vocab = model.vocab
    device = model.output.bias.device
    limit = particle_limit(model.cfg.max_len, max_nodes)
    b = n_jets
    table = model.tokens.table()
    cache = model.kv_cache() if use_cache else None
    tok = np.full((b, limit), -1, np.int64)
    n = np.zeros(b, np.int64)
    stopped = np.zeros(b, bool)
    rows = np.arange(b)
    step_in = torch.full((b, 1), vocab.start, device=device)
    seq = step_in
    steps = 0
    for position in range(limit + 1):  # every row still here has `position` particles
        if trace is not None:
            trace.append({"rows": rows.copy(), "tokens": step_in[:, 0].cpu().numpy()})
        h = model.hidden({"tokens": step_in if cache is not None else seq}, table, cache)
        if teacher is None:
            nxt_t, _ = model.sample_next(h[:, -1], table, temperature, top_k, generator)
        else:
            nxt_t = torch.as_tensor(_teacher_next(teacher, rows, position, vocab), device=device)
        steps += 1
        nxt = nxt_t.cpu().numpy()
        stop = nxt == vocab.stop
        stopped[rows[stop]] = True
        if position == limit:  # the rest reached the limit without STOP: runaways
            break
        go = np.flatnonzero(~stop)
        tok[rows[go], position] = nxt[go]
        n[rows[go]] += 1
        if len(go) < len(rows):
            keep = torch.as_tensor(go, device=device)
            if cache is not None:
                cache.keep(keep)
            seq, nxt_t = seq.index_select(0, keep), nxt_t.index_select(0, keep)
            rows = rows[go]
        if not len(rows):
            break
        step_in = nxt_t[:, None]
        seq = torch.cat([seq, step_in], 1) if cache is None else seq
    runaway = ~stopped
    empty = stopped & (n == 0)
    done = stopped & (n > 0)
    counts = n[done]
    offsets = np.zeros(int(done.sum()) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    mask = np.arange(limit)[None, :] < counts[:, None]
    return FlatSamples(
        token=tok[done][mask], offsets=offsets, runaway=np.flatnonzero(runaway),
        empty=np.flatnonzero(empty), steps=steps, nodes_sampled=int(n.sum()),
    )  # fmt: skip
