"""A Markov tree generator from a checkpoint's count baselines: the reference generator.

The root is drawn from the training roots' counts and each child of a pseudojet from the interpolated
bigram P(child | parent) (:class:`jetevo.model.baselines.CountBaselines`), left and right
independently: a tree whose every split depends on its parent token only. Trees are built
in the same order, with the same node guard and resolution scale, and returned in the same
:class:`~jetevo.generate.sampler.SampledTrees` layout as the transformer's, so decoding,
writing and evaluation are shared: every evaluation table can show what the transformer
adds over this.
"""

from __future__ import annotations

import numpy as np

from jetevo.generate.sampler import SampledTrees
from jetevo.model.baselines import CountBaselines
from jetevo.tokenize.resolution import Resolution
from jetevo.tokenize.vocab import Vocab


class BigramSampler:
    """Vectorised draws from P(child | parent) = lam p(child | parent) + (1 - lam) p(child)."""

    def __init__(self, baselines: CountBaselines):
        b = baselines
        csr = b.bigram.tocsr()
        csr.sort_indices()
        self.indptr, self.indices = csr.indptr, csr.indices
        self.cum = np.cumsum(csr.data)  # global running count, monotone across rows
        self.before = np.concatenate([[0.0], self.cum])[self.indptr[:-1]]
        self.totals = b.parent_totals
        self.lam = b.lam
        self.unigram_cdf = np.cumsum(b.unigram)

    def draw(
        self, parents: np.ndarray, rng: np.random.Generator, exact: bool = False
    ) -> np.ndarray:
        """One child per parent; ``exact``: from the parent's own counts only (roots: the
        training roots, not a mixture with the children's unigram)."""
        n = len(parents)
        tot = self.totals[parents]
        use_pair = ((rng.random(n) < self.lam) | exact) & (tot > 0)
        u = rng.random(n)
        out = np.searchsorted(self.unigram_cdf, u * self.unigram_cdf[-1], side="right")
        out = np.minimum(out, len(self.unigram_cdf) - 1)
        if use_pair.any():
            p = parents[use_pair]
            target = self.before[p] + u[use_pair] * tot[use_pair]
            pos = np.searchsorted(self.cum, target, side="right")
            pos = np.clip(pos, self.indptr[p], self.indptr[p + 1] - 1)
            out[use_pair] = self.indices[pos]
        return out


def sample_bigram_trees(
    baselines: CountBaselines,
    vocab: Vocab,
    n_jets: int,
    rng: np.random.Generator,
    max_nodes: int,
    resolution: Resolution | None = None,
) -> SampledTrees:
    """``n_jets`` trees from the count baselines, expanded depth-first like the sampler's;
    a tree that would exceed ``max_nodes`` is a runaway (reported, not returned)."""
    sampler = BigramSampler(baselines)
    b = n_jets
    tok = np.full((b, max_nodes), -1, np.int64)
    par = np.full((b, max_nodes), -1, np.int64)
    dep = np.zeros((b, max_nodes), np.int64)
    lft = np.full((b, max_nodes), -1, np.int64)
    rgt = np.full((b, max_nodes), -1, np.int64)
    log_pt = np.zeros((b, max_nodes))
    n_nodes = np.ones(b, np.int64)
    stack = np.zeros((b, max_nodes), np.int64)
    sp = np.zeros(b, np.int64)
    runaway = np.zeros(b, bool)
    n_resolved = 0

    roots = sampler.draw(np.full(b, vocab.start), rng, exact=True)
    if resolution is not None:
        log_pt[:, 0] = resolution.root_log_pt(roots)
        resolved = resolution.resolve(roots, log_pt[:, 0])
        n_resolved += int(np.count_nonzero(resolved != roots))
        roots = resolved
    tok[:, 0] = roots
    pseudo = vocab.is_pseudojet(roots)
    sp[pseudo] = 1
    rows = np.flatnonzero(pseudo)
    steps = 0
    while len(rows):
        steps += 1
        sp[rows] -= 1
        node = stack[rows, sp[rows]]
        li, ri = n_nodes[rows], n_nodes[rows] + 1
        over = ri >= max_nodes
        runaway[rows[over]] = True
        rows, node, li, ri = rows[~over], node[~over], li[~over], ri[~over]
        parent_tok = tok[rows, node]
        children = []
        for slot in (li, ri):
            child = sampler.draw(parent_tok, rng)
            if resolution is not None:
                log_pt[rows, slot] = resolution.child_log_pt(log_pt[rows, node], child)
                resolved = resolution.resolve(child, log_pt[rows, slot])
                n_resolved += int(np.count_nonzero(resolved != child))
                child = resolved
            tok[rows, slot] = child
            par[rows, slot] = node
            dep[rows, slot] = dep[rows, node] + 1
            children.append(child)
        lft[rows, node], rgt[rows, node] = li, ri
        n_nodes[rows] += 2
        for slot, child in ((ri, children[1]), (li, children[0])):  # left popped first
            push = vocab.is_pseudojet(child)
            stack[rows[push], sp[rows[push]]] = slot[push]
            sp[rows[push]] += 1
        rows = rows[sp[rows] > 0]

    return SampledTrees.from_batch(tok, par, dep, lft, rgt, n_nodes, runaway, steps, n_resolved)
