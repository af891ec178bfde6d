"""Count baselines for split prediction, gathered on the training data by ``jetevo train``.

- unigram: P(child) from child frequencies (add-one smoothing over the node tokens);
- bigram: P(child | parent) = lam * count(parent, child) / count(parent) + (1 - lam) * P_unigram(child),
  with ``lam`` tuned on a held-out tenth of the training pairs (counts from the other nine
  tenths), then the counts refitted on all pairs. Add-one smoothing over thousands of tokens
  would make a straw man; interpolation is the standard strong count baseline.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

LAMBDAS = np.linspace(0.0, 0.98, 50)


class CountBaselines:
    def __init__(
        self,
        n_node_tokens: int,
        vocab_size: int,
        unigram: np.ndarray,
        bigram: sparse.csr_matrix,
        lam: float,
    ):
        self.n_node_tokens, self.vocab_size = n_node_tokens, vocab_size
        self.unigram = unigram
        self.bigram = bigram
        self.parent_totals = np.asarray(bigram.sum(axis=1)).ravel()
        self.lam = lam

    @classmethod
    def fit(
        cls,
        parents: np.ndarray,
        children: np.ndarray,
        n_node_tokens: int,
        vocab_size: int,
        seed: int = 0,
    ) -> CountBaselines:
        rng = np.random.default_rng(seed)
        held = rng.random(len(parents)) < 0.1
        part = cls._counts(parents[~held], children[~held], n_node_tokens, vocab_size, 0.5)
        nll = [part.nll(parents[held], children[held], lam)[1].mean() for lam in LAMBDAS]
        lam = float(LAMBDAS[int(np.argmin(nll))])
        return cls._counts(parents, children, n_node_tokens, vocab_size, lam)

    @classmethod
    def _counts(cls, parents, children, n_node_tokens, vocab_size, lam) -> CountBaselines:
        uni = np.bincount(children, minlength=n_node_tokens).astype(np.float64) + 1.0
        big = sparse.csr_matrix(
            (np.ones(len(parents)), (parents, children)), shape=(vocab_size, n_node_tokens)
        )
        big.sum_duplicates()
        return cls(n_node_tokens, vocab_size, uni / uni.sum(), big, lam)

    def nll(
        self, parents: np.ndarray, children: np.ndarray, lam: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(unigram NLL, bigram NLL) per child, in nats."""
        lam = self.lam if lam is None else lam
        p_uni = self.unigram[children]
        tot = self.parent_totals[parents]
        pair = np.asarray(self.bigram[parents, children]).ravel()
        p_cond = np.where(tot > 0, pair / np.maximum(tot, 1), 0.0)
        w = np.where(tot > 0, lam, 0.0)
        return -np.log(p_uni), -np.log(w * p_cond + (1 - w) * p_uni)

    def topk(self, parents: np.ndarray, children: np.ndarray, ks=(1, 5)) -> dict:
        """Top-k accuracy of both baselines (bigram ranks computed per distinct parent)."""
        order = np.argsort(-self.unigram)
        rank_uni = np.empty_like(order)
        rank_uni[order] = np.arange(len(order))
        out = {f"unigram_top{k}": float((rank_uni[children] < k).mean()) for k in ks}
        hits = {k: 0 for k in ks}
        for p in np.unique(parents):
            sel = parents == p
            tot = self.parent_totals[p]
            probs = (1 - self.lam) * self.unigram
            if tot > 0:
                row = self.bigram.getrow(p)
                probs = probs.copy()
                probs[row.indices] += self.lam * row.data / tot
            kmax = max(ks)
            cand = np.argpartition(-probs, kmax)[:kmax]
            top = cand[np.argsort(-probs[cand])]
            for k in ks:
                hits[k] += int(np.isin(children[sel], top[:k]).sum())
        out.update({f"bigram_top{k}": hits[k] / len(children) for k in ks})
        return out

    def state(self) -> dict:
        coo = self.bigram.tocoo()
        return {
            "n_node_tokens": self.n_node_tokens, "vocab_size": self.vocab_size, "unigram": self.unigram,
            "rows": coo.row.astype(np.int32), "cols": coo.col.astype(np.int32), "counts": coo.data.astype(np.float32), "lam": self.lam,
        }  # fmt: skip

    @classmethod
    def from_state(cls, s: dict) -> CountBaselines:
        """From :meth:`state`, its arrays as numpy arrays or tensors (a checkpoint's)."""
        arr = {k: np.asarray(s[k]) for k in ("counts", "rows", "cols", "unigram")}
        big = sparse.csr_matrix(
            (arr["counts"].astype(np.float64), (arr["rows"], arr["cols"])),
            shape=(int(s["vocab_size"]), int(s["n_node_tokens"])),
        )
        return cls(
            int(s["n_node_tokens"]), int(s["vocab_size"]), arr["unigram"], big, float(s["lam"])
        )
