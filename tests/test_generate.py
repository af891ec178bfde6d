"""Generation: determinism, valid trees, leaves never expanded, runaway guard, KV cache."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import torch
from test_model import N_CODES, tiny_model

from jetevo.cli import main
from jetevo.errors import InputError, SettingError
from jetevo.generate import GenerationError, generate, sample_trees
from jetevo.model.checkpoint import save_model
from jetevo.tokenize.vocab import Vocab
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
    is_leaf = Vocab(N_CODES).is_leaf(t.token)
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


def test_bigram_generator_trees_valid_and_seeded(model_ckpt, token_dir, tiny_tokenizer, tmp_path):
    """The count-baseline generator writes valid trees in the same format, reproducibly, and
    its roots come from the training roots only."""
    from jetevo.generate.bigram import sample_bigram_trees
    from jetevo.model.baselines import CountBaselines
    from jetevo.model.sequences import TreeSequences

    vocab = tiny_tokenizer.vocab
    seqs = TreeSequences([token_dir], vocab, 128)
    parents, children = seqs.pairs()
    base = CountBaselines.fit(parents, children, vocab.n_node_tokens, vocab.size)
    a = sample_bigram_trees(base, tiny_tokenizer.vocab, 64, np.random.default_rng(5), 255)
    b = sample_bigram_trees(base, tiny_tokenizer.vocab, 64, np.random.default_rng(5), 255)
    assert np.array_equal(a.token, b.token) and np.array_equal(a.offsets, b.offsets)
    roots = a.token[a.offsets[:-1]]
    true_roots = children[parents == vocab.start]
    assert np.all(np.isin(roots, true_roots))
    is_leaf = vocab.is_leaf(a.token)
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
    assert np.all(Vocab(N_CODES).is_leaf(t.token[t.left < 0]))
    v = res.vocab
    tokens = np.array([3, 3 + v.n_codes, 5])
    out = res.resolve(tokens, np.log(np.array([10.0, 10.0, 100.0])))
    assert out.tolist() == [3 + v.n_codes, 3 + v.n_codes, 5]


def test_generate_replaces_an_older_run_and_leaves_nothing_when_it_fails(
    model_ckpt, tmp_path, monkeypatch
):
    import jetevo.generate.run as gen_run

    out = tmp_path / "g"
    generate(model_ckpt, 30, out, batch_size=8, shard_size=10, seed=1, progress=False)
    assert len(list(out.glob("generated.*.parquet"))) == 3
    # a smaller run into the same folder: the older shards go, whatever happens
    generate(model_ckpt, 5, out, batch_size=8, shard_size=10, seed=2, progress=False)
    assert [p.name for p in out.glob("*.parquet")] == ["generated.0000.trees.parquet"]
    assert len(load(out)) == 5
    # a run that fails midway leaves no shards (and no summary) to be read as a sample
    real, calls = gen_run.decode_tree, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # after the first shard of 10 jets is complete
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(gen_run, "decode_tree", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        generate(model_ckpt, 30, out, batch_size=8, shard_size=10, seed=3, progress=False)
    assert not list(out.iterdir())

    # a batch that does not fit in memory is a setting to change, said in one line
    def no_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"
        )

    monkeypatch.setattr(gen_run, "decode_tree", real)
    monkeypatch.setattr(gen_run, "sample_trees", no_memory)
    with pytest.raises(SettingError, match="--batch-size 8"):
        generate(model_ckpt, 3, out, batch_size=8, progress=False)


def test_generate_refuses_a_folder_of_other_tree_files(model_ckpt, tmp_path):
    other = tmp_path / "trees"
    other.mkdir()
    (other / "TTBar_000.trees.parquet").write_bytes(b"x")
    with pytest.raises(InputError, match="not written by jetevo generate"):
        generate(model_ckpt, 2, other, progress=False)
    assert (other / "TTBar_000.trees.parquet").exists()


def test_a_bad_setting_leaves_the_older_sample_alone(model_ckpt, tmp_path):
    out = tmp_path / "g"
    generate(model_ckpt, 5, out, batch_size=8, progress=False)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SettingError, match="root tokens"):
        generate(model_ckpt, 5, out, root_tokens=[10**6], progress=False)
    assert sorted(p.name for p in out.iterdir()) == before


def test_shards_make_one_sample_in_one_folder(model_ckpt, tmp_path, capsys):
    """N processes with --shard K/N: disjoint entries covering the run, their own seed
    streams and files, one folder that evaluate reads as one sample; a folder never mixes
    shards of two runs, and a whole run replaces them."""
    out = tmp_path / "g"
    for k in range(3):
        assert main(["generate", "--ckpt", str(model_ckpt), "--n-jets", "20", "--out", str(out),
                     "--seed", "5", "--shard", f"{k}/3", "--quiet"]) == 0  # fmt: skip
        assert f"summary-s{k:04d}of0003.json" in capsys.readouterr().out
    trees = load(out)
    assert sorted(np.asarray(trees.entry).tolist()) == list(range(20))
    summaries = [json.loads((out / f"summary-s{k:04d}of0003.json").read_text()) for k in range(3)]
    assert [s["n_written"] for s in summaries] == [6, 7, 7]
    assert len({s["shard_seed"] for s in summaries}) == 3
    assert all(s["run"] == summaries[0]["run"] for s in summaries)
    from jetevo.evaluate.run import generation_summary

    assert generation_summary(sorted(out.glob("*.parquet")))["n_written"] == 20
    # a shard rerun replaces its own files only, and reproduces them
    first = sorted(out.glob("generated-s0000of0003.*"))
    before = [p.read_bytes() for p in first]
    generate(model_ckpt, 20, out, seed=5, shard="0/3", progress=False)
    assert [p.read_bytes() for p in sorted(out.glob("generated-s0000of0003.*"))] == before
    assert len(load(out)) == 20
    # another run's shard in this folder is refused, before anything is removed
    with pytest.raises(InputError, match="other settings"):
        generate(model_ckpt, 20, out, seed=6, shard="1/3", progress=False)
    assert len(load(out)) == 20
    for bad in ("3/3", "1", "a/2", "-1/2"):
        with pytest.raises(SettingError, match="--shard"):
            generate(model_ckpt, 20, out, shard=bad, progress=False)
    with pytest.raises(SettingError, match="gets no jets"):
        generate(model_ckpt, 2, out, shard="0/3", progress=False)
    # a whole run replaces every shard
    generate(model_ckpt, 4, out, seed=5, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["generated.0000.trees.parquet", "summary.json"]
