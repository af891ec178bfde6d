"""Tree construction: format properties, agreement with FastJet, split policies."""

from __future__ import annotations

import awkward as ak
import fastjet
import numpy as np
import pyarrow as pa
import pytest
from conftest import make_jets, random_particles
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetevo.trees.format import triplets, validate
from jetevo.trees.recluster import ReclusterConfig, recluster_chunk


def to_trees(table: pa.Table) -> ak.Array:
    return ak.from_arrow(table)


def cluster(particles, **cfg):
    table, counts = recluster_chunk(make_jets(particles), ReclusterConfig(**cfg))
    return to_trees(table), counts


jet_sizes = st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=jet_sizes,
    seed=st.integers(0, 2**31 - 1),
    spread=st.sampled_from([0.05, 0.3, 0.8]),
    scheme=st.sampled_from(["E", "wta_pt"]),
)
def test_tree_properties_random_jets(sizes, seed, spread, scheme):
    rng = np.random.default_rng(seed)
    particles = [random_particles(rng, n, spread=spread, eta0=rng.uniform(-2, 2)) for n in sizes]
    trees, counts = cluster(particles, scheme=scheme)
    assert len(trees) == len(sizes) and counts["trees_written"] == len(sizes)
    # 2N-1 nodes, binary, pre-order, harder-first, leaves <-> constituents, scheme identity
    validate(trees, scheme=scheme)
    assert ak.to_list(trees.n_constituents) == sizes
    # every leaf holds exactly the input constituent it names (pT order)
    for j, p in enumerate(particles):
        order = np.argsort(-np.hypot(p[:, 0], p[:, 1]), kind="stable")
        leaf = np.asarray(trees.leaf_index[j])
        mask = leaf >= 0
        got = np.stack([np.asarray(trees[k][j])[mask] for k in ("px", "py", "pz", "E")], axis=1)
        assert np.allclose(got, p[order][leaf[mask]].astype(np.float32))


def test_tree_properties_simulated(sim_dir):
    from jetevo.io.readers import iter_jets

    for path in [
        *sorted((sim_dir / "jetclass").glob("*.root")),
        sim_dir / "aoj" / "RunG_batch0.h5",
    ]:
        jets = next(iter_jets(path))
        for scheme in ("E", "wta_pt"):
            table, counts = recluster_chunk(jets, ReclusterConfig(scheme=scheme))
            trees = to_trees(table)
            validate(trees, scheme=scheme)
            assert counts["trees_written"] == len(jets)
            assert ak.to_list(trees.entry) == ak.to_list(jets.entry)
            assert ak.all(trees.n_constituents == ak.num(jets.px))


def fastjet_tree(p: np.ndarray):
    """(four-momentum, children) nested tuples from FastJet's classic per-jet interface."""
    pjs = []
    for i, row in enumerate(p.astype(np.float64)):
        pj = fastjet.PseudoJet(*row)
        pj.set_user_index(i)
        pjs.append(pj)
    cs = fastjet.ClusterSequence(pjs, fastjet.JetDefinition(fastjet.kt_algorithm, 100.0))
    (jet,) = cs.inclusive_jets()

    def walk(pj):
        pieces = pj.pieces()
        p4 = (pj.px(), pj.py(), pj.pz(), pj.E())
        if len(pieces) == 0:
            return (p4, pj.user_index(), [])
        kids = sorted((walk(c) for c in pieces), key=lambda t: -np.hypot(t[0][0], t[0][1]))
        return (p4, -1, kids)

    return walk(jet), cs


def our_tree(trees: ak.Array, j: int, order: np.ndarray):
    t = trees[j]

    def walk(i):
        p4 = tuple(float(t[k][i]) for k in ("px", "py", "pz", "E"))
        if t.left[i] < 0:
            return (p4, int(order[t.leaf_index[i]]), [])
        return (p4, -1, [walk(int(t.left[i])), walk(int(t.right[i]))])

    return walk(0)


def assert_same_tree(a, b):
    assert np.allclose(a[0], b[0], rtol=1e-5, atol=1e-3)
    assert a[1] == b[1]
    assert len(a[2]) == len(b[2])
    for x, y in zip(a[2], b[2], strict=True):
        assert_same_tree(x, y)


def test_agrees_with_fastjet_classic_history():
    rng = np.random.default_rng(42)
    particles = [random_particles(rng, n, spread=0.3).astype(np.float32) for n in (1, 2, 3, 17, 40)]
    trees, _ = cluster(particles, precision="float64")
    for j, p in enumerate(particles):
        order = np.argsort(-np.hypot(p[:, 0], p[:, 1]), kind="stable")
        ref, _ = fastjet_tree(p)
        assert_same_tree(our_tree(trees, j, order), ref)


def n_inclusive(p: np.ndarray, R: float) -> int:
    pjs = [fastjet.PseudoJet(*row) for row in p.astype(np.float64)]
    cs = fastjet.ClusterSequence(pjs, fastjet.JetDefinition(fastjet.kt_algorithm, R))
    return len(cs.inclusive_jets())


def test_split_detection_matches_fastjet_inclusive_jets():
    rng = np.random.default_rng(7)
    particles = [random_particles(rng, int(rng.integers(2, 50)), spread=0.5) for _ in range(60)]
    particles = [p.astype(np.float32) for p in particles]
    _, counts = cluster(particles)
    expected = sum(n_inclusive(p, 0.8) > 1 for p in particles)
    assert 5 < expected < 60, "the sample must contain both split and unsplit jets"
    assert counts["split_jets"] == expected


@pytest.mark.parametrize("scheme", ["E", "wta_pt"])
def test_split_detection_per_jet_in_any_input_order(scheme):
    """The kernel's split flag is FastJet's answer jet by jet, also for constituents that are
    not pT-ordered (its softest-alive bookkeeping then sorts them itself)."""
    from jetevo.trees.recluster import cluster_flat

    rng = np.random.default_rng(11)
    particles = [random_particles(rng, int(rng.integers(2, 50)), spread=0.5) for _ in range(60)]
    shuffled = [p[rng.permutation(len(p))] for p in particles]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in shuffled])])
    flat = np.concatenate(shuffled).astype(np.float64)
    trees = cluster_flat(*flat.T, offsets, scheme, 0.8)
    scheme_fj = fastjet.E_scheme if scheme == "E" else fastjet.WTA_pt_scheme
    expected = [
        len(
            fastjet.ClusterSequence(
                [fastjet.PseudoJet(*row) for row in p],
                fastjet.JetDefinition(fastjet.kt_algorithm, 0.8, scheme_fj),
            ).inclusive_jets()
        )
        > 1
        for p in np.split(flat, offsets[1:-1])
    ]
    assert 5 < sum(expected) < 60
    assert list(trees["split"]) == expected


def test_on_split_policies_account_for_every_jet():
    rng = np.random.default_rng(8)
    particles = [
        random_particles(rng, int(rng.integers(2, 40)), spread=0.5).astype(np.float32)
        for _ in range(40)
    ]
    split = np.array([n_inclusive(p, 0.8) > 1 for p in particles])
    merged, c_merge = cluster(particles, on_split="merge")
    assert len(merged) == 40 and c_merge["split_jets"] == split.sum()
    dropped, c_drop = cluster(particles, on_split="drop")
    assert len(dropped) == 40 - split.sum() and c_drop["dropped_split"] == split.sum()
    assert ak.to_list(dropped.entry) == list(np.flatnonzero(~split))
    hardest, c_hard = cluster(particles, on_split="hardest")
    validate(hardest, scheme="E", subset_leaves=True)
    assert len(hardest) == 40 and ak.to_list(hardest.entry) == list(range(40))
    n_kept = ak.to_numpy(hardest.n_constituents)
    n_all = np.array([len(p) for p in particles])
    assert np.all(n_kept[~split] == n_all[~split]) and np.all(n_kept[split] < n_all[split])
    assert c_hard["hardest_lost_constituents"] == int((n_all - n_kept).sum())
    # the kept tree is exactly the hardest inclusive kt jet at R=0.8
    for j in np.flatnonzero(split):
        p = particles[j].astype(np.float64)
        cs = fastjet.ClusterSequence(
            [fastjet.PseudoJet(*r) for r in p], fastjet.JetDefinition(fastjet.kt_algorithm, 0.8)
        )
        hardest_jet = max(cs.inclusive_jets(), key=lambda x: x.pt())
        assert np.isclose(float(hardest.jet_pt[j]), hardest_jet.pt(), rtol=1e-5)
        assert len(hardest_jet.constituents()) == n_kept[j]


def test_triplets_view():
    rng = np.random.default_rng(1)
    particles = [random_particles(rng, n) for n in (1, 2, 5)]
    trees, _ = cluster(particles)
    trip = triplets(trees)
    assert ak.to_list(ak.num(trip)) == [0, 1, 4]
    for j in range(3):
        for parent, left, right in ak.to_list(trip[j]):
            assert trees.left[j][parent] == left and trees.right[j][parent] == right


def test_constituent_cap_truncates_and_counts():
    rng = np.random.default_rng(3)
    particles = [random_particles(rng, 50), random_particles(rng, 10)]
    trees, counts = cluster(particles, max_constituents=20)
    validate(trees, scheme="E")
    assert ak.to_list(trees.n_constituents) == [20, 10]
    assert counts["truncated_jets"] == 1 and counts["truncated_constituents"] == 30
    # the 20 kept are the hardest
    kept_pt = np.sort(
        np.hypot(
            *(np.asarray(trees[k][0])[np.asarray(trees.leaf_index[0]) >= 0] for k in ("px", "py"))
        )
    )
    top20 = np.sort(np.sort(np.hypot(particles[0][:, 0], particles[0][:, 1]))[-20:])
    assert np.allclose(kept_pt, top20, rtol=1e-5)


def test_bad_jets_are_skipped_and_counted():
    rng = np.random.default_rng(4)
    good = random_particles(rng, 5)
    nan = good.copy()
    nan[2, 1] = np.nan
    inf = good.copy()
    inf[0, 3] = np.inf
    neg = good.copy()
    neg[1, 3] = -1.0
    one = good[:1]
    trees, counts = cluster([good, np.zeros((0, 4)), nan, inf, neg, one])
    assert ak.to_list(trees.entry) == [0, 5]
    assert counts["skipped_no_constituents"] == 1
    assert counts["skipped_non_finite"] == 2
    assert counts["skipped_negative_energy"] == 1
    assert ak.to_list(ak.num(trees.left)) == [9, 1], "one constituent gives a one-node tree"
    assert trees.leaf_index[1][0] == 0 and trees.parent[1][0] == -1


@pytest.mark.parametrize("scheme", ["E", "wta_pt"])
def test_jet_columns_describe_the_root(scheme):
    rng = np.random.default_rng(5)
    trees, _ = cluster([random_particles(rng, 30)], scheme=scheme, precision="float64")
    root = [float(trees[k][0][0]) for k in ("px", "py", "pz", "E")]
    assert np.isclose(float(trees.jet_pt[0]), np.hypot(root[0], root[1]))
    m2 = root[3] ** 2 - root[0] ** 2 - root[1] ** 2 - root[2] ** 2
    assert np.isclose(float(trees.jet_mass[0]) ** 2, max(m2, 0), rtol=1e-6, atol=1e-6)
