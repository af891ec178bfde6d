"""Per-node tokenizer: vocabulary, invertible features, locality, checkpoints, CLI, errors."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
from conftest import TINY_TOKENIZER

from jetevo.cli import main
from jetevo.errors import InputError
from jetevo.kinematics import pt_y_phi_m, wrap_phi
from jetevo.tokenize import features as F
from jetevo.tokenize.tokenizer import Tokenizer, TokenizerConfig
from jetevo.tokenize.vocab import Vocab
from jetevo.trees.format import load


def test_vocab_layout():
    v = Vocab(10)
    assert (v.start, v.stop, v.pad, v.size, v.n_node_tokens) == (20, 21, 22, 23, 20)
    tokens = v.token(np.array([0, 9, 3]), np.array([False, True, True]))
    assert tokens.tolist() == [0, 19, 13]
    assert v.is_leaf(tokens).tolist() == [False, True, True]
    assert v.code(tokens).tolist() == [0, 9, 3]
    assert not v.is_node(np.array([v.start, v.stop, v.pad])).any()


def test_feature_inverse_is_exact(tree_dir):
    a = F.node_arrays(load(tree_dir))
    ctx = F.parent_context(a["p"], a["parent"])
    f = F.features(a["p"], ctx)
    p = F.invert(f, ctx)
    pt, y, phi, m = pt_y_phi_m(a["p"])
    pt2, y2, phi2, m2 = pt_y_phi_m(p)
    assert np.allclose(pt2, pt, rtol=1e-9)
    assert np.allclose(y2, y, atol=1e-6) and np.allclose(wrap_phi(phi2 - phi), 0, atol=1e-6)
    assert np.allclose(m2, m, rtol=1e-6, atol=1e-3)
    std = F.Standardizer.fit(f, [3, 1, 0.7, 0.7, 1.5])
    assert np.allclose(std.inverse(std.forward(f)), f, rtol=0, atol=1e-12)


def test_round_trip_shapes_and_ranges(tiny_tokenizer, tree_dir):
    trees = load(tree_dir)
    tokens = tiny_tokenizer.encode_trees(trees)
    a = F.node_arrays(trees)
    assert tokens.shape == (len(a["p"]),)
    vocab = tiny_tokenizer.vocab
    assert np.all(vocab.is_node(tokens)) and np.array_equal(vocab.is_leaf(tokens), a["is_leaf"])
    parent_p = np.where((a["parent"] >= 0)[:, None], a["p"][np.maximum(a["parent"], 0)], np.nan)
    decoded = tiny_tokenizer.decode(tokens, parent=parent_p)
    assert decoded.shape == (len(tokens), 4) and np.all(np.isfinite(decoded))
    pt, pt_dec = pt_y_phi_m(a["p"])[0], pt_y_phi_m(decoded)[0]
    assert np.median(np.abs(pt_dec - pt) / pt) < 0.5, "even 64 codes reconstruct pT roughly"


def test_token_depends_only_on_node_and_parent(tiny_tokenizer, tree_dir):
    trees = load(tree_dir)[:3]
    a = F.node_arrays(trees)
    parent_p = np.where((a["parent"] >= 0)[:, None], a["p"][np.maximum(a["parent"], 0)], np.nan)
    before = tiny_tokenizer.encode(a["p"], parent_p, a["is_leaf"])
    node = 5
    keep = np.zeros(len(a["p"]), bool)
    keep[[node, a["parent"][node]]] = True
    rng = np.random.default_rng(0)
    p2 = a["p"].copy()
    p2[~keep] *= rng.uniform(0.5, 2.0, size=((~keep).sum(), 1))
    parent2 = np.where((a["parent"] >= 0)[:, None], p2[np.maximum(a["parent"], 0)], np.nan)
    after = tiny_tokenizer.encode(p2, parent2, a["is_leaf"])
    assert after[node] == before[node]
    single = tiny_tokenizer.encode(a["p"][[node]], parent_p[[node]], a["is_leaf"][[node]])
    assert single[0] == before[node], "a node encodes alone exactly as inside its jet"


def test_checkpoint_round_trip(tiny_tokenizer, tree_dir, tmp_path):
    path = tmp_path / "copy.ckpt"
    tiny_tokenizer.save(path)
    loaded = Tokenizer.load(path)
    trees = load(tree_dir)
    assert np.array_equal(loaded.encode_trees(trees), tiny_tokenizer.encode_trees(trees))
    assert loaded.identity == tiny_tokenizer.identity


def test_mismatched_checkpoints_are_refused(tiny_tokenizer, tmp_path):
    import torch

    state = tiny_tokenizer.state()
    state["feature_set"] = "axis-relative-v0"
    bad = tmp_path / "bad.ckpt"
    torch.save(state, bad)
    with pytest.raises(InputError, match="feature set"):
        Tokenizer.load(bad)
    state = tiny_tokenizer.state()
    state["config"] = {**state["config"], "n_codes": 128}
    torch.save(state, bad)
    with pytest.raises(InputError, match="codebook size"):
        Tokenizer.load(bad)
    (tmp_path / "junk.ckpt").write_text("nope")
    with pytest.raises(InputError, match=r"not a (readable|jetevo tokenizer) checkpoint"):
        Tokenizer.load(tmp_path / "junk.ckpt")


def test_token_files_from_another_tokenizer_are_refused(tiny_tokenizer, tree_dir, tmp_path):
    from jetevo.tokenize.tokens import decode_files, encode_files

    encode_files(tiny_tokenizer, [tree_dir], tmp_path / "tokens")
    other = Tokenizer(
        TokenizerConfig(**{**TINY_TOKENIZER, "n_codes": 32}),
        tiny_tokenizer.standardizer,
        Tokenizer.build_model(TokenizerConfig(n_codes=32)),
    )
    with pytest.raises(InputError, match="not by this one"):
        decode_files(other, [tmp_path / "tokens"], tmp_path / "decoded")
    # the same codebook size is not enough: another tokenizer's tokens mean other kinematics
    same_k = Tokenizer(
        TokenizerConfig(**TINY_TOKENIZER),
        tiny_tokenizer.standardizer,
        Tokenizer.build_model(TokenizerConfig(**TINY_TOKENIZER)),
    )
    assert same_k.cfg.n_codes == tiny_tokenizer.cfg.n_codes
    with pytest.raises(InputError, match="not by this one"):
        decode_files(same_k, [tmp_path / "tokens"], tmp_path / "decoded")
    assert not (tmp_path / "decoded").exists() or not any((tmp_path / "decoded").iterdir())


def test_empty_and_non_finite_input_rejected(tiny_tokenizer):
    with pytest.raises(ValueError, match="empty"):
        tiny_tokenizer.encode(np.zeros((0, 4)), None, np.zeros(0, bool))
    p = np.array([[10.0, 0.0, 1.0, 10.1], [np.nan, 1.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match="non-finite"):
        tiny_tokenizer.encode(p, None, np.array([True, True]))
    with pytest.raises(ValueError, match="node tokens only"):
        tiny_tokenizer.decode(np.array([tiny_tokenizer.vocab.start]))
    empty = ak.Array({"px": [[]], "py": [[]], "pz": [[]], "E": [[]], "left": [[]], "parent": [[]]})
    with pytest.raises(ValueError, match="empty"):
        tiny_tokenizer.encode_trees(empty)


def test_cli_train_encode_decode_eval(tree_dir, tmp_path, capsys):
    ckpt = tmp_path / "tok.ckpt"
    overrides = [f"{k}={v}" for k, v in TINY_TOKENIZER.items()]
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--trees",
                str(tree_dir),
                "--out",
                str(ckpt),
                "--quiet",
                *overrides,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--trees",
                str(tree_dir),
                "--out",
                str(ckpt),
                "--quiet",
                *overrides,
                "max_steps=7",
            ]
        )
        == 0
    )
    import torch

    assert torch.load(ckpt, weights_only=False)["step"] == 7, "a rerun resumes to the new max_steps"
    assert (
        main(
            [
                "tokenizer",
                "encode",
                "--ckpt",
                str(ckpt),
                "--trees",
                str(tree_dir),
                "--out",
                str(tmp_path / "tok"),
            ]
        )
        == 0
    )
    tokens = load(tmp_path / "tok")
    assert "token" in tokens.fields and ak.all(ak.num(tokens.token) == ak.num(tokens.px))
    assert (
        main(
            [
                "tokenizer",
                "decode",
                "--ckpt",
                str(ckpt),
                "--tokens",
                str(tmp_path / "tok"),
                "--out",
                str(tmp_path / "dec"),
            ]
        )
        == 0
    )
    from jetevo.trees.format import validate

    validate(load(tmp_path / "dec"), harder_first=False)
    report_path = tmp_path / "report.json"
    assert (
        main(
            [
                "tokenizer",
                "eval",
                "--ckpt",
                str(ckpt),
                "--trees",
                str(tree_dir),
                "--json",
                str(report_path),
            ]
        )
        == 0
    )
    report = json.loads(report_path.read_text())
    keys = {
        "pt_rel_err_mean",
        "pt_rel_err_median",
        "eta_abs_err_median",
        "phi_abs_err_median",
        "mass_abs_err_median",
    }
    for group in ("leaves", "internal", "root"):
        assert set(report[group]) == keys and set(report["kmeans_floor"][group]) == keys
    for k in ("jet_mass_rel_err_median", "codebook_utilization", "perplexity", "n_nodes"):
        assert k in report
    assert (
        0 < report["codebook_utilization"] <= 1 and (tmp_path / "tokenizer_residuals.png").exists()
    )
    # closure: the true trees rebuilt from their own tokens keep their structure exactly
    closure = report["closure"]["observables"]
    for k in ("multiplicity", "tree_depth"):
        assert closure[k]["paired_abs_diff_median"] == 0
    mass = closure["mass"]
    # a 64-code tokenizer after 5 steps: coarse, but its rebuilt masses stay on the jet scale
    assert 0 < mass["paired_abs_diff_median"] < 60 and 0 < mass["w1"] < 60
    assert np.isfinite(mass["evaluate_w1_floor"]) and np.isfinite(mass["paired_diff_median"])
    out = capsys.readouterr().out
    assert "closure, trees rebuilt from their own tokens (two-body, pion particles)" in out
    assert "spacelike fraction 0.0000" in out
    capsys.readouterr()
    assert (
        main(
            [
                "tokenizer",
                "eval",
                "--ckpt",
                str(tmp_path / "missing.ckpt"),
                "--trees",
                str(tree_dir),
                "--json",
                str(report_path),
            ]
        )
        == 2
    )
    assert "missing.ckpt" in capsys.readouterr().err


def test_kmeans_init_gives_roots_and_first_split_their_training_share():
    """Roots and the root's children (rare) enter the k-means sample at their batch shares,
    repeated if needed; other nodes are drawn once each."""
    from jetevo.tokenize.tokenizer import TokenizerConfig
    from jetevo.tokenize.train import _kmeans_rows, shallow_groups

    # 100 jets of 100 nodes: root, two children, then a chain hanging from the left child
    parent = np.tile(np.concatenate([[-1, 0, 0], np.arange(1, 98)]), 100)
    parent += np.repeat(np.arange(100) * 100, 100) * (parent >= 0)
    is_root, is_first = shallow_groups(parent)
    assert is_root.sum() == 100 and is_first.sum() == 200
    assert np.array_equal(np.flatnonzero(is_first[:100]), [1, 2])

    cfg = TokenizerConfig(root_fraction=0.05, first_split_fraction=0.15, kmeans_sample=4_000)
    rows = _kmeans_rows(is_root, is_first, cfg, np.random.default_rng(0))
    assert len(rows) == 4_000 and rows.min() >= 0 and rows.max() < len(is_root)
    assert is_root[rows].sum() == 200  # 5% of the sample, from 100 distinct roots
    assert len(np.unique(rows[is_root[rows]])) == 100
    assert is_first[rows].sum() == 600  # 15%, every first-split child three times
    assert np.all(np.bincount(rows[is_first[rows]], minlength=len(parent))[is_first] == 3)
    others = rows[~is_root[rows] & ~is_first[rows]]
    assert len(np.unique(others)) == len(others)  # other nodes are not repeated
    # without roots (or a tiny share asked) the sample is plain
    none = np.zeros(500, bool)
    plain = _kmeans_rows(none, none, cfg, np.random.default_rng(0))
    assert np.array_equal(plain, np.arange(500))
    for bad in ((0.5, 0.5), (float("nan"), 0.1), (-0.1, 0.1), ("0.1", 0.1)):
        with pytest.raises(ValueError, match="add up to less than 1"):
            TokenizerConfig(root_fraction=bad[0], first_split_fraction=bad[1])
    # tiny jets: both groups' natural shares exceed what their fractions ask; never more than n
    tiny = np.tile([-1, 0, 0], 50) + np.repeat(np.arange(50) * 3, 3) * (
        np.tile([-1, 0, 0], 50) >= 0
    )
    r, f = shallow_groups(tiny)
    cfg = TokenizerConfig(root_fraction=0.1, first_split_fraction=0.85, kmeans_sample=100)
    rows = _kmeans_rows(r, f, cfg, np.random.default_rng(0))
    assert len(rows) == 100 and r[rows].sum() == 33 and f[rows].sum() == 67


def test_old_tokenizer_checkpoints_load_without_first_split_share(tiny_tokenizer):
    """Checkpoints saved before ``first_split_fraction`` existed were trained without it."""
    from jetevo.tokenize.tokenizer import Tokenizer

    state = tiny_tokenizer.state()
    assert state["config"]["first_split_fraction"] == TINY_TOKENIZER.get(
        "first_split_fraction", 0.15
    )
    del state["config"]["first_split_fraction"]
    assert Tokenizer.from_state(state).cfg.first_split_fraction == 0.0
    state["config"]["root_fraction"] = float("nan")
    with pytest.raises(InputError, match=r"old\.ckpt: bad tokenizer config"):
        Tokenizer.from_state(state, "old.ckpt")
