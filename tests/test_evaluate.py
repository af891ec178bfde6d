"""Evaluation: metrics behave as distances with floors; N-subjettiness on hand-built prongs."""

from __future__ import annotations

import json

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
    obs, lund = observables(ak.from_arrow(table))
    one, two, three = (slice(4 * i, 4 * i + 4) for i in range(3))
    # tau21 small only when there are 2+ prongs, tau32 small only with 3 prongs
    assert np.all(obs["tau21"][two] < 0.2) and np.all(obs["tau21"][one] > 0.5)
    assert np.all(obs["tau32"][three] < 0.2) and np.all(obs["tau32"][two] > 0.5)
    assert np.all(obs["multiplicity"] == np.repeat([12, 24, 36], 4))
    assert np.all(obs["n_internal"] == obs["multiplicity"] - 1)
    # two equal prongs 0.4 apart: soft drop finds z ~ 0.5 at R ~ 0.4
    assert np.allclose(obs["rg"][two], 0.4, atol=0.05) and np.all(obs["zg"][two] > 0.35)
    assert len(lund) == int(obs["n_primary"].sum())


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
    for name in ("mass", "tau21", "tau32", "multiplicity", "d2", "zg", "n_primary"):
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
    assert len(trees) > 0


def test_tokenizer_closure_rebuilds_valid_e_scheme_trees(tiny_tokenizer, tree_dir):
    """Rebuilt trees keep the true structure and add up at every split, for both ways of
    making a decoded pair add up to its parent; the two differ."""
    from jetevo import cli
    from jetevo.evaluate.closure import rebuilt_trees
    from jetevo.generate.assemble import SPLIT_KINEMATICS
    from jetevo.trees.format import load, validate

    assert cli.SPLIT_KINEMATICS == SPLIT_KINEMATICS
    trees = load(tree_dir)[:20]
    rebuilt = {k: rebuilt_trees(tiny_tokenizer, trees, k) for k in SPLIT_KINEMATICS}
    for r in rebuilt.values():
        assert ak.all(ak.num(r["left"]) == ak.num(trees["left"]))
        assert ak.all(ak.max(r["depth"], axis=1) == ak.max(trees["depth"], axis=1))
        validate(r, scheme="E")
    assert not np.allclose(
        ak.to_numpy(ak.flatten(rebuilt["share"]["px"])),
        ak.to_numpy(ak.flatten(rebuilt["two-body"]["px"])),
    )


def test_closure_of_a_perfect_rebuild_is_zero(tiny_tokenizer, tree_dir, monkeypatch):
    """Closure compares the rebuilt jets with the same true jets: a perfect rebuild gives W1
    0 and no shift, while evaluate's resampled W1 would report noise (and the floor is only
    a scale). A real tokenizer gives a positive distance."""
    from jetevo.evaluate import closure
    from jetevo.trees.format import load

    files = sorted(tree_dir.glob("*.parquet"))[:1]
    real = closure.tokenizer_closure(tiny_tokenizer, files)["observables"]
    assert real["mass"]["w1"] > 0 and real["mass"]["evaluate_w1_floor"] > 0
    monkeypatch.setattr(closure, "rebuilt_trees", lambda tok, trees, kin: trees)
    perfect = closure.tokenizer_closure(tiny_tokenizer, files)["observables"]
    for name in ("mass", "tau21", "tau32", "d2", "multiplicity"):
        assert perfect[name]["w1"] == 0 and perfect[name]["paired_abs_diff_median"] == 0
    assert perfect["mass"]["evaluate_w1_floor"] == real["mass"]["evaluate_w1_floor"]
    assert len(load(files)) > 4
