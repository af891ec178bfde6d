"""The flat-mode (jet-relative) tokenizer: features, training, decoding, report, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_TOKENIZER, random_particles

from jetevo.errors import InputError, SettingError
from jetevo.kinematics import eta, pt_y_phi_m, wrap_phi
from jetevo.tokenize import features as F
from jetevo.tokenize.tokenizer import Tokenizer, TokenizerConfig
from jetevo.trees.format import Topology, load

FLAT = {**TINY_TOKENIZER, "feature_set": "jet-relative-v1"}


def _axes(a: dict) -> np.ndarray:
    """Each node's jet axis (its root's four-momentum)."""
    counts = a["counts"]
    return a["p"][np.repeat(np.cumsum(counts) - counts, counts)]


def _massless(p: np.ndarray) -> bool:
    """Massless up to the rounding of E^2 - |p|^2."""
    return bool(np.all(pt_y_phi_m(p)[3] <= 1e-6 * p[:, 3]))


def test_flat_features_inverse_is_exact(tree_dir):
    rng = np.random.default_rng(0)
    p = random_particles(rng, 500, spread=0.5, eta0=1.3)  # massless
    axis = np.repeat(p.sum(axis=0, keepdims=True), len(p), axis=0)
    fs = F.feature_set("jet-relative-v1")
    assert fs.names == ("log_pt", "deta", "dphi") and fs.particles_only
    ctx = fs.context(axis, len(p))
    f = fs.forward(p, ctx)
    assert np.allclose(f[:, 1], eta(p) - eta(axis), atol=1e-12)
    assert np.allclose(fs.inverse(f, ctx), p, rtol=1e-9, atol=1e-9)
    assert np.allclose(fs.forward(fs.inverse(f, ctx), ctx), f, atol=1e-9)
    # NaN rows or no axis: the jet frame; decoded nodes are massless
    framed = fs.inverse(f, fs.context(np.full((len(p), 4), np.nan), len(p)))
    assert np.allclose(eta(framed), f[:, 1]) and _massless(framed)
    # in trees every node is relative to its root: the roots to themselves
    a = F.node_arrays(load(tree_dir))
    tf = fs.forward(a["p"], fs.tree_context(a))
    roots = a["parent"] < 0
    assert np.all(tf[roots, 1:] == 0) and np.allclose(
        np.exp(tf[roots, 0]), pt_y_phi_m(a["p"][roots])[0]
    )
    assert np.allclose(tf[~roots, 1], eta(a["p"][~roots]) - eta(_axes(a)[~roots]))


def test_flat_round_trip_within_quantization(flat_tokenizer, tree_dir):
    tok = flat_tokenizer
    assert tok.feature_set == "jet-relative-v1" and tok.cfg.feature_weights == [3.0, 1.0, 1.0]
    trees = load(tree_dir)
    a = F.node_arrays(trees)
    tokens = tok.encode_trees(trees)
    assert tokens.shape == (len(a["p"]),) and np.all(tok.vocab.is_node(tokens))
    assert np.array_equal(tok.vocab.is_leaf(tokens), a["is_leaf"])
    axes = _axes(a)
    # a particle encodes alone exactly as inside its jet
    leaf = np.flatnonzero(a["is_leaf"])
    assert np.array_equal(tok.encode(a["p"][leaf], axes[leaf], a["is_leaf"][leaf]), tokens[leaf])
    decoded = tok.decode(tokens[leaf], axes[leaf])
    assert _massless(decoded), "decoded particles are massless"
    # the decoded particle is its code's point: within the quantization of the true one
    true_f = F.jet_features(a["p"][leaf], F.axis_context(axes[leaf], len(leaf)))
    dec_f = F.jet_features(decoded, F.axis_context(axes[leaf], len(leaf)))
    codes_f = tok.features_from_codes(tok.vocab.code(tokens[leaf]))
    assert np.allclose(dec_f, codes_f, atol=1e-6)
    pt, pt_dec = pt_y_phi_m(a["p"][leaf])[0], pt_y_phi_m(decoded)[0]
    assert np.median(np.abs(pt_dec - pt) / pt) < 0.5
    assert np.median(np.abs(wrap_phi(dec_f[:, 2] - true_f[:, 2]))) < 0.1


def test_flat_identity_and_settings(flat_tokenizer, tiny_tokenizer):
    assert flat_tokenizer.identity != tiny_tokenizer.identity
    assert tiny_tokenizer.feature_set == "split-exact-v2"
    with pytest.raises(SettingError, match="feature_weights") as err:
        TokenizerConfig.from_dict({"feature_set": "jet-relative-v1", "feature_weights": [1] * 5})
    assert "\n" not in str(err.value)
    with pytest.raises(SettingError, match="feature_weights"):
        TokenizerConfig(feature_weights=[1.0, 1.0, 1.0])
    with pytest.raises(SettingError, match="feature_set"):
        TokenizerConfig(feature_set="axis-relative-v0")
    # tokenizers of the retired parent-relative representation are refused in one line
    state = tiny_tokenizer.state()
    state["feature_set"] = "parent-relative-v1"
    with pytest.raises(InputError, match="retired representation parent-relative-v1"):
        Tokenizer.from_state(state)
    state = flat_tokenizer.state()
    state["config"]["feature_set"] = "split-exact-v2"
    with pytest.raises(InputError, match=r"bad tokenizer config|damaged"):
        Tokenizer.from_state(state)


def test_resume_with_another_feature_set_is_refused(flat_tokenizer, tree_dir):
    from jetevo.tokenize.train import train_tokenizer

    with pytest.raises(InputError, match="feature_set"):
        train_tokenizer([tree_dir], flat_tokenizer.path, TokenizerConfig(**TINY_TOKENIZER),
                        progress=False, log=lambda *a: None)  # fmt: skip


def test_decode_flat_sums_particles(flat_tokenizer, tree_dir):
    from jetevo.tokenize.decode import decode_flat, decode_tokens, decode_tree

    trees = load(tree_dir)
    topology = Topology.of(trees)
    tokens = flat_tokenizer.encode_trees(trees)
    p = decode_flat(flat_tokenizer, tokens, topology, "pion")
    first = topology.jet_start
    internal = np.flatnonzero(topology.left >= 0)
    kids = (
        p[first[internal] + topology.left[internal]] + p[first[internal] + topology.right[internal]]
    )
    assert np.allclose(kids, p[internal], rtol=1e-12, atol=1e-9)
    leaf = topology.left < 0
    assert np.allclose(pt_y_phi_m(p[leaf])[3], 0.13957, rtol=1e-6)
    jets = np.repeat(np.arange(len(topology)), np.diff(topology.offsets))
    sums = np.zeros((len(topology), 4))
    np.add.at(sums, jets[leaf], p[leaf])
    assert np.allclose(sums, p[topology.offsets[:-1]], rtol=1e-9, atol=1e-9)
    assert np.array_equal(decode_tokens(flat_tokenizer, tokens, topology, "pion"), p)
    massless = decode_flat(flat_tokenizer, tokens, topology, "decoded")
    assert _massless(massless[leaf])
    with pytest.raises(SettingError, match="decode_flat"):
        decode_tree(flat_tokenizer, tokens, topology)


def test_flat_tokenizer_eval_report(flat_tokenizer, tree_dir, tmp_path):
    from jetevo.evaluate.closure import tokenizer_closure
    from jetevo.tokenize.report import evaluate, format_report

    report = evaluate(flat_tokenizer, tree_dir, plots_dir=tmp_path)
    assert report["feature_set"] == "jet-relative-v1"
    assert report["features"] == ["log_pt", "deta", "dphi"]
    n_leaves = int(F.node_arrays(load(tree_dir))["is_leaf"].sum())
    assert report["n_nodes"] == n_leaves, "measured on the particles alone"
    for r in (report, report["kmeans_floor"]):
        assert 0 <= r["leaves"]["pt_rel_err_mean"] < 1
        assert all(v is None for g in ("internal", "root") for v in r[g].values())
    assert np.isfinite(report["jet_mass_rel_err_median"])
    assert (tmp_path / "tokenizer_residuals.png").exists()
    closure = tokenizer_closure(flat_tokenizer, tree_dir, n_resamples=2)
    assert closure["decoding"] == "flat"
    assert closure["observables"]["multiplicity"]["paired_abs_diff_median"] == 0
    report["closure"] = closure
    text = format_report(report)
    assert "jet-relative-v1 (log_pt, deta, dphi)" in text and "(flat, pion particles" in text


def test_checkpoints_version_one_and_old_version_zero(flat_tokenizer, tree_dir, tmp_path):
    import torch

    path = tmp_path / "new.ckpt"
    flat_tokenizer.save(path)
    raw = torch.load(path, weights_only=True)  # tensors only
    assert raw["format_version"] == 1 and torch.is_tensor(raw["floor_centroids"])
    loaded = Tokenizer.load(path)
    assert loaded.identity == flat_tokenizer.identity and loaded.feature_set == "jet-relative-v1"
    assert isinstance(loaded.floor_centroids, np.ndarray)
    trees = load(tree_dir)
    assert np.array_equal(loaded.encode_trees(trees), flat_tokenizer.encode_trees(trees))
    # version 0: a plain torch.save of a state holding numpy arrays
    old = flat_tokenizer.state()
    assert isinstance(old["floor_centroids"], np.ndarray) and "format_version" not in old
    torch.save(old, tmp_path / "old.ckpt")
    again = Tokenizer.load(tmp_path / "old.ckpt")
    assert again.identity == flat_tokenizer.identity
    assert np.array_equal(again.floor_centroids, flat_tokenizer.floor_centroids)
