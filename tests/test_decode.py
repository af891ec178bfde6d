"""Decoding token trees into four-momenta (:mod:`jetevo.tokenize.decode`)."""

from __future__ import annotations

import awkward as ak
import numpy as np

from jetevo.kinematics import four_momentum, pt_y_phi_m
from jetevo.tokenize import features as F
from jetevo.tokenize.decode import decode_tree
from jetevo.tokenize.root import MASS_EPS as ROOT_MASS_EPS
from jetevo.tokenize.root import RootQuantizer
from jetevo.trees.format import Topology


def _random_token_trees(tokenizer, n_jets, seed):
    """Random full binary trees with random tokens (leaf flags matching the structure)."""
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
    tok, par, dep, lft, rgt = (
        np.concatenate(x).astype(np.int64) for x in (tok, par, dep, lft, rgt)
    )
    return tok, Topology(lft, rgt, par, dep, offsets)


def test_exact_decoding_of_random_token_trees(tiny_tokenizer):
    """Any token tree decodes into physical nodes with no repair: four-momentum conserved
    at every split (to float64 rounding), no spacelike node, positive energies; and the
    decoding module has no repair path left."""
    import jetevo.tokenize.decode as decode_module

    tokens, trees = _random_token_trees(tiny_tokenizer, 200, seed=1)
    p = decode_tree(tiny_tokenizer, tokens, trees)
    first = np.repeat(trees.offsets[:-1], np.diff(trees.offsets))
    internal = np.flatnonzero(trees.left >= 0)
    kids = p[first[internal] + trees.left[internal]] + p[first[internal] + trees.right[internal]]
    assert np.all(np.abs(kids - p[internal]) <= 1e-12 * np.abs(p[internal, 3:4]))
    m2 = p[:, 3] ** 2 - (p[:, :3] ** 2).sum(1)
    assert np.all(m2 >= -1e-12 * p[:, 3] ** 2) and np.all(p[:, 3] > 0)
    # the particles add up to the root exactly
    jet = np.repeat(np.arange(len(trees.offsets) - 1), np.diff(trees.offsets))
    leaf = trees.left < 0
    sums = np.zeros((len(trees.offsets) - 1, 4))
    np.add.at(sums, jet[leaf], p[leaf])
    roots = p[trees.offsets[:-1]]
    assert np.allclose(sums, roots, rtol=1e-10, atol=1e-9)
    for repair in ("two_body_split", "decode_free", "decode_physical", "MASS_SHARE"):
        assert not hasattr(decode_module, repair)


def test_split_features_are_the_exact_inverse_of_real_pairs():
    """Encoding a real pair relative to its sum and decoding it gives it back (float64),
    whichever child is called left; u of the two children adds up to 1."""
    rng = np.random.default_rng(4)
    n = 2000
    left = four_momentum(rng.uniform(1, 300, n), rng.normal(0, 0.3, n), rng.normal(0, 0.3, n),
                         rng.uniform(0.5, 20, n))  # fmt: skip
    right = four_momentum(rng.uniform(1, 300, n), rng.normal(0, 0.3, n), rng.normal(0, 0.3, n),
                          rng.uniform(0.5, 20, n))  # fmt: skip
    parent = left + right
    f_l, f_r = F.split_features(left, parent), F.split_features(right, parent)
    assert np.allclose(np.exp(f_l[:, 0]) + np.exp(f_r[:, 0]), 1.0, atol=1e-12)
    a, _ = F.decode_split(parent, f_l, f_r)
    assert np.allclose(a, left, rtol=0, atol=1e-8 * parent[:, 3:4].max())
    b2, a2 = F.decode_split(parent, f_r, f_l)
    assert np.allclose(a2, left, atol=1e-8 * parent[:, 3:4].max())
    assert np.allclose(b2, right, atol=1e-8 * parent[:, 3:4].max())


def test_split_decoding_known_answer():
    """A parent at rest of mass 10 decaying into two massless children along e1 (psi = 0,
    cos theta* = 0): back to back with 5 GeV each."""
    parent = np.array([[0.0, 0.0, 0.0, 10.0]])
    f = np.array([[np.log(0.5), 1.0, 0.0, np.log(F.XI_MIN) - np.log1p(-F.XI_MIN)]])
    f_other = f * [1, -1, 1, 1]
    a, b = F.decode_split(parent, f, f_other)
    assert np.allclose(a + b, parent)
    assert np.allclose(a[0, 3], 5.0) and np.allclose(np.linalg.norm(a[0, :3]), 5.0, rtol=1e-7)
    # psi = 0: along the direction of larger rapidity (z for a parent at rest)
    assert np.allclose(a[0, :3] / np.linalg.norm(a[0, :3]), [0.0, 0.0, 1.0])


def test_root_grid_known_answer():
    """A root grid whose values are a given set of jets' pT and masses gives those jets'
    pT and mass back exactly (float64), in the jet frame."""
    pts = np.array([450.0, 612.5, 980.0])
    masses = np.array([0.0, 12.0, 80.4, 172.5])
    grid = RootQuantizer(np.log(pts), np.log(masses + ROOT_MASS_EPS))
    jets_pt, jets_m = np.meshgrid(pts, masses, indexing="ij")
    rng = np.random.default_rng(0)
    eta, phi = rng.normal(0, 1, jets_pt.size), rng.uniform(-3, 3, jets_pt.size)
    p = four_momentum(jets_pt.ravel(), eta, phi, jets_m.ravel())
    back = grid.decode(grid.encode(p))
    pt_b, y_b, phi_b, m_b = pt_y_phi_m(back)
    assert np.allclose(pt_b, jets_pt.ravel(), rtol=1e-12)
    assert np.allclose(m_b, jets_m.ravel(), atol=1e-6)
    assert np.allclose(y_b, 0) and np.allclose(phi_b, 0)


def test_fitted_root_grid_resolution():
    """A grid fitted to 2000 jet masses between 20 and 250 GeV at K = 8192 (256 mass
    values) resolves held-out masses to well under 1 GeV."""
    rng = np.random.default_rng(1)

    def jets(n):
        return four_momentum(rng.uniform(500, 1000, n), np.zeros(n), np.zeros(n),
                             rng.uniform(20, 250, n))  # fmt: skip

    grid = RootQuantizer.fit(jets(2000), 8192)
    assert len(grid.log_pt) * len(grid.log_mass) == 8192
    held = jets(2000)
    err = np.abs(pt_y_phi_m(grid.decode(grid.encode(held)))[3] - pt_y_phi_m(held)[3])
    assert np.median(err) < 0.5


def test_exact_codebook_closure_is_the_identity(tree_dir):
    """A tokenizer whose codebook holds every node's own features and whose root grid holds
    every jet's pT and mass rebuilds the trees exactly: closure W1 is 0 on every particle
    observable and the split table is the truth's."""
    import torch

    from jetevo.evaluate.closure import COLUMNS, rebuilt_trees, split_table
    from jetevo.evaluate.observables import JET_OBSERVABLES, observables
    from jetevo.tokenize.tokenizer import Tokenizer, TokenizerConfig
    from jetevo.trees.format import load, tree_files

    trees = load(tree_files([tree_dir])[:1], columns=COLUMNS)[:20]
    a = F.node_arrays(trees)
    a["p"] = F.summed_nodes(a)
    ctx = F.split_parents(a)
    child = a["parent"] >= 0
    feats = F.split_features(a["p"][child], ctx[child])
    cfg = TokenizerConfig(n_codes=len(feats), hidden=4, n_layers=1)
    std = F.Standardizer(np.zeros(4), np.ones(4), np.ones(4))
    model = Tokenizer.build_model(cfg)
    model.set_codebook(torch.as_tensor(feats, dtype=torch.float64).float(), 1)
    roots = a["p"][~child]
    pt, _, _, m = pt_y_phi_m(roots)
    grid = RootQuantizer(np.sort(np.log(pt)), np.sort(np.log(m + ROOT_MASS_EPS)))
    tok = Tokenizer(cfg, std, model, root=grid)
    # float32 codebook: exact up to float32 rounding of the features
    tok._decoded_codes = feats  # the codebook's decoding, in float64
    tok._nearest_code = lambda z: np.arange(len(z))  # every node its own code
    rebuilt = rebuilt_trees(tok, trees)
    # the truth moved to the jet frame (as the rebuilt jets are), massless particles on both
    # sides (the tokenizer takes particles within float32 rounding of m = 0 as massless)
    _, y, phi, _ = pt_y_phi_m(roots)
    moved = {}
    n_per_jet = ak.to_numpy(ak.num(trees["px"], axis=1))
    rot = np.column_stack([np.cos(-phi), np.sin(-phi)]).repeat(n_per_jet, axis=0)
    px, py = (
        a["p"][:, 0] * rot[:, 0] - a["p"][:, 1] * rot[:, 1],
        a["p"][:, 0] * rot[:, 1] + a["p"][:, 1] * rot[:, 0],
    )
    dy = -np.repeat(y, n_per_jet)
    pz = a["p"][:, 2] * np.cosh(dy) + a["p"][:, 3] * np.sinh(dy)
    e = a["p"][:, 3] * np.cosh(dy) + a["p"][:, 2] * np.sinh(dy)
    for k, v in zip(("px", "py", "pz", "E"), (px, py, pz, e), strict=True):
        moved[k] = ak.unflatten(v, n_per_jet)
    true_frame = ak.zip({**{k: trees[k] for k in trees.fields}, **moved}, depth_limit=1)
    true_obs = observables(true_frame, "true", massless=True)[0]
    rebuilt_obs = observables(rebuilt, "rebuilt", massless=True)[0]
    for name in JET_OBSERVABLES:
        assert np.allclose(rebuilt_obs[name], true_obs[name], rtol=1e-4, atol=1e-4), name
    t, r = split_table(trees), split_table(rebuilt)
    assert np.allclose(np.sort(t["z"]), np.sort(r["z"]), atol=1e-5)
    assert np.allclose(np.sort(t["opening"]), np.sort(r["opening"]), atol=1e-5)
