"""Benchmark the tokenizer on CPU: encode + decode throughput, and the cost of a training step.

Throughput: nodes/s for features -> token -> features -> four-momenta at a given batch
(default 65,536 nodes: the children of 32,768 splits, each pair decoded together as a decay
of its parent, as generation decodes it), with a K-code tokenizer (k-means initialised, untrained: speed does
not depend on training). Training step: the in-house EMA quantizer against
``vector-quantize-pytorch`` (if installed) at batch x K, forward + backward.
Nodes come from simulated top-jet trees (Pythia, cached under --work). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def sample_pairs(work: Path, n_jets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, parent) four-momenta of every split of simulated top jets."""
    from jetevo.io.simulate import simulate
    from jetevo.tokenize import features as F
    from jetevo.trees.format import load
    from jetevo.trees.run import recluster_files

    trees_dir = work / "trees"
    if not trees_dir.exists():
        src = simulate("top", n_jets, work / "sim", seed=77, workers=2, progress=False)
        recluster_files([src], trees_dir, progress=False)
    a = F.node_arrays(load(trees_dir))
    p = F.summed_nodes(a)
    pairs = F.sibling_pairs(a["parent"])
    return p[pairs[:, 0]], p[pairs[:, 1]], p[a["parent"][pairs[:, 0]]]


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    import torch

    from jetevo.allocator import keep_freed_memory
    from jetevo.tokenize import features as F
    from jetevo.tokenize.kmeans import kmeans
    from jetevo.tokenize.root import RootQuantizer
    from jetevo.tokenize.tokenizer import Tokenizer, TokenizerConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench_out/tokenizer"))
    ap.add_argument("--n-jets", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--n-codes", type=int, default=8192)
    ap.add_argument("--train-batch", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    keep_freed_memory()  # as the jetevo command does (jetevo.runtime.configure_process)
    torch.manual_seed(0)

    left, right, parent = sample_pairs(args.work, args.n_jets)
    n_pairs = args.batch // 2
    reps = -(-n_pairs // len(left))
    left, right, parent = (np.tile(x, (reps, 1))[:n_pairs] for x in (left, right, parent))
    cfg = TokenizerConfig(n_codes=args.n_codes)
    f = np.concatenate([F.split_features(left, parent), F.split_features(right, parent)])
    std = F.Standardizer.fit(f, cfg.feature_weights)
    model = Tokenizer.build_model(cfg)
    model.set_codebook(
        torch.as_tensor(kmeans(std.forward(f), args.n_codes, iters=5), dtype=torch.float32),
        cfg.batch_size,
    )
    roots = np.concatenate([left, right])  # any four-momenta fit the (unused) root grid
    tok = Tokenizer(cfg, std, model, root=RootQuantizer.fit(roots, args.n_codes))
    tok.codes_from_features(f[:10])  # build the code index once

    def encode():
        return (
            tok.codes_from_features(F.split_features(left, parent)),
            tok.codes_from_features(F.split_features(right, parent)),
        )

    def encode_decode():
        codes_l, codes_r = encode()
        return F.decode_split(
            parent, tok.features_from_codes(codes_l), tok.features_from_codes(codes_r)
        )

    t_codec = best_time(encode_decode, args.repeat)
    t_encode = best_time(encode, args.repeat)

    x = torch.as_tensor(std.forward(f[: args.train_batch]), dtype=torch.float32)
    model.train()

    def step(m):
        xx = x.clone().requires_grad_(True)
        recon, _, commit = m(xx)
        (torch.mean((recon - xx) ** 2) + commit).backward()

    t_step = best_time(lambda: step(model), args.repeat)
    result = {
        "batch": args.batch,
        "n_codes": args.n_codes,
        "torch_threads": torch.get_num_threads(),
        "encode_decode_nodes_per_s": round(2 * n_pairs / t_codec),
        "encode_nodes_per_s": round(2 * n_pairs / t_encode),
        "train_step_s_inhouse": round(t_step, 4),
    }
    try:
        from vector_quantize_pytorch import VectorQuantize

        vq = VectorQuantize(
            dim=x.shape[1],
            codebook_size=args.n_codes,
            decay=0.99,
            commitment_weight=0.25,
            threshold_ema_dead_code=2,
        )
        vq.train()

        def vqp_step():
            xx = x.clone().requires_grad_(True)
            q, _, loss = vq(xx)
            (q.sum() + loss.sum()).backward()

        vqp_step()
        result["train_step_s_vector_quantize_pytorch"] = round(best_time(vqp_step, args.repeat), 4)
    except ImportError:
        result["train_step_s_vector_quantize_pytorch"] = None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
