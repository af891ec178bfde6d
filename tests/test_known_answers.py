"""Known-answer tests for the tokenizer closure: the real ``tokenizer_closure`` and
``rebuilt_trees`` (nothing replaced) with a tokenizer built by hand, whose codebook holds
every node's exact features, so the answer can be written down beforehand:

- exact codes: the rebuilt jets are the true jets, so every W1 and every paired
  difference is 0 (to float32 rounding);
- the same codebook with each root's grid values of pT and mass moved up by log(1.1): every
  split's features are dimensionless and relative to its parent, so the whole decoded jet
  is the true one scaled by 1.1. Jet masses are then 1.1x the true ones: the paired
  difference is
  0.1 m_i for every jet, its median 0.1 median(m), and W1 = 0.1 mean(m) (equal-size
  samples, one the other scaled); the scale-free observables do not move.
"""

from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_jets, random_particles

from jetevo.evaluate import closure
from jetevo.kinematics import pt_y_phi_m
from jetevo.tokenize import features as F
from jetevo.tokenize.root import MASS_EPS, RootQuantizer
from jetevo.tokenize.tokenizer import Tokenizer, TokenizerConfig
from jetevo.trees.format import load
from jetevo.trees.recluster import ReclusterConfig, recluster_chunk

SCALE = 1.1
SCALE_FREE = ("tau21", "tau32", "d2", "zg", "rg", "multiplicity", "tree_depth")
N_JETS = 8


@pytest.fixture(scope="module")
def hand_trees(tmp_path_factory):
    """kt trees of 8 hand-made jets of massless particles, with root pT 100 x 1.6^k GeV
    (far enough apart that a root's code moved by log(1.1) is still nearest to it)."""
    rng = np.random.default_rng(11)
    jets = []
    for k in range(N_JETS):
        p = random_particles(rng, 6 + 2 * k, spread=0.3)
        p *= 100.0 * 1.6**k / np.hypot(p[:, 0].sum(), p[:, 1].sum())
        jets.append(p)
    table, _ = recluster_chunk(make_jets(jets), ReclusterConfig())
    path = tmp_path_factory.mktemp("hand_trees") / "hand.parquet"
    pq.write_table(table, path)
    return path


def exact_tokenizer(trees, root_log_shift: float = 0.0) -> Tokenizer:
    """A tokenizer with one code per split child holding that child's exact (standardized)
    features, and a root grid holding every jet's pT and mass; the encoder and decoder MLPs
    are the identity (their last layer starts at zero). The root grid's values can be moved
    by ``root_log_shift`` (log pT and log mass alike)."""
    a = F.node_arrays(trees)
    a["p"] = F.summed_nodes(a)
    child = a["parent"] >= 0
    f = F.split_features(a["p"][child], F.split_parents(a)[child])
    cfg = TokenizerConfig(n_codes=len(f), hidden=8, n_layers=1)
    std = F.Standardizer.fit(f, cfg.feature_weights)
    model = Tokenizer.build_model(cfg)
    model.set_codebook(torch.as_tensor(std.forward(f), dtype=torch.float32), cfg.batch_size)
    pt, _, _, m = pt_y_phi_m(a["p"][~child])
    grid = RootQuantizer(
        np.sort(np.log(pt)) + root_log_shift, np.sort(np.log(m + MASS_EPS)) + root_log_shift
    )
    tok = Tokenizer(cfg, std, model, root=grid)
    # every child is encoded to its own code, every root to its own grid point
    codes = tok.vocab.code(tok.encode_trees(trees))
    assert np.array_equal(codes[child], np.arange(len(f)))
    assert len(set(codes[~child].tolist())) == len(pt)
    return tok


def pt_and_mass(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pT and invariant mass of (n, 4) px, py, pz, E rows."""
    return np.hypot(p[:, 0], p[:, 1]), np.sqrt(
        np.maximum(p[:, 3] ** 2 - (p[:, :3] ** 2).sum(axis=1), 0.0)
    )


def true_masses(trees) -> np.ndarray:
    a = F.node_arrays(trees)
    return pt_and_mass(a["p"][a["parent"] < 0])[1]


def test_exact_codes_rebuild_the_true_jets(hand_trees):
    trees = load(hand_trees)
    assert len(trees) == N_JETS
    tok = exact_tokenizer(trees)
    rebuilt = closure.rebuilt_trees(tok, trees)
    assert np.array_equal(
        ak.to_numpy(rebuilt["n_constituents"]), [6 + 2 * k for k in range(N_JETS)]
    )
    # in the jet frame: same masses and pT, node by node the same tree shape
    a, b = F.node_arrays(trees), F.node_arrays(rebuilt)
    assert np.array_equal(a["parent"], b["parent"]) and np.array_equal(a["is_leaf"], b["is_leaf"])
    (pt_a, m_a), (pt_b, m_b) = pt_and_mass(a["p"]), pt_and_mass(b["p"])
    # float32 rounding: stored "massless" particles of a few hundred GeV carry masses up
    # to ~0.1 GeV (E and p rounded apart), which the tokenizer sets back to 0
    assert np.allclose(pt_b, pt_a, rtol=1e-4)
    assert np.allclose(m_b, m_a, rtol=1e-4, atol=0.2)

    result = closure.tokenizer_closure(tok, [hand_trees])
    assert result["n_jets"] == N_JETS
    obs = result["observables"]
    mass = true_masses(trees)
    assert obs["mass"]["w1"] == pytest.approx(0.0, abs=1e-4 * mass.mean())
    assert obs["mass"]["paired_abs_diff_median"] == pytest.approx(0.0, abs=1e-4 * mass.mean())
    for name in ("tau21", "tau32", "d2", "zg", "rg"):
        assert obs[name]["w1"] == pytest.approx(0.0, abs=1e-4), name
        assert obs[name]["paired_abs_diff_median"] == pytest.approx(0.0, abs=1e-4), name
    for name in ("multiplicity", "tree_depth"):
        assert obs[name]["w1"] == 0 and obs[name]["paired_abs_diff_median"] == 0, name
    assert obs["mass"]["evaluate_w1_floor"] > 0  # a scale, not subtracted


def test_root_pt_codes_scaled_by_a_tenth_scale_the_rebuilt_jets(hand_trees):
    trees = load(hand_trees)
    tok = exact_tokenizer(trees, root_log_shift=math.log(SCALE))
    result = closure.tokenizer_closure(tok, [hand_trees])
    obs = result["observables"]
    mass = true_masses(trees)
    assert np.all(np.diff(np.sort(mass)) > 0.5), "distinct masses: the pairing matters"
    # W1 = 0.1 mean(m): the rebuilt masses are the true ones times 1.1
    assert obs["mass"]["w1"] == pytest.approx((SCALE - 1) * mass.mean(), rel=1e-3)
    assert obs["mass"]["paired_diff_median"] == pytest.approx(
        (SCALE - 1) * np.median(mass), rel=1e-3
    )
    assert obs["mass"]["paired_abs_diff_median"] == pytest.approx(
        (SCALE - 1) * np.median(mass), rel=1e-3
    )
    for name in SCALE_FREE:
        assert obs[name]["w1"] == pytest.approx(0.0, abs=1e-4), name
    # the same through rebuilt_trees: every node's pT is 1.1x the true one
    rebuilt = closure.rebuilt_trees(tok, trees)
    pt_true = pt_and_mass(F.node_arrays(trees)["p"])[0]
    pt_rebuilt = pt_and_mass(F.node_arrays(rebuilt)["p"])[0]
    assert np.allclose(pt_rebuilt, SCALE * pt_true, rtol=1e-5)
