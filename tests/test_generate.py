"""Generation: determinism, valid trees, leaves never expanded, runaway guard, KV cache."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import torch
from test_model import N_CODES, tiny_model

from jetevo.cli import main
from jetevo.errors import InputError
from jetevo.generate import GenerationError, generate, sample_trees
from jetevo.model.checkpoint import save_model
from jetevo.trees.format import load, validate


@pytest.fixture(scope="module")
def model_ckpt(tiny_tokenizer, tmp_path_factory):
    """A tiny untrained model whose leaf tokens are favoured, so trees stay small."""
    model = tiny_model(tiny_tokenizer, seed=4).eval()
    model.shift_leaf_odds(2.0)
    path = tmp_path_factory.mktemp("gen") / "model.ckpt"
    save_model(
        model,
        path,
        {"tokenizer": {"identity": tiny_tokenizer.identity, "path": str(tiny_tokenizer.path)}},
    )
    return path


def _sample(model, n, seed, use_cache=True, **kw):
    return sample_trees(
        model, n, generator=torch.Generator().manual_seed(seed), use_cache=use_cache, **kw
    )


def test_seeded_and_cache_agree_exactly(tiny_tokenizer):
    model = tiny_model(tiny_tokenizer, seed=4).eval()
    model.shift_leaf_odds(2.0)
    a = _sample(model, 24, seed=3)
    b = _sample(model, 24, seed=3)
    c = _sample(model, 24, seed=3, use_cache=False)
    for x in (b, c):
        assert np.array_equal(a.token, x.token) and np.array_equal(a.offsets, x.offsets)
        assert np.array_equal(a.parent, x.parent) and np.array_equal(a.runaway, x.runaway)
    assert not np.array_equal(a.token, _sample(model, 24, seed=4).token)


def test_leaves_never_expanded_and_linear_node_count(tiny_tokenizer):
    model = tiny_model(tiny_tokenizer, seed=4).eval()
    model.shift_leaf_odds(2.0)
    t = _sample(model, 32, seed=0)
    is_leaf = t.token >= N_CODES
    # leaves have no children; pseudojets (except none) were all expanded
    assert np.all(t.left[is_leaf] == -1) and np.all(t.left[~is_leaf] >= 0)
    counts = np.diff(t.offsets)
    n_internal = np.add.reduceat((~is_leaf).astype(int), t.offsets[:-1])
    assert np.array_equal(
        counts, 2 * n_internal + 1
    )  # full binary: nodes grow linearly, never 2^(d+1)-1
    assert t.steps == n_internal.max()


def test_forced_splitting_hits_max_nodes_and_is_counted(tiny_tokenizer, tmp_path):
    model = tiny_model(tiny_tokenizer, seed=4).eval()
    model.shift_leaf_odds(-1e4)  # never a leaf: every tree would grow forever
    t = _sample(model, 8, seed=0, max_nodes=31)
    assert len(t) == 0 and len(t.runaway) == 8 and t.steps <= 16
    path = tmp_path / "split.ckpt"
    save_model(
        model,
        path,
        {"tokenizer": {"identity": tiny_tokenizer.identity, "path": str(tiny_tokenizer.path)}},
    )
    with pytest.raises(GenerationError, match="runaway"):
        generate(path, 5, tmp_path / "out", max_nodes=31, progress=False)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_written"] == 0 and summary["runaway"] == summary["attempted"] == 10


def test_generate_writes_valid_trees(model_ckpt, tiny_tokenizer, tmp_path):
    s = generate(model_ckpt, 40, tmp_path / "g", batch_size=16, seed=2, progress=False)
    assert s["n_written"] == 40 and s["runaway"] + 40 + s["surplus"] == s["attempted"]
    trees = load(tmp_path / "g")
    assert len(trees) == 40 and "token" in trees.fields
    validate(
        trees, scheme="E", rtol=1e-4, harder_first=True
    )  # conserving decode: parent = sum of children
    generate(
        model_ckpt, 16, tmp_path / "g4", batch_size=16, split_kinematics="two-body", progress=False
    )
    validate(load(tmp_path / "g4"), scheme="E", rtol=1e-4, harder_first=True)
    again = generate(model_ckpt, 40, tmp_path / "g2", batch_size=16, seed=2, progress=False)
    assert again["n_written"] == 40
    assert ak.all(load(tmp_path / "g2").token == trees.token)
    # root condition: every tree starts from the root token nearest to the requested jet
    generate(model_ckpt, 6, tmp_path / "g3", batch_size=4, root=(600.0, 1.0, 170.0), progress=False)
    roots = load(tmp_path / "g3")
    assert len(set(ak.to_numpy(roots.token[:, 0]).tolist())) == 1
    assert np.allclose(ak.to_numpy(roots.jet_eta), 1.0, atol=0.3)


def test_cli_generate_errors(model_ckpt, tmp_path, capsys):
    def run(ckpt, out, *extra) -> int:
        return main(["generate", "--ckpt", str(ckpt), "--n-jets", "3", "--out", str(out), *extra])

    assert run(model_ckpt, tmp_path / "c", "--quiet") == 0
    assert "3 trees" in capsys.readouterr().out
    assert run(tmp_path / "missing.ckpt", tmp_path / "d") == 2
    assert "missing.ckpt" in capsys.readouterr().err
    assert run(model_ckpt, tmp_path / "e", "--root", "600,1") == 2
    assert "--root" in capsys.readouterr().err
    for bad in (["--temperature", "nan"], ["--temperature", "inf"]):
        assert run(model_ckpt, tmp_path / "f", *bad) == 2
        assert "--temperature" in capsys.readouterr().err
    assert run(model_ckpt, tmp_path / "g", "--baseline", "bigram", "--root-tokens", "3") == 2
    assert "--baseline" in capsys.readouterr().err


def test_two_body_split_conserves_and_keeps_decoded_pairs():
    """Children rebuilt as a two-body decay add up to the parent exactly, come back
    unchanged when the decoded pair already adds up, keep fixed (particle) masses, and share
    a parent's extra mass between opening and pseudojet masses."""
    from jetevo.generate.assemble import MASS_SHARE, two_body_split
    from jetevo.tokenize.features import four_momentum, pt_y_phi_m

    rng = np.random.default_rng(3)
    n = 500

    def random_p(m_max):
        return four_momentum(
            rng.uniform(5, 300, n), rng.normal(0, 0.3, n), rng.normal(0, 0.3, n),
            rng.uniform(0, m_max, n),
        )  # fmt: skip

    def mass(p):
        return pt_y_phi_m(p)[3]

    def angle(p, q):
        return np.arccos(np.clip((p[:, :3] * q[:, :3]).sum(1) / np.linalg.norm(p[:, :3], axis=1)
                                 / np.linalg.norm(q[:, :3], axis=1), -1, 1))  # fmt: skip

    left, right = random_p(20), random_p(20)
    a, b = two_body_split(left + right, left, right)
    assert np.allclose(a, left, rtol=1e-9, atol=1e-7) and np.allclose(b, right, atol=1e-7)
    heavier = (left + right) * np.array([1, 1, 1, 1.002])  # a parent with more mass
    fixed = np.ones(n, bool)
    a, b = two_body_split(heavier, left, right, fixed, fixed)
    assert np.allclose(a + b, heavier, rtol=1e-12, atol=1e-9)
    assert np.allclose(mass(a), mass(left), atol=1e-6) and np.allclose(mass(b), mass(right))
    assert np.all(angle(a, b) >= angle(left, right) - 1e-9)  # fixed masses: the pair opens
    a2, b2 = two_body_split(heavier, left, right)  # free masses take part of the extra mass
    assert np.allclose(a2 + b2, heavier, rtol=1e-12, atol=1e-9)
    assert 0 < MASS_SHARE < 1
    assert np.all(mass(a2) >= mass(left) - 1e-9) and np.all(mass(b2) >= mass(right) - 1e-9)
    assert np.all(angle(a2, b2) <= angle(a, b) + 1e-9)
    # children heavier than their parent allows: masses scale down, sums hold, no collapse
    light = four_momentum(np.full(n, 50.0), np.zeros(n), np.zeros(n), np.full(n, 1.0))
    a, b = two_body_split(light, random_p(5), random_p(5))
    assert np.allclose(a + b, light, atol=1e-9) and np.all(mass(a) + mass(b) <= 1.0 + 1e-9)


def _random_token_trees(tokenizer, n_jets, seed):
    """Random full binary trees with random tokens (leaf flags matching the structure)."""
    from jetevo.generate.sampler import SampledTrees

    rng = np.random.default_rng(seed)
    k = tokenizer.cfg.n_codes
    tok, par, dep, lft, rgt, counts = [], [], [], [], [], []
    for _ in range(n_jets):
        n_leaves = int(rng.integers(1, 40))
        # grow by splitting a random leaf, then relabel in generation order (root first)
        left, right, parent = [-1], [-1], [-1]
        leaves = [0]
        while len(leaves) < n_leaves:
            node = leaves.pop(int(rng.integers(len(leaves))))
            left[node], right[node] = len(left), len(left) + 1
            for _ in range(2):
                left.append(-1)
                right.append(-1)
                parent.append(node)
                leaves.append(len(left) - 1)
        depth = [0] * len(left)
        for i in range(1, len(left)):
            depth[i] = depth[parent[i]] + 1
        is_leaf = np.array(left) < 0
        tok.append(rng.integers(0, k, len(left)) + k * is_leaf)
        par.append(parent), dep.append(depth), lft.append(left), rgt.append(right)
        counts.append(len(left))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    cat = [np.concatenate(x).astype(np.int64) for x in (tok, par, dep, lft, rgt)]
    return SampledTrees(*cat, offsets=offsets, runaway=np.zeros(0, np.int64), steps=0)


@pytest.mark.parametrize("particle_mass", ["pion", "massless"])
def test_physical_decoding_of_random_token_trees(tiny_tokenizer, particle_mass):
    """Any token tree decodes into physical particles: four-momentum conserved at every
    split, no spacelike node, every particle at the requested mass."""
    from jetevo.generate.assemble import PARTICLE_MASSES, decode_conserving
    from jetevo.tokenize.features import pt_y_phi_m

    trees = _random_token_trees(tiny_tokenizer, 200, seed=1)
    p = decode_conserving(tiny_tokenizer, trees, "two-body", particle_mass)
    first = np.repeat(trees.offsets[:-1], np.diff(trees.offsets))
    internal = np.flatnonzero(trees.left >= 0)
    kids = p[first[internal] + trees.left[internal]] + p[first[internal] + trees.right[internal]]
    scale = np.abs(p[internal, 3:4])
    assert np.all(np.abs(kids - p[internal]) <= 1e-7 * scale)  # far below float32 storage
    m2 = p[:, 3] ** 2 - (p[:, :3] ** 2).sum(1)
    assert np.all(m2 >= -1e-9 * p[:, 3] ** 2) and np.all(p[:, 3] > 0)
    leaf = trees.left < 0
    # (collinear sharing of a nearly massless parent leaves its particles 1e-4 E at most)
    m = pt_y_phi_m(p[leaf])[3]
    assert np.all(np.abs(m - PARTICLE_MASSES[particle_mass]) <= 1e-5 + 1e-4 * p[leaf, 3])


def test_bigram_generator_trees_valid_and_seeded(model_ckpt, token_dir, tiny_tokenizer, tmp_path):
    """The count-baseline generator writes valid trees in the same format, reproducibly, and
    its roots come from the training roots only."""
    from jetevo.generate.bigram import sample_bigram_trees
    from jetevo.model.baselines import CountBaselines
    from jetevo.model.data import Sequences

    seqs = Sequences([token_dir], N_CODES, 128)
    parents, children = seqs.pairs()
    base = CountBaselines.fit(parents, children, 2 * N_CODES, 2 * N_CODES + 3)
    a = sample_bigram_trees(base, tiny_tokenizer.vocab, 64, np.random.default_rng(5), 255)
    b = sample_bigram_trees(base, tiny_tokenizer.vocab, 64, np.random.default_rng(5), 255)
    assert np.array_equal(a.token, b.token) and np.array_equal(a.offsets, b.offsets)
    roots = a.token[a.offsets[:-1]]
    true_roots = children[parents == 2 * N_CODES]
    assert np.all(np.isin(roots, true_roots))
    is_leaf = a.token >= N_CODES
    assert np.all(a.left[is_leaf] == -1) and np.all(a.left[~is_leaf] >= 0)
    ckpt = tmp_path / "with_baselines.ckpt"
    model = tiny_model(tiny_tokenizer, seed=4).eval()
    save_model(model, ckpt, {
        "baselines": base.state(),
        "tokenizer": {"identity": tiny_tokenizer.identity, "path": str(tiny_tokenizer.path)},
    })  # fmt: skip
    s = generate(ckpt, 30, tmp_path / "bg", baseline="bigram", seed=3, progress=False)
    assert s["generator"] == "bigram" and s["n_written"] == 30
    validate(load(tmp_path / "bg"), scheme="E", rtol=1e-4, harder_first=True)
    with pytest.raises(InputError, match="no count baselines"):
        generate(model_ckpt, 5, tmp_path / "bg2", baseline="bigram", progress=False)


def test_resolution_scale_turns_soft_pseudojets_into_particles(tiny_tokenizer):
    """Below the scale a sampled pseudojet becomes the leaf of the same code: no tree can
    cascade below it, so even a model that always splits stops."""
    from jetevo.tokenize.resolution import Resolution, code_log_z

    model = tiny_model(tiny_tokenizer, seed=4).eval()
    model.shift_leaf_odds(-1e4)  # never a leaf: runaway without a scale
    res = Resolution(code_log_z(tiny_tokenizer), float(np.log(50.0)))
    t = _sample(model, 8, seed=0, max_nodes=255, resolution=res)
    assert len(t.runaway) == 0 and len(t) == 8 and t.n_resolved > 0
    assert np.all(t.token[t.left < 0] >= N_CODES)
    v = res.vocab
    tokens = np.array([3, 3 + v.n_codes, 5])
    out = res.resolve(tokens, np.log(np.array([10.0, 10.0, 100.0])))
    assert out.tolist() == [3 + v.n_codes, 3 + v.n_codes, 5]
