"""Shared fixtures: small Pythia samples in the real layouts, and hand-made jets."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest


def make_jets(
    particles: list[np.ndarray], label: str = "QCD", source: str = "hand-made"
) -> ak.Array:
    """Reader common form from a list of (n, 4) px,py,pz,E arrays (float32)."""
    counts = np.array([len(p) for p in particles], np.int64)
    flat = (
        np.concatenate([np.asarray(p, np.float32).reshape(-1, 4) for p in particles])
        if len(particles)
        else np.zeros((0, 4), np.float32)
    )
    n = len(particles)
    fields = {k: ak.unflatten(flat[:, i], counts) for i, k in enumerate(("px", "py", "pz", "E"))}
    return ak.zip(
        {
            **fields,
            "charge": ak.unflatten(np.zeros(len(flat), np.int8), counts),
            "pid": ak.unflatten(np.full(len(flat), 211, np.int32), counts),
            "jet_pt": np.zeros(n, np.float32),
            "jet_eta": np.zeros(n, np.float32),
            "jet_phi": np.zeros(n, np.float32),
            "jet_mass": np.zeros(n, np.float32),
            "label": ak.Array([label] * n) if n else ak.Array(np.zeros(0, dtype=str)),
            "source": ak.Array([source] * n) if n else ak.Array(np.zeros(0, dtype=str)),
            "entry": np.arange(n, dtype=np.int64),
        },
        depth_limit=1,
    )


def random_particles(
    rng: np.random.Generator, n: int, spread: float = 0.4, eta0: float = 0.0
) -> np.ndarray:
    """n massless particles around (eta0, 0) with a falling pT spectrum."""
    pt = rng.exponential(30.0, n) + 0.5
    eta = eta0 + rng.normal(0.0, spread, n)
    phi = rng.normal(0.0, spread, n)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return np.stack([px, py, pz, np.sqrt(px**2 + py**2 + pz**2)], axis=1)


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory):
    """Small simulated JetClass (top, QCD) and AOJ (QCD-wide) files, seeded."""
    from jetevo.io.simulate import simulate

    d = tmp_path_factory.mktemp("sim")
    simulate("top", 30, d / "jetclass", seed=5, progress=False)
    simulate("qcd", 40, d / "jetclass", seed=6, progress=False)
    simulate("qcd-wide", 40, d / "aoj", seed=7, progress=False)
    return d


@pytest.fixture(scope="session")
def tree_dir(sim_dir, tmp_path_factory):
    """Trees of the simulated samples (all three files)."""
    from jetevo.trees.run import recluster_files

    out = tmp_path_factory.mktemp("trees")
    recluster_files([sim_dir / "jetclass", sim_dir / "aoj"], out, progress=False)
    return out


TINY_TOKENIZER = {
    "n_codes": 64,
    "hidden": 16,
    "max_steps": 5,
    "batch_size": 256,
    "kmeans_sample": 5000,
    "kmeans_iters": 5,
}


def tiny_checkpoint(tokenizer, token_dir, path, mode="tree", seed=0, max_len=None, leaf_odds=0.0):
    """A tiny untrained model (either mode) with count baselines from ``token_dir``, saved
    at ``path`` as training saves one. ``leaf_odds``: added to the leaf tokens' log odds (a
    tree model), so that an untrained model's trees stay small."""
    import torch

    from jetevo.model.baselines import CountBaselines
    from jetevo.model.checkpoint import save_model
    from jetevo.model.flat import FlatModel
    from jetevo.model.gpt import ModelConfig
    from jetevo.model.sequences import FlatSequences, TreeSequences
    from jetevo.model.train import code_feature_table
    from jetevo.model.tree import JetEvolutionModel
    from jetevo.tokenize.resolution import code_log_z

    torch.manual_seed(seed)
    features = code_feature_table(tokenizer)
    flat = mode == "flat"
    cfg = ModelConfig(
        mode=mode, n_codes=TINY_TOKENIZER["n_codes"], n_code_features=features.shape[1], n_layer=1, n_head=2,
        n_embd=16, max_len=max_len or (129 if flat else 128), output_group_size=0 if flat else 16,
    )  # fmt: skip
    model = FlatModel(cfg) if flat else JetEvolutionModel(cfg)
    model.set_code_features(torch.from_numpy(features), code_log_z(tokenizer))
    if leaf_odds:
        model.shift_leaf_odds(leaf_odds)
    model.tokenizer_identity = tokenizer.identity
    vocab = cfg.vocab
    if flat:
        seqs = FlatSequences([token_dir], vocab, 129)
        n_classes = vocab.n_flat_classes
    else:
        seqs = TreeSequences([token_dir], vocab, 128, model.log_z_table(), cfg.scale_bins)
        n_classes = vocab.n_node_tokens
    base = CountBaselines.fit(*seqs.pairs(), n_classes, vocab.size)
    info = {"identity": tokenizer.identity, "path": str(tokenizer.path)}
    save_model(model, path, {"baselines": base.state(), "tokenizer": info})
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tree_dir, tmp_path_factory):
    from jetevo.tokenize.tokenizer import TokenizerConfig
    from jetevo.tokenize.train import train_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tok.ckpt"
    return train_tokenizer(
        [tree_dir], path, TokenizerConfig(**TINY_TOKENIZER), progress=False, log=lambda *a: None
    )


@pytest.fixture(scope="session")
def token_dir(tiny_tokenizer, tree_dir, tmp_path_factory):
    from jetevo.tokenize.tokens import encode_files

    out = tmp_path_factory.mktemp("tokens")
    encode_files(tiny_tokenizer, [tree_dir], out)
    return out


@pytest.fixture(scope="session")
def flat_tokenizer(tree_dir, tmp_path_factory):
    """A tiny jet-relative (flat-mode) tokenizer, same budget as ``tiny_tokenizer``."""
    from jetevo.tokenize.tokenizer import TokenizerConfig
    from jetevo.tokenize.train import train_tokenizer

    path = tmp_path_factory.mktemp("flat_tok") / "flat.ckpt"
    cfg = TokenizerConfig(**{**TINY_TOKENIZER, "feature_set": "jet-relative-v1"})
    return train_tokenizer([tree_dir], path, cfg, progress=False, log=lambda *a: None)


@pytest.fixture(scope="session")
def flat_token_dir(flat_tokenizer, tree_dir, tmp_path_factory):
    from jetevo.tokenize.tokens import encode_files

    out = tmp_path_factory.mktemp("flat_tokens")
    encode_files(flat_tokenizer, [tree_dir], out)
    return out
