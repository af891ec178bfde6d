"""``jetevo recluster`` end to end: outputs, summary, resume, atomicity, bad input."""

from __future__ import annotations

import json
import os

import awkward as ak
import h5py
import numpy as np
import pytest
import uproot

from jetevo.cli import main
from jetevo.trees import format as tree_format
from jetevo.trees import run as tree_run
from jetevo.trees.recluster import ReclusterConfig


def run_cli(*args) -> int:
    return main(["recluster", *map(str, args), "--quiet"])


def test_recluster_all_inputs(sim_dir, tmp_path, capsys):
    out = tmp_path / "trees"
    assert (
        run_cli(
            sim_dir / "jetclass", sim_dir / "aoj", "--out", out, "--workers", 2, "--shard-size", 16
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["jets_read"] == 110 == summary["trees_written"]
    assert summary["skipped"] == {
        "no_constituents": 0, "non_finite": 0, "negative_energy": 0, "only_beam_constituents": 0,
        "unphysical_constituent": 0,
    }  # fmt: skip
    files = sorted(p.name for p in out.glob("*.parquet"))
    assert len(files) == len(summary["outputs"]) and files[0] == "RunG_batch0.0000.trees.parquet"
    trees = tree_format.load(out)
    assert len(trees) == 110
    tree_format.validate(trees, scheme="E")
    assert set(ak.to_list(trees.label)) == {"Tbqq", "QCD", "unlabeled"}
    meta = tree_format.read_metadata(out / files[0])
    assert (
        meta["algorithm"] == "kt"
        and meta["R"] == 0.8
        and meta["scheme"] == "E"
        and meta["on_split"] == "merge"
    )
    # top jets: mass of the root near the top mass
    top = trees[trees.label == "Tbqq"]
    assert 140 < np.median(ak.to_numpy(top.jet_mass)) < 220
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["trees_written"] == 110


def test_resume_skips_complete_outputs(sim_dir, tmp_path, monkeypatch):
    out = tmp_path / "trees"
    src = sim_dir / "jetclass" / "ZJetsToNuNu_000.root"
    assert run_cli(src, "--out", out, "--shard-size", 25) == 0
    first = json.loads((out / "summary.json").read_text())
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")}

    def boom(*a, **k):
        raise AssertionError("a complete shard was reprocessed")

    monkeypatch.setattr(tree_run, "process_shard", boom)
    assert run_cli(src, "--out", out, "--shard-size", 25) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["resumed_shards"] == 2 and again["jets_read"] == first["jets_read"] == 40
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == mtimes


def test_pipelined_and_sequential_shards_are_identical(sim_dir, tmp_path):
    """The threaded pipeline writes the same rows, in the same order, as the plain loop."""
    import pyarrow.parquet as pq

    src = sim_dir / "jetclass" / "TTBar_000.root"
    n = tree_run.count_jets(src)
    tables, counts = [], []
    for pipeline in (True, False):
        shard = tree_run.Shard(src, 3, n, tmp_path / f"pipeline_{pipeline}.parquet")
        counts.append(tree_run.process_shard(shard, ReclusterConfig(), 7, pipeline=pipeline))
        tables.append(pq.read_table(shard.output))
    assert counts[0] == counts[1] and counts[0]["jets_read"] == n - 3
    assert tables[0].equals(tables[1]) and tables[0]["entry"].to_pylist() == list(range(3, n))


def test_error_in_a_worker_process_reaches_the_user_as_one_line(sim_dir, tmp_path, monkeypatch):
    """An InputError raised inside a worker process survives the trip back to the parent:
    every shard is reported with it in summary.json, none is written, and the run fails."""
    from jetevo.errors import InputError

    src = sim_dir / "jetclass" / "ZJetsToNuNu_000.root"

    def damaged(jets, cfg):
        raise InputError(src, "cannot read entries from 20 on (damaged basket)")

    monkeypatch.setattr(tree_run, "prepare_chunk", damaged)  # inherited by forked workers
    with pytest.raises(tree_run.ReclusterFailed, match="damaged basket"):
        tree_run.recluster_files(
            [src], tmp_path / "trees", workers=2, shard_size=20, progress=False
        )
    failed = json.loads((tmp_path / "trees" / "summary.json").read_text())["failed"]
    assert [f["jets"] for f in sorted(failed, key=lambda f: f["jets"])] == [[0, 20], [20, 40]]
    assert all(str(src) in f["reason"] for f in failed)
    assert not list((tmp_path / "trees").glob("*.parquet"))


def test_interrupted_run_leaves_no_partial_file(sim_dir, tmp_path, monkeypatch):
    out = tmp_path / "trees"
    calls = {"n": 0}
    real = tree_run.finish_chunk

    def flaky(chunk, cfg):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(chunk, cfg)

    monkeypatch.setattr(tree_run, "finish_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        tree_run.recluster_files(
            [sim_dir / "jetclass" / "ZJetsToNuNu_000.root"], out, chunk_size=10, progress=False
        )
    # no partial or temporary output; only the record of what the run was started with
    assert [p.name for p in out.iterdir()] == [tree_run.RUN_FILE]


def one_line_error(capsys, *args) -> str:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_file(tmp_path, capsys):
    err = one_line_error(capsys, tmp_path / "nope.root", "--out", tmp_path / "o")
    assert "nope.root" in err and "no such file" in err


def test_foreign_file(tmp_path, capsys):
    bad = tmp_path / "notes.root"
    bad.write_text("hello")
    err = one_line_error(capsys, bad, "--out", tmp_path / "o")
    assert "notes.root" in err and "neither a ROOT nor an HDF5" in err


def test_root_without_tree(tmp_path, capsys):
    path = tmp_path / "other.root"
    with uproot.recreate(path) as f:
        f.mktree("events", {"x": np.float32}).extend({"x": np.zeros(3, np.float32)})
    err = one_line_error(capsys, path, "--out", tmp_path / "o")
    assert "other.root" in err and "no TTree named 'tree'" in err


def test_root_missing_branch(tmp_path, capsys):
    path = tmp_path / "HToBB_000.root"
    with uproot.recreate(path) as f:
        part = ak.zip({"px": ak.Array([[1.0]]), "py": ak.Array([[1.0]]), "pz": ak.Array([[1.0]])})
        data = {
            "part": part,
            **{f"jet_{k}": np.ones(1, np.float32) for k in ("pt", "eta", "phi", "energy")},
        }
        f.mktree(
            "tree",
            {k: v.type.content if isinstance(v, ak.Array) else v.dtype for k, v in data.items()},
        ).extend(data)
    err = one_line_error(capsys, path, "--out", tmp_path / "o")
    assert "HToBB_000.root" in err and "part_energy" in err


def test_hdf5_missing_pfcands(tmp_path, capsys):
    path = tmp_path / "RunH_batch3.h5"
    with h5py.File(path, "w") as f:
        f["jet_kinematics"] = np.zeros((2, 4), np.float32)
    err = one_line_error(capsys, path, "--out", tmp_path / "o")
    assert "RunH_batch3.h5" in err and "PFCands" in err


def test_zero_jets(tmp_path, capsys):
    path = tmp_path / "RunG_batch9.h5"
    with h5py.File(path, "w") as f:
        f["PFCands"] = np.zeros((0, 150, 11), np.float32)
        f["jet_kinematics"] = np.zeros((0, 4), np.float32)
    err = one_line_error(capsys, path, "--out", tmp_path / "o")
    assert "RunG_batch9.h5" in err and "no jets" in err


def test_aoj_bad_jets_counted(tmp_path):
    from jetevo.io.writers import AOJ_MAX_CANDIDATES

    rng = np.random.default_rng(0)
    n = 6
    cands = np.zeros((n, AOJ_MAX_CANDIDATES, 11), np.float32)
    for j in range(n):
        k = 1 if j == 3 else 20
        pt = np.sort(rng.exponential(20, k))[::-1] + 1
        phi = rng.normal(0, 0.2, k)
        eta = rng.normal(0, 0.2, k)
        cands[j, :k, 0], cands[j, :k, 1], cands[j, :k, 2] = (
            pt * np.cos(phi),
            pt * np.sin(phi),
            pt * np.sinh(eta),
        )
        cands[j, :k, 3] = pt * np.cosh(eta)
    cands[1] = 0  # no constituents
    cands[2, 5, 0] = np.nan  # non-finite
    cands[4, 2, 3] = -5.0  # negative energy
    path = tmp_path / "RunG_batch1.h5"
    with h5py.File(path, "w") as f:
        f["PFCands"] = cands
        f["jet_kinematics"] = np.zeros((n, 4), np.float32)
    summary = tree_run.recluster_files([path], tmp_path / "o", progress=False)
    assert summary["jets_read"] == 6 and summary["trees_written"] == 3
    assert summary["skipped"] == {
        "no_constituents": 1, "non_finite": 1, "negative_energy": 1, "only_beam_constituents": 0,
        "unphysical_constituent": 0,
    }  # fmt: skip
    trees = tree_format.load(tmp_path / "o")
    assert ak.to_list(trees.entry) == [0, 3, 5] and ak.to_list(trees.n_constituents) == [20, 1, 20]


def test_unwritable_output(sim_dir, tmp_path, capsys):
    if os.geteuid() == 0:  # root writes anywhere on disk; /proc refuses even root
        err = one_line_error(capsys, sim_dir / "aoj", "--out", "/proc/jetevo-out")
        assert "/proc/jetevo-out" in err and "cannot create output directory" in err
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    err = one_line_error(capsys, sim_dir / "aoj", "--out", locked)
    assert "locked" in err and "not writable" in err


def test_output_path_is_a_file(sim_dir, tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    err = one_line_error(capsys, sim_dir / "aoj", "--out", target)
    assert "afile" in err


def test_cli_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, jetevo.cli, jetevo.trees.run, jetevo.io.simulate; print('torch' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )
