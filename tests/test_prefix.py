"""``jetevo generate --prefix``: real jets kept down to depth K (or for their first N
expansions) and completed by the model; the kept nodes are the real ones bit for bit, a
prefix of the whole tree gives the real jet back, runs are seeded, bad prefixes are one line."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tiny_checkpoint

from jetevo.cli import main
from jetevo.errors import SettingError
from jetevo.generate.run import generate
from jetevo.trees.format import load, tree_files, validate


@pytest.fixture(scope="module")
def tree_ckpt(tiny_tokenizer, token_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("pfx") / "m.ckpt"
    return tiny_checkpoint(tiny_tokenizer, token_dir, path, leaf_odds=2.0)


@pytest.fixture(scope="module")
def top_tokens(token_dir):
    return next(f for f in tree_files(token_dir) if f.name.startswith("TTBar"))


def _by_jet(trees: ak.Array) -> dict:
    return {
        (str(s), int(e)): i for i, (s, e) in enumerate(zip(trees.source, trees.entry, strict=True))
    }


def _nodes(jet, max_depth):
    """The (px, py, pz, E, depth, token) rows of a jet's nodes at depth <= max_depth, sorted."""
    cols = [np.asarray(jet[k]) for k in ("px", "py", "pz", "E")]
    keep = np.asarray(jet.depth) <= max_depth
    rows = np.column_stack([c.astype(np.float64) for c in cols] + [np.asarray(jet.depth)])
    rows = np.column_stack([rows, np.asarray(jet.token)])[keep]
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefix_nodes_are_the_real_ones_bit_for_bit(tree_ckpt, top_tokens, tmp_path, depth):
    s = generate(
        tree_ckpt, 8, tmp_path / "g", prefix=[top_tokens], prefix_depth=depth, completions=3,
        seed=1, progress=False,
    )  # fmt: skip
    assert s["n_written"] == s["n_requested"] == 24 and s["prefix_jets"] == 8
    out = load(tmp_path / "g")
    validate(out, scheme="E", rtol=1e-4, harder_first=False)
    real = load(top_tokens)[:8]
    where = _by_jet(real)
    seen = {}
    for jet in out:
        r = real[where[(str(jet.source), int(jet.entry))]]
        assert str(jet.label) == str(r.label) and int(jet.prefix_depth) == depth
        assert np.asarray(jet.px).dtype == np.float32
        mine, theirs = _nodes(jet, depth), _nodes(r, depth)
        # the real nodes down to depth K, exactly (float32 bits, tokens, depths)
        assert len(mine) == len(theirs) and np.array_equal(mine, theirs)
        n_real_splits = int(
            np.count_nonzero((np.asarray(r.depth) < depth) & (np.asarray(r.left) >= 0))
        )
        assert int(jet.prefix_splits) == n_real_splits
        seen.setdefault(int(jet.entry), []).append(int(jet.completion))
    assert all(sorted(c) == [0, 1, 2] for c in seen.values()) and len(seen) == 8
    # written in prefix-jet order, completions in order
    assert list(np.asarray(out.entry)) == sorted(np.asarray(out.entry))


def test_prefix_of_the_whole_tree_is_the_real_jet(tree_ckpt, top_tokens, tmp_path):
    real = load(top_tokens)[:6]
    full = int(ak.max(real.depth)) + 1
    generate(tree_ckpt, 6, tmp_path / "g", prefix=[top_tokens], prefix_depth=full, seed=3,
             progress=False)  # fmt: skip
    out = load(tmp_path / "g")
    for k in ("px", "py", "pz", "E", "left", "right", "parent", "depth", "leaf_index", "token"):
        assert ak.all(out[k] == real[k]), k
    for k in ("jet_pt", "jet_mass", "n_constituents", "entry"):
        assert np.array_equal(np.asarray(out[k]), np.asarray(real[k])), k


def test_prefix_nodes_counts_expansions_and_tree_files_work_too(
    tree_ckpt, tiny_tokenizer, top_tokens, tree_dir, tmp_path
):
    """--prefix-nodes N keeps the first N expansions; a tree file is encoded with the
    model's tokenizer and gives the same completions as its token file."""
    kw = dict(prefix_nodes=2, completions=2, seed=4, progress=False)
    generate(tree_ckpt, 5, tmp_path / "tok", prefix=[top_tokens], **kw)
    trees_file = tree_dir / top_tokens.name
    generate(tree_ckpt, 5, tmp_path / "tree", prefix=[trees_file], **kw)
    a, b = load(tmp_path / "tok"), load(tmp_path / "tree")
    assert ak.all(a.token == b.token) and ak.all(a.px == b.px)
    real = load(top_tokens)[:5]
    splits = np.asarray(ak.sum(real.left >= 0, axis=1))
    assert np.array_equal(np.asarray(a.prefix_splits), np.repeat(np.minimum(splits, 2), 2))
    assert set(np.asarray(a.prefix_depth)) == {-1}


def test_completions_are_seeded_and_leaves_add_up_to_the_real_root(tree_ckpt, top_tokens, tmp_path):
    kw = dict(prefix=[top_tokens], prefix_depth=1, completions=2, progress=False)
    generate(tree_ckpt, 6, tmp_path / "a", seed=7, **kw)
    generate(tree_ckpt, 6, tmp_path / "b", seed=7, **kw)
    generate(tree_ckpt, 6, tmp_path / "c", seed=8, **kw)
    f = "generated.0000.trees.parquet"
    ta, tb, tc = (pq.read_table(tmp_path / d / f) for d in "abc")
    assert ta.equals(tb) and not ta.equals(tc)
    out = load(tmp_path / "a")
    leaf = out.left < 0
    for k, root in (("px", out.px[:, 0]), ("E", out.E[:, 0])):
        total = np.asarray(ak.sum(ak.values_astype(out[k][leaf], np.float64), axis=1))
        assert np.allclose(total, np.asarray(root), rtol=1e-4, atol=1e-3)


def test_bad_prefixes_are_one_line(
    tree_ckpt, top_tokens, flat_tokenizer, flat_token_dir, tmp_path, capsys
):
    base = ["generate", "--ckpt", str(tree_ckpt), "--out", str(tmp_path / "g"), "--quiet"]
    flat_file = next(f for f in tree_files(flat_token_dir) if f.name.startswith("TTBar"))
    empty = tmp_path / "empty.trees.parquet"
    table = pq.read_table(top_tokens)
    pq.write_table(table.slice(0, 0).replace_schema_metadata(table.schema.metadata), empty)
    cases = [
        (["--prefix", str(flat_file), "--prefix-depth", "1"], "tokenizer"),
        (["--prefix", str(top_tokens), "--prefix-depth", "-1"], "--prefix-depth"),
        (["--prefix", str(top_tokens)], "exactly one"),
        (
            ["--prefix", str(top_tokens), "--prefix-depth", "1", "--prefix-nodes", "2"],
            "exactly one",
        ),
        (
            ["--prefix", str(top_tokens), "--prefix-depth", "1", "--completions", "0"],
            "--completions",
        ),
        (["--prefix", str(empty), "--prefix-depth", "1"], "no jets"),
        (["--prefix", str(top_tokens), "--prefix-depth", "1", "--root-tokens", "3"], "--prefix"),
    ]
    for extra, words in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
    flat_ckpt = tiny_checkpoint(flat_tokenizer, flat_token_dir, tmp_path / "flat.ckpt", mode="flat")
    flat_run = ["generate", "--ckpt", str(flat_ckpt), "--out", str(tmp_path / "g"), "--quiet"]
    assert main([*flat_run, "--prefix", str(flat_file), "--prefix-depth", "1"]) == 2
    assert "no tree to continue" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()  # nothing written before the settings were known good
    with pytest.raises(SettingError, match="n-jets"):
        generate(tree_ckpt, None, tmp_path / "h", progress=False)


def tree_ckpt_of(tokenizer, token_dir, tmp_path):
    return tiny_checkpoint(tokenizer, token_dir, tmp_path / "full.ckpt", leaf_odds=2.0)


def test_a_prefix_longer_than_the_model_is_a_counted_skip(
    tiny_tokenizer, token_dir, top_tokens, tmp_path
):
    """A jet whose kept expansions fill the model's context, with more to sample, is skipped
    and counted; a whole jet that just fits is kept (nothing is left to sample)."""
    real = load(top_tokens)[:6]
    splits = np.asarray(ak.sum(real.left >= 0, axis=1))
    short = int(np.sort(splits)[2])  # a jet's own split count: some jets fit, some do not
    ckpt = tmp_path / "short.ckpt"
    tiny_checkpoint(tiny_tokenizer, token_dir, ckpt, max_len=short + 1, leaf_odds=2.0)
    s = generate(ckpt, 6, tmp_path / "g", prefix=[top_tokens], prefix_depth=99, progress=False)
    too_long = int(np.count_nonzero(splits + 1 > short + 1))  # whole trees: START + splits
    assert s["prefix_too_long"] == too_long > 0 and s["n_written"] == 6 - too_long
    assert int(np.count_nonzero(splits == short)) > 0  # a whole jet that just fits is written
    assert pa.types.is_integer(
        pq.read_schema(tmp_path / "g" / s["files"][0]).field("completion").type
    )
    # the node limit too: a whole jet of more than --max-nodes nodes cannot be written
    s = generate(tree_ckpt_of(tiny_tokenizer, token_dir, tmp_path), 6, tmp_path / "n",
                 prefix=[top_tokens], prefix_depth=99, max_nodes=2 * short + 1, progress=False)  # fmt: skip
    assert s["prefix_too_long"] == too_long and s["n_written"] == 6 - too_long
    # the first `short` expansions of a longer jet leave no position to sample the rest in
    s = generate(ckpt, 6, tmp_path / "h", prefix=[top_tokens], prefix_nodes=short, progress=False)
    assert s["prefix_too_long"] == int(np.count_nonzero(splits > short))


def test_sharded_prefix_runs_split_the_prefix_jets(tree_ckpt, top_tokens, tmp_path):
    kw = dict(prefix=[top_tokens], prefix_depth=1, completions=2, seed=2, progress=False)
    for k in range(2):
        generate(tree_ckpt, 7, tmp_path / "g", shard=f"{k}/2", **kw)
    out = load(tmp_path / "g")
    real = load(top_tokens)[:7]
    assert sorted(np.asarray(out.entry).tolist()) == sorted(
        np.repeat(np.asarray(real.entry), 2).tolist()
    )
