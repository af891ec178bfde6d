"""Per-node tokenizer: vocabulary, invertible features, locality, checkpoints, CLI, errors."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
from conftest import TINY_TOKENIZER

from jetevo.cli import main
from jetevo.errors import InputError
from jetevo.kinematics import pt_y_phi_m
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


def _pairs(a: dict) -> tuple[np.ndarray, np.ndarray]:
    """The two children of every split of node arrays (global indices)."""
    pairs = F.sibling_pairs(a["parent"])
    return pairs[:, 0], pairs[:, 1]


def test_feature_inverse_is_exact(tree_dir):
    """Every real split comes back from its children's features (the tree set's nodes are
    the float64 sums of their particles), and the standardizer inverts exactly."""
    a = F.node_arrays(load(tree_dir))
    a["p"] = F.summed_nodes(a)
    ctx = F.split_parents(a)
    left, right = _pairs(a)
    f_l, f_r = (
        F.split_features(a["p"][left], ctx[left]),
        F.split_features(a["p"][right], ctx[right]),
    )
    p_l, p_r = F.decode_split(ctx[left], f_l, f_r)
    scale = ctx[left, 3:4]
    assert np.allclose(p_l, a["p"][left], rtol=0, atol=1e-6 * scale.max())
    assert np.allclose(p_r, a["p"][right], rtol=0, atol=1e-6 * scale.max())
    assert np.median(np.abs(p_l - a["p"][left]) / scale) < 1e-10
    std = F.Standardizer.fit(f_l, [3, 1, 1, 2])
    assert np.allclose(std.inverse(std.forward(f_l)), f_l, rtol=0, atol=1e-12)


def test_round_trip_shapes_and_ranges(tiny_tokenizer, tree_dir):
    trees = load(tree_dir)
    tokens = tiny_tokenizer.encode_trees(trees)
    a = F.node_arrays(trees)
    assert tokens.shape == (len(a["p"]),)
    vocab = tiny_tokenizer.vocab
    assert np.all(vocab.is_node(tokens)) and np.array_equal(vocab.is_leaf(tokens), a["is_leaf"])
    roots = a["parent"] < 0
    decoded_roots = tiny_tokenizer.decode(tokens[roots])
    left, right = _pairs(a)
    p_l, p_r = tiny_tokenizer.decode_split(a["p"][a["parent"][left]], tokens[left], tokens[right])
    assert np.all(np.isfinite(p_l)) and np.all(np.isfinite(p_r))
    assert np.allclose(p_l + p_r, a["p"][a["parent"][left]])
    pt, pt_dec = pt_y_phi_m(a["p"][left])[0], pt_y_phi_m(p_l)[0]
    assert np.median(np.abs(pt_dec - pt) / pt) < 0.5, "even 64 codes reconstruct pT roughly"
    m_true, m_dec = pt_y_phi_m(a["p"][roots])[3], pt_y_phi_m(decoded_roots)[3]
    assert np.median(np.abs(m_dec - m_true) / m_true) < 0.2, "the root grid holds jet masses"
    with pytest.raises(ValueError, match="decode_split"):
        tiny_tokenizer.decode(tokens[left], parent=a["p"][a["parent"][left]])


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
        root=tiny_tokenizer.root,
    )
    with pytest.raises(InputError, match="not by this one"):
        decode_files(other, [tmp_path / "tokens"], tmp_path / "decoded")
    # the same codebook size is not enough: another tokenizer's tokens mean other kinematics
    same_k = Tokenizer(
        TokenizerConfig(**TINY_TOKENIZER),
        tiny_tokenizer.standardizer,
        Tokenizer.build_model(TokenizerConfig(**TINY_TOKENIZER)),
        root=tiny_tokenizer.root,
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
    for k in ("collinear_fraction", "per_depth"):
        assert k in report["closure"]["splits"]
    assert report["closure"]["lund_plane"]["kl"] >= 0
    assert report["root"]["mass_abs_err_median"] >= 0
    out = capsys.readouterr().out
    assert "trees rebuilt from their own tokens (exact splits, decoded particles)" in out
    assert "spacelike fraction 0.0000" in out and "collinear splits" in out
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


def test_kmeans_init_gives_the_first_split_its_training_share():
    """The root's children (rare) enter the k-means sample at their batch share, repeated if
    needed; other nodes are drawn once each (roots have their own grid)."""
    from jetevo.tokenize.tokenizer import TokenizerConfig
    from jetevo.tokenize.train import _kmeans_rows

    # 100 jets of 99 coded nodes: the root's two children, then a chain below the left one
    is_first = np.tile(np.concatenate([[True, True], np.zeros(97, bool)]), 100)
    cfg = TokenizerConfig(first_split_fraction=0.15, kmeans_sample=4_000)
    rows = _kmeans_rows(is_first, cfg, np.random.default_rng(0))
    assert len(rows) == 4_000 and rows.min() >= 0 and rows.max() < len(is_first)
    assert is_first[rows].sum() == 600  # 15%, every first-split child three times
    assert np.all(np.bincount(rows[is_first[rows]], minlength=len(is_first))[is_first] == 3)
    others = rows[~is_first[rows]]
    assert len(np.unique(others)) == len(others)  # other nodes are not repeated
    none = np.zeros(500, bool)
    assert np.array_equal(_kmeans_rows(none, cfg, np.random.default_rng(0)), np.arange(500))
    for bad in (1.0, float("nan"), -0.1, "0.1"):
        with pytest.raises(ValueError, match="first_split_fraction"):
            TokenizerConfig(first_split_fraction=bad)


def test_old_tokenizer_checkpoints_load_without_first_split_share(tiny_tokenizer):
    """Checkpoints saved before ``first_split_fraction`` existed were trained without it."""
    from jetevo.tokenize.tokenizer import Tokenizer

    state = tiny_tokenizer.state()
    assert state["config"]["first_split_fraction"] == TINY_TOKENIZER.get(
        "first_split_fraction", 0.15
    )
    del state["config"]["first_split_fraction"]
    assert Tokenizer.from_state(state).cfg.first_split_fraction == 0.0
    state["config"]["first_split_fraction"] = float("nan")
    with pytest.raises(InputError, match=r"old\.ckpt: bad tokenizer config"):
        Tokenizer.from_state(state, "old.ckpt")


def test_token_files_record_their_representation(tiny_tokenizer, tree_dir, tmp_path):
    """Token files name the feature set that made them; a retired one is refused in one
    line naming the file."""
    import pyarrow.parquet as pq

    from jetevo.tokenize.tokens import TOKENIZER_KEY, encode_files, tokenizer_metadata

    path = encode_files(tiny_tokenizer, [tree_dir], tmp_path / "tokens")[0]
    assert tokenizer_metadata(path)["feature_set"] == "split-exact-v2"
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    info = json.loads(meta[TOKENIZER_KEY])
    meta[TOKENIZER_KEY] = json.dumps({**info, "feature_set": "parent-relative-v1"}).encode()
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "old.trees.parquet")
    with pytest.raises(InputError, match=r"old\.trees\.parquet: tokens of the retired"):
        tokenizer_metadata(tmp_path / "old.trees.parquet")
