"""Evaluation: metrics behave as distances with floors; N-subjettiness on hand-built prongs."""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_jets

from jetevo.cli import main
from jetevo.errors import InputError
from jetevo.evaluate import binned_kl, compare, evaluate, observables
from jetevo.trees.format import load
from jetevo.trees.recluster import ReclusterConfig, recluster_chunk


def test_metrics_self_zero_and_growing_with_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(100, 10, 4000)
    same = compare(ref, ref, 5, np.random.default_rng(1))
    assert same["w1"] < 1.0 and same["kl"] < 0.02
    assert same["w1"] == pytest.approx(same["w1_floor"], rel=0.6)
    w1, kl = [], []
    for shift in (0.0, 2.0, 5.0, 10.0):
        m = compare(rng.normal(100 + shift, 10, 2000), ref, 5, np.random.default_rng(1))
        w1.append(m["w1"])
        kl.append(m["kl"])
    assert np.all(np.diff(w1) > 0) and np.all(np.diff(kl) > 0)
    assert w1[-1] == pytest.approx(10.0, rel=0.15)
    # KL on unequal-width bins: identical distributions give 0, nothing infinite with empty bins
    edges = np.array([-1.0, 0.0, 0.1, 5.0])
    assert binned_kl(np.zeros(10), np.zeros(10), edges) == pytest.approx(0.0)
    assert np.isfinite(binned_kl(np.full(10, 10.0), np.zeros(10), edges))


def _prong_jet(rng, n_prongs: int, n_per: int = 12) -> np.ndarray:
    """Particles tightly around n well-separated axes of equal pT (massless)."""
    centers = [(0.0, 0.0), (0.4, 0.0), (0.0, 0.4)][:n_prongs]
    out = []
    for eta0, phi0 in centers:
        pt = rng.uniform(20, 30, n_per)
        eta, phi = eta0 + rng.normal(0, 0.01, n_per), phi0 + rng.normal(0, 0.01, n_per)
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        out.append(np.stack([px, py, pz, np.sqrt(px**2 + py**2 + pz**2)], 1))
    return np.concatenate(out)


def test_nsubjettiness_on_prongs():
    rng = np.random.default_rng(3)
    jets = [_prong_jet(rng, n) for n in (1, 2, 3) for _ in range(4)]
    table, _ = recluster_chunk(make_jets(jets), ReclusterConfig())
    obs, lund, parts = observables(ak.from_arrow(table))
    one, two, three = (slice(4 * i, 4 * i + 4) for i in range(3))
    # tau21 small only when there are 2+ prongs, tau32 small only with 3 prongs
    assert np.all(obs["tau21"][two] < 0.2) and np.all(obs["tau21"][one] > 0.5)
    assert np.all(obs["tau32"][three] < 0.2) and np.all(obs["tau32"][two] > 0.5)
    assert np.all(obs["multiplicity"] == np.repeat([12, 24, 36], 4))
    # two equal prongs 0.4 apart: soft drop finds z ~ 0.5 at R ~ 0.4
    assert np.allclose(obs["rg"][two], 0.4, atol=0.05) and np.all(obs["zg"][two] > 0.35)
    assert len(lund) == int(obs["n_primary"].sum())
    assert len(parts["particle_pt"]) == int(obs["multiplicity"].sum())
    assert np.allclose(parts["particle_mass"], 0.0, atol=1e-2)  # massless inputs


def test_evaluate_end_to_end_and_errors(tree_dir, tmp_path, capsys):
    files = sorted(tree_dir.glob("*.parquet"))
    out = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                "--generated",
                str(files[0]),
                "--reference",
                str(tree_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "metrics.json").read_text())
    # reclustered trees are their particles' kt history; the folder has no generate summary
    assert result["kt_self_consistency"] == {"generated": 1.0, "reference": 1.0}
    assert result["generation"] is None
    assert result["particles"]["reference"]["spacelike_fraction"] == 0.0
    for name in (
        "mass",
        "tau21",
        "tau32",
        "multiplicity",
        "d2",
        "zg",
        "n_primary",
        "particle_mass",
    ):
        m = result["observables"][name]
        for key in ("w1", "w1_std", "kl", "kl_std", "w1_floor", "kl_floor"):
            assert np.isfinite(m[key]), (name, key)
    assert (out / "lund_plane.png").exists() and (out / "hist_mass.png").exists()
    assert "W1 floor" in capsys.readouterr().out
    # a sample against itself is at the floor
    same = evaluate(tree_dir, tree_dir, tmp_path / "same", plots=False)
    assert same["observables"]["mass"]["w1"] < 3 * same["observables"]["mass"]["w1_floor"] + 1e-9

    empty = tmp_path / "empty.trees.parquet"
    trees = load(files[0])
    table = pq.read_table(files[0])
    pq.write_table(table.slice(0, 0), empty)
    with pytest.raises(InputError, match="no jets"):
        evaluate(empty, tree_dir, tmp_path / "x", plots=False)
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "junk.parquet")

    def run(generated) -> int:
        args = ["--generated", str(generated), "--reference", str(tree_dir)]
        return main(["evaluate", *args, "--out", str(tmp_path / "y")])

    assert run(tmp_path / "junk.parquet") == 2
    assert "junk.parquet" in capsys.readouterr().err
    assert run(tmp_path / "nothing") == 2
    # known sizes (conftest's sim_dir): the generated file is the 40 simulated AOJ jets, the
    # reference all 40 + 30 + 40 jets, and the file made empty really holds none
    assert files[0].name == "RunG_batch0.trees.parquet" and len(trees) == 40
    assert set(trees.label.tolist()) == {"unlabeled"}
    assert (result["n_generated"], result["n_reference"]) == (40, 110)
    assert (same["n_generated"], same["n_reference"]) == (110, 110)
    assert len(load(empty)) == 0


def test_tokenizer_closure_rebuilds_valid_e_scheme_trees(tiny_tokenizer, tree_dir):
    """Rebuilt trees keep the true structure and add up at every split."""
    from jetevo.evaluate.closure import rebuilt_trees
    from jetevo.trees.format import load, validate

    trees = load(tree_dir)[:20]
    rebuilt = rebuilt_trees(tiny_tokenizer, trees)
    assert ak.all(ak.num(rebuilt["left"]) == ak.num(trees["left"]))
    assert ak.all(ak.max(rebuilt["depth"], axis=1) == ak.max(trees["depth"], axis=1))
    validate(rebuilt, scheme="E", rtol=1e-6)


def test_split_table_known_answer():
    """One jet: a root splitting at opening 0.4 into a particle (pT 30) and a pseudojet
    (pT 70) that splits at opening 0.1 into 40 + 30: z 0.3 and 30/70, openings 0.4 and
    0.1, the second narrower than its parent."""
    from jetevo.evaluate.closure import split_closure, split_table
    from jetevo.kinematics import four_momentum

    a = four_momentum(np.array([40.0, 30.0, 30.0]), np.array([0.05, -0.05, -0.3]),
                      np.zeros(3), np.zeros(3))  # fmt: skip
    inner = a[0] + a[1]
    nodes = np.stack([inner + a[2], a[2], inner, a[0], a[1]])
    trees = ak.Array({
        **{k: [nodes[:, i].tolist()] for i, k in enumerate(("px", "py", "pz", "E"))},
        "left": [[1, -1, 3, -1, -1]], "right": [[2, -1, 4, -1, -1]],
        "parent": [[-1, 0, 0, 2, 2]], "depth": [[0, 1, 1, 2, 2]],
    })  # fmt: skip
    s = split_table(trees)
    assert np.array_equal(s["depth"], [0, 1])
    assert np.allclose(s["z"], [0.3, 30 / 70], atol=2e-3)  # pT of a sum: close to 70
    assert np.allclose(s["opening"][1], 0.1) and s["opening"][0] > 0.3
    assert list(s["wider"]) == [False, False]
    c = split_closure(s, s)
    assert c["collinear_fraction"] == {"true": 0.0, "rebuilt": 0.0}
    assert c["per_depth"][1]["true"]["wider_fraction"] == 0.0


REAL_AOJ = Path(__file__).parent / "data" / "2016H_job0_mini.h5"


@pytest.fixture(scope="module")
def real_trees(tmp_path_factory):
    """kt trees of 100 real CMS 2016 jets (AspenOpenJets layout, tests/data/README.md)."""
    from jetevo.trees.run import recluster_files

    out = tmp_path_factory.mktemp("real_trees")
    recluster_files([REAL_AOJ], out, progress=False)
    return load(out)


def _naive_ca_primary(p: np.ndarray) -> list[tuple[float, float, float]]:
    """Cambridge/Aachen by hand (merge the closest pair in rapidity-azimuth, E scheme),
    then the primary declusterings along the harder branch: (z, Δ, kt, mass of the node
    being declustered) each."""

    def rap_phi(q):  # FastJet's rapidity: m² clamped at 0 (float32 inputs round below it)
        pt2 = q[:, 0] ** 2 + q[:, 1] ** 2
        m2 = np.maximum(q[:, 3] ** 2 - pt2 - q[:, 2] ** 2, 0.0)
        y = -0.5 * np.log((pt2 + m2) / (q[:, 3] + np.abs(q[:, 2])) ** 2) * np.sign(q[:, 2])
        return y, np.arctan2(q[:, 1], q[:, 0])

    nodes = [(q, None, None) for q in p]
    alive = list(range(len(p)))
    while len(alive) > 1:
        q = np.array([nodes[i][0] for i in alive])
        y, phi = rap_phi(q)
        dphi = np.abs(phi[:, None] - phi[None, :])
        dphi = np.minimum(dphi, 2 * np.pi - dphi)
        d2 = (y[:, None] - y[None, :]) ** 2 + dphi**2
        np.fill_diagonal(d2, np.inf)
        a, b = np.unravel_index(np.argmin(d2), d2.shape)
        i, j = alive[a], alive[b]
        nodes.append((nodes[i][0] + nodes[j][0], i, j))
        alive = [k for k in alive if k not in (i, j)] + [len(nodes) - 1]
    out, node = [], alive[0]
    while nodes[node][1] is not None:
        i, j = nodes[node][1], nodes[node][2]
        pair = np.array([nodes[i][0], nodes[j][0]])
        pt = np.hypot(pair[:, 0], pair[:, 1])
        y, phi = rap_phi(pair)
        dphi = abs(phi[0] - phi[1])
        delta = np.hypot(y[0] - y[1], min(dphi, 2 * np.pi - dphi))
        soft = int(np.argmin(pt))
        q = nodes[node][0]
        mass = np.sqrt(max(q[3] ** 2 - (q[:3] ** 2).sum(), 0.0))
        out.append((pt[soft] / pt.sum(), delta, pt[soft] * delta, mass))
        node = (i, j)[1 - soft]
    return out


def test_ca_soft_drop_and_lund_agree_with_a_hand_declustering_of_real_jets(real_trees):
    """C/A soft drop and the primary Lund plane, as evaluate computes them through fjcontrib,
    equal an independent by-hand C/A declustering of the same real particles."""
    trees = real_trees[:25]
    obs, lund, _ = observables(trees)
    for j in range(len(trees)):
        leaf = ak.to_numpy(trees["left"][j]) < 0
        p = np.stack(
            [ak.to_numpy(trees[k][j])[leaf].astype(np.float64) for k in ("px", "py", "pz", "E")], 1
        )
        primary = _naive_ca_primary(p)
        assert obs["n_primary"][j] == len(primary)
        mine = lund[lund[:, 0] == j][:, 1:]
        ref = np.array([(np.log(1 / d), np.log(kt)) for _, d, kt, _ in primary if d > 0 and kt > 0])
        assert np.allclose(mine, ref, rtol=1e-6, atol=1e-6)
        passing = [(z, d, m) for z, d, _, m in primary if z > 0.1]
        if passing:
            assert obs["zg"][j] == pytest.approx(passing[0][0], rel=1e-6)
            assert obs["rg"][j] == pytest.approx(passing[0][1], rel=1e-6)
            assert obs["mass_sd"][j] == pytest.approx(passing[0][2], rel=1e-5)
        else:
            assert np.isnan(obs["zg"][j]) and np.isnan(obs["rg"][j])
    assert np.isfinite(obs["zg"]).mean() > 0.8


def _caterpillar(trees: ak.Array) -> ak.Array:
    """The same particles in another full binary tree: each split peels off one particle."""
    out = {k: [] for k in ("px", "py", "pz", "E", "left", "right", "parent", "depth")}
    for j in range(len(trees)):
        leaf = ak.to_numpy(trees["left"][j]) < 0
        p = np.stack([ak.to_numpy(trees[k][j])[leaf] for k in ("px", "py", "pz", "E")], 1)
        p = p[np.random.default_rng(j).permutation(len(p))].astype(np.float64)
        n = len(p)
        rows, left, right, parent, depth = [], [], [], [], []
        for k in range(n):  # internal node 2k holds particles k..n-1; 2k+1 is particle k
            if k < n - 1:
                rows += [p[k:].sum(0), p[k]]
                left += [2 * k + 1, -1]
                right += [2 * k + 2, -1]
                parent += [2 * k - 2 if k else -1, 2 * k]
                depth += [k, k + 1]
            else:
                rows.append(p[k])
                left.append(-1), right.append(-1), parent.append(2 * k - 2 if k else -1)
                depth.append(k)
        rows = np.array(rows)
        for i, key in enumerate(("px", "py", "pz", "E")):
            out[key].append(rows[:, i])
        for key, v in (("left", left), ("right", right), ("parent", parent), ("depth", depth)):
            out[key].append(np.array(v))
    return ak.Array(out)


def test_observables_depend_on_the_particles_only(real_trees):
    """Replacing a jet's tree by any other tree over the same particles changes no physics
    observable (only the tree diagnostics, and the kt self-consistency)."""
    from jetevo.evaluate.observables import JET_OBSERVABLES

    trees = real_trees[:30]
    other = _caterpillar(trees)
    a, lund_a, parts_a = observables(trees, self_consistency=True)
    b, lund_b, parts_b = observables(other, self_consistency=True)
    for name in JET_OBSERVABLES:
        assert np.allclose(a[name], b[name], rtol=1e-9, atol=1e-12, equal_nan=True), name
    assert np.allclose(lund_a, lund_b, rtol=1e-9)
    assert np.allclose(np.sort(parts_a["particle_pt"]), np.sort(parts_b["particle_pt"]))
    assert not np.array_equal(a["tree_depth"], b["tree_depth"])
    assert np.all(a["kt_self_consistent"] == 1.0)
    # the caterpillar's clusters are not the kt history: only the whole jet (and the last
    # pair, by chance) is a kt cluster too
    many = a["multiplicity"] > 3
    assert (
        np.all(b["kt_self_consistent"][many] < 1) and np.mean(b["kt_self_consistent"][many]) < 0.3
    )


def test_massless_option_and_particle_sanity(real_trees, tmp_path):
    """Real charged hadrons carry the pion mass: --massless takes it away in both samples;
    a spacelike particle is counted."""
    from jetevo.evaluate.observables import particle_arrays, particles

    parts = particle_arrays(particles(real_trees))
    assert 0.05 < parts["particle_mass"].mean() < 0.15
    massless = particle_arrays(particles(real_trees, massless=True))
    assert np.allclose(massless["particle_mass"], 0.0, atol=1e-3)
    a, _, _ = observables(real_trees)
    b, _, _ = observables(real_trees, massless=True)
    assert np.all(b["mass"] <= a["mass"] + 1e-6) and np.mean(b["mass"] < a["mass"]) > 0.9
    bad = ak.Array({k: real_trees[k] for k in ("px", "py", "pz", "E", "left", "right", "depth")})
    e = ak.to_numpy(ak.flatten(bad["E"])).copy()
    leaf = ak.to_numpy(ak.flatten(bad["left"])) < 0
    first_leaf = np.flatnonzero(leaf)[0]
    e[first_leaf] *= 0.5  # |p| > E: spacelike
    bad = ak.with_field(bad, ak.unflatten(e, ak.num(bad["E"])), "E")
    sane = particle_arrays(particles(bad))
    assert np.sum(sane["m2_over_e2"] < -1e-6) == 1 and sane["particle_mass"].min() < 0


def test_runaways_of_the_generation_run_reach_metrics_json(real_trees, tree_dir, tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    table = pq.read_table(sorted(tree_dir.glob("*.parquet"))[0])
    meta = {**json.loads(table.schema.metadata[b"jetevo"]), "algorithm": "generated"}
    pq.write_table(table.replace_schema_metadata({"jetevo": json.dumps(meta)}), gen / "g.parquet")
    (gen / "summary.json").write_text(json.dumps({"attempted": 50, "runaway": 7, "n_written": 40}))
    result = evaluate(gen, tree_dir, tmp_path / "ev", plots=False)
    assert result["generation"]["runaway_fraction"] == pytest.approx(7 / 50)
    on_disk = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert on_disk["generation"]["runaway"] == 7
    (gen / "summary.json").write_text("[1, 2]")
    with pytest.raises(InputError, match=r"summary\.json"):
        evaluate(gen, tree_dir, tmp_path / "ev2", plots=False)
