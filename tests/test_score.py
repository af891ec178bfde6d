"""``jetevo score``: per-jet log-likelihoods equal the evaluate-splits terms, do not depend on
which child a file stores first, change with a token, and are refused for foreign tokens."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY_TOKENIZER
from conftest import tiny_checkpoint as checkpoint

from jetevo.cli import main
from jetevo.errors import InputError
from jetevo.score import score
from jetevo.trees.format import list_column, tree_files
from jetevo.trees.kernel import preorder_batch

N_CODES = TINY_TOKENIZER["n_codes"]


@pytest.fixture(scope="module")
def tree_ckpt(tiny_tokenizer, token_dir, tmp_path_factory):
    return checkpoint(tiny_tokenizer, token_dir, tmp_path_factory.mktemp("score") / "m.ckpt")


def test_scores_are_the_evaluate_splits_terms(tree_ckpt, token_dir, tmp_path, capsys):
    out = tmp_path / "scores.parquet"
    assert (
        main(["score", "--ckpt", str(tree_ckpt), "--tokens", str(token_dir), "--out", str(out)])
        == 0
    )
    assert "mean log-likelihood" in capsys.readouterr().out
    table = pq.read_table(out)
    assert main(["evaluate-splits", "--ckpt", str(tree_ckpt), "--tokens", str(token_dir),
                 "--json", str(tmp_path / "s.json")]) == 0  # fmt: skip
    splits = json.loads((tmp_path / "s.json").read_text())
    n = splits["n_children"]
    ll = np.asarray(table.column("log_likelihood"))
    assert len(ll) == splits["n_jets"] and np.all(ll < 0)
    assert np.isclose(-ll.sum() / n, splits["nll"], rtol=1e-5)
    for name in ("bigram", "unigram"):
        total = -np.asarray(table.column(f"{name}_log_likelihood")).sum()
        assert np.isclose(total / n, splits[f"{name}_nll"], rtol=1e-9)
    # the per-level sums add up to the jet's, level 0 being the root token alone
    levels = table.column("level_log_likelihood").to_pylist()
    assert np.allclose([sum(x) for x in levels], ll)
    # source and entry as in the token files
    tokens = pq.read_table(tree_files([token_dir])[0], columns=["source", "entry"])
    k = tokens.num_rows
    assert table.column("source").to_pylist()[:k] == tokens.column("source").to_pylist()
    assert table.column("entry").to_pylist()[:k] == tokens.column("entry").to_pylist()
    # the same model scored twice: identical (a likelihood ratio of a model with itself is 0)
    again = score(tree_ckpt, [token_dir])
    assert np.array_equal(np.asarray(again.column("log_likelihood")), ll)


def _mirrored(src, dst) -> None:
    """The token file with every split's children stored the other way round."""
    table = pq.read_table(src)
    offsets = np.asarray(table.column("left").combine_chunks().offsets, np.int64)
    flat = {c: np.asarray(table.column(c).combine_chunks().flatten()) for c in
            ("left", "right", "px", "py")}  # fmt: skip
    softer_first = -np.hypot(flat["px"], flat["py"])
    left, right = flat["left"].astype(np.int64), flat["right"].astype(np.int64)
    order, new_left, new_right, parent, depth, _ = preorder_batch(
        left, right, softer_first, offsets
    )
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if not pa.types.is_list(column.type):
            continue
        values = {"left": new_left, "right": new_right, "parent": parent, "depth": depth}.get(name)
        if values is None:
            values = np.asarray(column.flatten())[order]
        values = values.astype(np.asarray(column.flatten()).dtype)
        i = table.column_names.index(name)
        new = list_column(values, offsets)
        table = table.set_column(i, pa.field(name, new.type, nullable=False), new)
    pq.write_table(table.replace_schema_metadata(table.schema.metadata), dst)


def test_score_does_not_depend_on_the_stored_child_order(tree_ckpt, token_dir, tmp_path):
    src = tree_files([token_dir])[0]
    mirrored = tmp_path / "mirrored" / src.name
    mirrored.parent.mkdir()
    _mirrored(src, mirrored)
    stored = pq.read_table(src, columns=["token"]).column("token").to_pylist()
    flipped = pq.read_table(mirrored, columns=["token"]).column("token").to_pylist()
    assert stored != flipped and all(
        sorted(a) == sorted(b) for a, b in zip(stored, flipped, strict=True)
    )
    a = np.asarray(score(tree_ckpt, [src]).column("log_likelihood"))
    b = np.asarray(score(tree_ckpt, [mirrored]).column("log_likelihood"))
    # the one ambiguity: a split into two pseudojets of the same token, whose subtrees
    # differ, is expanded in the stored order (a tree has no other way to tell them apart)
    table = pq.read_table(src, columns=["token", "left", "right"]).to_pydict()
    ambiguous = np.array([
        any(lft >= 0 and tok[lft] == tok[rgt] and left[lft] >= 0 for lft, rgt in zip(left, right, strict=True))
        for tok, left, right in zip(table["token"], table["left"], table["right"], strict=True)
    ])  # fmt: skip
    assert ambiguous.sum() <= len(a) // 10
    assert np.allclose(a[~ambiguous], b[~ambiguous], rtol=0, atol=1e-4)


def test_a_changed_token_changes_the_score(tree_ckpt, token_dir, tmp_path):
    src = tree_files([token_dir])[0]
    table = pq.read_table(src)
    column = table.column("token").combine_chunks()
    offsets = np.asarray(column.offsets, np.int64)
    tokens = np.asarray(column.flatten()).copy()
    leaves = np.flatnonzero(np.asarray(table.column("left").combine_chunks().flatten()) < 0)
    first_leaf = leaves[0]  # a particle of jet 0
    tokens[first_leaf] = N_CODES + (tokens[first_leaf] - N_CODES + 1) % N_CODES
    new = list_column(tokens, offsets)
    i = table.column_names.index("token")
    changed = tmp_path / "changed" / src.name
    changed.parent.mkdir()
    pq.write_table(table.set_column(i, pa.field("token", new.type, nullable=False), new), changed)
    a = np.asarray(score(tree_ckpt, [src]).column("log_likelihood"))
    b = np.asarray(score(tree_ckpt, [changed]).column("log_likelihood"))
    assert a[0] != b[0] and np.array_equal(a[1:], b[1:])


def test_flat_scores_are_the_evaluate_particles_terms(flat_tokenizer, flat_token_dir, tmp_path):
    ckpt = checkpoint(flat_tokenizer, flat_token_dir, tmp_path / "flat.ckpt", mode="flat")
    table = score(ckpt, [flat_token_dir])
    from jetevo.model.splits import evaluate_particles

    p = evaluate_particles(ckpt, [flat_token_dir])
    n = np.asarray(table.column("n_predictions"))
    assert n.sum() == p["n_children"]
    ll = np.asarray(table.column("log_likelihood"))
    assert np.isclose(-ll.sum() / n.sum(), p["nll"], rtol=1e-5)
    assert "level_log_likelihood" not in table.column_names


def test_foreign_tokens_and_bad_settings_are_one_line(tree_ckpt, flat_token_dir, tmp_path, capsys):
    with pytest.raises(InputError, match="tokens come from tokenizer"):
        score(tree_ckpt, [flat_token_dir])
    args = [
        "score",
        "--ckpt",
        str(tree_ckpt),
        "--tokens",
        str(flat_token_dir),
        "--out",
        str(tmp_path / "s.parquet"),
    ]
    assert main(args) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main([*args[:-2], "--out", str(tmp_path / "t.parquet"), "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert not (tmp_path / "s.parquet").exists()
