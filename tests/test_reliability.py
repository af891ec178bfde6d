"""Bad inputs and interrupted or repeated runs of ``recluster`` and ``generate``: every case
a one-line error or a counted skip, no jet lost or duplicated, no resume mixing two runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import awkward as ak
import h5py
import numpy as np
import pytest
from conftest import make_jets, random_particles

from jetevo.cli import main
from jetevo.errors import InputError
from jetevo.trees import format as tree_format
from jetevo.trees import run as tree_run
from jetevo.trees.recluster import ReclusterConfig, recluster_chunk

BEAM_PARTICLES = np.array(
    [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 10.0, 10.0], [1e-44, 0.0, 1.0, 1.0]], np.float32
)


def one_line(capsys, args) -> str:
    assert main([*map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def aoj_file(path, jets: list[np.ndarray]) -> None:
    """An AOJ-layout file (PFCands zero-padded to 150 x 11, jet_kinematics) of these jets."""
    from jetevo.io.writers import AOJ_MAX_CANDIDATES

    cands = np.zeros((len(jets), AOJ_MAX_CANDIDATES, 11), np.float32)
    for j, p in enumerate(jets):
        cands[j, : len(p), :4] = p
    with h5py.File(path, "w") as f:
        f["PFCands"] = cands
        f["jet_kinematics"] = np.zeros((len(jets), 4), np.float32)


def test_particles_along_the_beam_are_dropped_and_counted():
    """(0,0,0,0), (0,0,10,10) and px=1e-44 with pz=E=1 used to fail the whole chunk inside
    FastJet; they are dropped and counted, and a jet of nothing else is a counted skip."""
    rng = np.random.default_rng(1)
    good = random_particles(rng, 12)
    jets = make_jets([np.vstack([good[:5], BEAM_PARTICLES, good[5:]]), BEAM_PARTICLES[:2], good])
    table, counts = recluster_chunk(jets, ReclusterConfig())
    trees = ak.from_arrow(table)
    assert counts["beam_constituents"] == 3 and counts["skipped_only_beam_constituents"] == 1
    assert counts["trees_written"] == 2 and ak.to_list(trees.entry) == [0, 2]
    assert ak.to_list(trees.n_constituents) == [12, 12]
    tree_format.validate(trees, scheme="E")
    # the beam particles carry no momentum that the jet could miss: same tree as without them
    for k in ("px", "py", "pz", "E", "left", "right"):
        assert ak.to_list(trees[k][0]) == ak.to_list(trees[k][1])


def test_beam_particle_deep_in_a_file_costs_nothing_else(tmp_path):
    rng = np.random.default_rng(2)
    jets = [random_particles(rng, 8) for _ in range(30)]
    jets[17] = np.vstack([jets[17], BEAM_PARTICLES[1:2]])
    aoj_file(tmp_path / "RunG_batch0.h5", jets)
    s = tree_run.recluster_files([tmp_path / "RunG_batch0.h5"], tmp_path / "o", progress=False)
    assert s["trees_written"] == s["jets_read"] == 30 and s["beam_constituents_dropped"] == 1


@pytest.mark.parametrize(
    "change", [["--R", "0.4"], ["--on-split", "drop"], ["--max-constituents", "10"]]
)
def test_rerun_with_other_settings_is_refused(sim_dir, tmp_path, capsys, change):
    out = tmp_path / "trees"
    src = sim_dir / "aoj"
    assert main(["recluster", str(src), "--out", str(out), "--quiet"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    err = one_line(capsys, ["recluster", src, "--out", out, "--quiet", *change])
    assert str(out) in err and "other settings" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_rerun_with_another_shard_size_is_refused(sim_dir, tmp_path, capsys):
    out = tmp_path / "trees"
    src = sim_dir / "aoj"
    assert main(["recluster", str(src), "--out", str(out), "--quiet", "--shard-size", "20"]) == 0
    err = one_line(capsys, ["recluster", src, "--out", out, "--quiet", "--shard-size", "15"])
    assert "shard_size 20 -> 15" in err
    assert len(tree_format.load(out)) == 40  # the folder still holds exactly one run


def test_folder_with_tree_files_of_another_run_is_refused(sim_dir, tmp_path, capsys):
    out = tmp_path / "trees"
    out.mkdir()
    shutil.copy(next((sim_dir / "aoj").iterdir()), tmp_path / "RunH_batch7.h5")
    (out / "old.trees.parquet").write_bytes(b"x")
    err = one_line(capsys, ["recluster", tmp_path / "RunH_batch7.h5", "--out", out])
    assert "old.trees.parquet" in err


def test_inputs_found_by_content_and_read_once(sim_dir, tmp_path):
    """Upper-case and missing suffixes are inputs too; a file reached twice is read once."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(sim_dir / "jetclass" / "TTBar_000.root", src / "B_000.ROOT")
    shutil.copy(sim_dir / "aoj" / "RunG_batch0.h5", src / "RunG_batch0")
    (src / "notes.txt").write_text("not an input")
    os.symlink(src / "B_000.ROOT", tmp_path / "link.root")
    s = tree_run.recluster_files([src], tmp_path / "o", progress=False)
    assert s["jets_read"] == 70 and len(s["inputs"]) == 2
    again = [tmp_path / "link.root", src / "B_000.ROOT", src / "B_000.ROOT"]
    s2 = tree_run.recluster_files(again, tmp_path / "o2", progress=False)
    assert s2["jets_read"] == 30 and len(s2["inputs"]) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_a_damaged_file_fails_alone(sim_dir, tmp_path, capsys, workers):
    """With one worker or two: every good file is written, the damaged one is reported
    with its reason in summary.json, and the command exits 2 with one line."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(sim_dir / "aoj" / "RunG_batch0.h5", src / "RunG_batch0.h5")
    shutil.copy(sim_dir / "jetclass" / "ZJetsToNuNu_000.root", src / "ZJetsToNuNu_000.root")
    with h5py.File(src / "RunG_batch1.h5", "w") as f:  # an HDF5 file without PFCands
        f["jet_kinematics"] = np.zeros((3, 4), np.float32)
    out = tmp_path / "o"
    err = one_line(capsys, ["recluster", src, "--out", out, "--workers", workers, "--quiet"])
    assert "1 shard(s) or input(s) failed" in err and "RunG_batch1.h5" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trees_written"] == 80 and len(summary["failed"]) == 1
    assert "PFCands" in summary["failed"][0]["reason"]
    assert len(tree_format.load(out)) == 80


def test_temporary_files_of_killed_runs_are_removed(sim_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    dead = out / ".RunG_batch0.trees.parquet.999999999.tmp"  # no such process
    mine = out / f".other.trees.parquet.{os.getpid()}.tmp"  # a live process: kept
    from jetevo.io.atomic import temporary_name

    # this machine's own names carry its host; a dead process here is gone, but a process
    # on another node sharing the folder cannot be asked from here: its file is kept
    here = temporary_name(out / "RunG_batch1.trees.parquet")
    here_dead = here.with_name(here.name.replace(f"_{os.getpid()}.", "_999999999."))
    elsewhere = out / ".RunG_batch2.trees.parquet.node-17_999999999.tmp"
    for f in (dead, mine, here_dead, elsewhere):
        f.write_bytes(b"partial")
    tree_run.recluster_files([sim_dir / "aoj"], out, progress=False)
    assert not dead.exists() and mine.exists()
    assert not here_dead.exists() and elsewhere.exists()


def test_recluster_stdout_is_the_summary_line_only(sim_dir, tmp_path):
    """FastJet's banner (printed by C++ on stdout at the first clustering) goes to stderr."""
    r = subprocess.run(
        [sys.executable, "-m", "jetevo.cli", "recluster", str(sim_dir / "aoj"), "--out",
         str(tmp_path / "o"), "--quiet"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(r.stdout)["trees_written"] == 40


@pytest.mark.parametrize(
    "option", [["--top-k", "0"], ["--top-k", "-3"], ["--max-nodes", "0"], ["--max-nodes", "-4"]]
)
def test_generate_rejects_bad_limits(tmp_path, capsys, option):
    err = one_line(
        capsys,
        ["generate", "--ckpt", tmp_path / "m.ckpt", "--n-jets", 2, "--out", tmp_path, *option],
    )
    assert option[0] in err


def test_tree_files_of_two_precisions_do_not_load_together(sim_dir, tmp_path, capsys):
    a, b = tmp_path / "f32", tmp_path / "f64"
    tree_run.recluster_files([sim_dir / "aoj"], a, progress=False)
    tree_run.recluster_files(
        [sim_dir / "jetclass" / "TTBar_000.root"], b, ReclusterConfig(precision="float64"),
        progress=False,
    )  # fmt: skip
    with pytest.raises(InputError, match="types differ"):
        tree_format.load([a, b])


def test_tokenizer_eval_of_one_node_jets(tiny_tokenizer, tmp_path, capsys):
    """Jets of one particle have no internal nodes: the report says so instead of failing."""
    from jetevo.trees.writer import write_table

    jets = make_jets([np.array([[10.0 * (1 + i), 1.0, 2.0, 11.0 * (1 + i)]]) for i in range(30)])
    table, _ = recluster_chunk(jets, ReclusterConfig())
    write_table(table, tmp_path / "one.trees.parquet")
    code = main(["tokenizer", "eval", "--ckpt", str(tiny_tokenizer.path), "--trees",
                 str(tmp_path / "one.trees.parquet"), "--json", str(tmp_path / "r" / "r.json")])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "r" / "r.json").read_text())
    assert report["internal"]["pt_rel_err_mean"] is None and report["n_nodes"] == 30
    assert re.search(r"^internal +- +- +- +-$", capsys.readouterr().out, re.M)


def test_evaluate_splits_json_folder_is_made_before_the_work(tmp_path, capsys):
    """The --json folder is created (or refused) first, not after all the work."""
    missing = tmp_path / "nope" / "deeper"
    err = one_line(capsys, ["evaluate-splits", "--ckpt", tmp_path / "m.ckpt", "--tokens",
                            tmp_path, "--json", missing / "s.json"])  # fmt: skip
    assert missing.is_dir() and "m.ckpt" in err


def test_aoj_candidates_stored_as_integers(tmp_path):
    """Integer PFCands (some producers truncate): soft candidates round to pT = 0 and are
    dropped and counted; every jet still becomes a tree."""
    rng = np.random.default_rng(4)
    jets = [random_particles(rng, 10) for _ in range(12)]
    jets[5][:3, :2] = 0.3  # |px|, |py| < 1: 0 once stored as integers
    aoj_file(tmp_path / "RunG_batch0.h5", jets)
    with h5py.File(tmp_path / "RunG_batch0.h5", "r+") as f:
        cands = f["PFCands"][()]
        del f["PFCands"]
        f["PFCands"] = cands.astype(np.int32)
    s = tree_run.recluster_files([tmp_path / "RunG_batch0.h5"], tmp_path / "o", progress=False)
    assert s["trees_written"] == s["jets_read"] == 12 and s["beam_constituents_dropped"] >= 3


def test_a_constituent_without_rapidity_skips_its_jet_only():
    """E = pz = 0 with pT > 0 has no rapidity (FastJet's would be infinite): the jet is a
    counted skip, the chunk goes on."""
    rng = np.random.default_rng(5)
    bad = np.vstack([random_particles(rng, 4), [[0.5, 0.5, 0.0, 0.0]]])
    table, counts = recluster_chunk(make_jets([random_particles(rng, 6), bad]), ReclusterConfig())
    assert counts["skipped_unphysical_constituent"] == 1 and table.num_rows == 1


def test_empty_jet_at_the_end_of_a_chunk(tmp_path):
    rng = np.random.default_rng(6)
    jets = [random_particles(rng, 5) for _ in range(9)] + [np.zeros((0, 4))]
    aoj_file(tmp_path / "RunG_batch0.h5", jets)
    s = tree_run.recluster_files(
        [tmp_path / "RunG_batch0.h5"], tmp_path / "o", chunk_size=5, progress=False
    )
    assert s["trees_written"] == 9 and s["skipped"]["no_constituents"] == 1


def test_a_damaged_named_input_in_a_folder_is_reported(sim_dir, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(sim_dir / "aoj" / "RunG_batch0.h5", src / "RunG_batch0.h5")
    (src / "RunG_batch1.h5").write_bytes(b"not an HDF5 file at all")
    err = one_line(capsys, ["recluster", src, "--out", tmp_path / "o", "--quiet"])
    assert "RunG_batch1.h5" in err
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["trees_written"] == 40


def test_resume_accepts_inputs_in_another_order_but_not_other_jets(sim_dir, tmp_path, capsys):
    a = sim_dir / "aoj" / "RunG_batch0.h5"
    b = sim_dir / "jetclass" / "TTBar_000.root"
    out = tmp_path / "o"
    assert main(["recluster", str(a), str(b), "--out", str(out), "--quiet"]) == 0
    assert main(["recluster", str(b), str(a), "--out", str(out), "--quiet"]) == 0
    grown = tmp_path / "RunG_batch0.h5"
    rng = np.random.default_rng(7)
    aoj_file(grown, [random_particles(rng, 5) for _ in range(10)])
    assert main(["recluster", str(grown), "--out", str(tmp_path / "o2"), "--quiet"]) == 0
    aoj_file(grown, [random_particles(rng, 5) for _ in range(12)])  # rewritten, more jets
    err = one_line(capsys, ["recluster", grown, "--out", tmp_path / "o2", "--quiet"])
    assert "jets changed" in err
