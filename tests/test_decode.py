"""Decoding token trees into four-momenta (:mod:`jetevo.tokenize.decode`)."""

from __future__ import annotations

import numpy as np
import pytest

from jetevo.kinematics import pt_y_phi_m
from jetevo.tokenize.decode import PARTICLE_MASSES, decode_physical
from jetevo.trees.format import Topology


def test_two_body_split_conserves_and_keeps_decoded_pairs():
    """Children rebuilt as a two-body decay add up to the parent exactly, come back
    unchanged when the decoded pair already adds up, keep fixed (particle) masses, and share
    a parent's extra mass between opening and pseudojet masses."""
    from jetevo.kinematics import four_momentum, pt_y_phi_m
    from jetevo.tokenize.decode import MASS_SHARE, two_body_split

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


@pytest.mark.parametrize("particle_mass", ["pion", "massless"])
def test_physical_decoding_of_random_token_trees(tiny_tokenizer, particle_mass):
    """Any token tree decodes into physical particles: four-momentum conserved at every
    split, no spacelike node, every particle at the requested mass."""
    tokens, trees = _random_token_trees(tiny_tokenizer, 200, seed=1)
    p = decode_physical(tiny_tokenizer, tokens, trees, "two-body", particle_mass)
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
