"""Reclustering on Dask: the same run as ``--workers``, with retried and reported failures.

One LocalCluster (two one-thread worker processes) serves the module; the CLI test starts
its own through ``--dask local:2``.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import sys
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from test_bad_inputs_io import corrupt_real_file  # noqa: E402

from jetevo.cli import main  # noqa: E402
from jetevo.trees import format as tree_format  # noqa: E402
from jetevo.trees import run as tree_run  # noqa: E402

REAL_AOJ = Path(__file__).parent / "data" / "2016H_job0_mini.h5"
COUNT_KEYS = [k for k in tree_run.SUMMARY_KEYS if k != "jets_per_s"]


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"}, silence_logs=logging.CRITICAL,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):  # fmt: skip
        yield c


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.trees.parquet"))}


def test_dask_writes_the_trees_of_one_worker_and_resumes_either_run(sim_dir, tmp_path, client):
    """Byte-identical trees and the same counts as --workers 1, over JetClass, simulated
    AOJ and real AOJ files; either run resumes the other (the executor is no setting)."""
    inputs = [sim_dir / "jetclass", sim_dir / "aoj", REAL_AOJ]
    one = tree_run.recluster_files(inputs, tmp_path / "w1", shard_size=16, progress=False)
    dask = tree_run.recluster_files(
        inputs, tmp_path / "dask", shard_size=16, progress=False, dask=client
    )
    assert one["jets_read"] == 210 and len(one["outputs"]) == 15
    assert {k: dask[k] for k in COUNT_KEYS} == {k: one[k] for k in COUNT_KEYS}
    assert dask["outputs"] == one["outputs"] and dask["failed"] == []
    assert (dask["executor"], dask["workers"], one["executor"]) == ("dask", 2, "serial")
    assert tree_bytes(tmp_path / "dask") == tree_bytes(tmp_path / "w1")

    again = tree_run.recluster_files(
        inputs, tmp_path / "w1", shard_size=16, progress=False, dask=client
    )
    assert again["resumed_shards"] == 15 and again["jets_this_run"] == 0
    (tmp_path / "dask" / one["outputs"][3]).unlink()
    redo = tree_run.recluster_files(inputs, tmp_path / "dask", shard_size=16, progress=False)
    assert redo["resumed_shards"] == 14 and redo["jets_read"] == 210
    assert tree_bytes(tmp_path / "dask") == tree_bytes(tmp_path / "w1")


def test_relative_paths_reach_workers_in_another_directory(sim_dir, tmp_path, client, monkeypatch):
    """A remote worker runs in its own working directory: the shards it gets name their
    files absolutely."""
    import os

    (tmp_path / "in").mkdir()
    shutil.copy(sim_dir / "aoj" / "RunG_batch0.h5", tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    before = client.run(os.getcwd)
    client.run(os.chdir, "/")
    try:
        s = tree_run.recluster_files(["in"], "out", progress=False, dask=client)
    finally:
        for addr, cwd in before.items():
            client.run(os.chdir, cwd, workers=[addr])
    assert s["failed"] == [] and s["trees_written"] == 40


def test_cli_dask_local(sim_dir, tmp_path, capsys):
    src = sim_dir / "jetclass"
    args = [str(src), "--shard-size", "16", "--quiet"]
    assert main(["recluster", *args, "--out", str(tmp_path / "w1")]) == 0
    assert main(["recluster", *args, "--out", str(tmp_path / "d"), "--dask", "local:2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["trees_written"] == 70
    assert {k: v for k, v in json.loads(lines[1]).items() if k in COUNT_KEYS} == {
        k: v for k, v in json.loads(lines[0]).items() if k in COUNT_KEYS
    }
    assert tree_bytes(tmp_path / "d") == tree_bytes(tmp_path / "w1")
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["executor"] == "dask" and summary["workers"] == 2


@pytest.mark.parametrize("how", ["killed", "raises"])
def test_a_shard_whose_first_attempt_dies_is_rerun(sim_dir, tmp_path, client, how):
    """The first attempt at the first shard of a file, its first chunk written under the
    temporary name, kills its worker process (``os._exit``) or raises (a flaky file
    system): the shard is rerun and the run completes with every jet, leaving no temporary
    file of the dead attempt."""
    marker, out = tmp_path / "first-attempt-done", tmp_path / "o"

    def install(marker: str, out: str, how: str) -> None:  # runs in each worker process
        import os

        from jetevo.trees import run

        real = run.iter_jets

        def first_attempt_fails(path, chunk_size, start, *args, **kwargs):
            chunks = real(path, chunk_size, start, *args, **kwargs)
            if Path(path).name != f"TTBar_{how}.root" or start != 0 or os.path.exists(marker):
                return chunks

            def dies_after_one_chunk():
                yield next(chunks)  # clustered and written before the next is asked for
                temporaries = [p.name for p in Path(out).glob(".*.tmp")]
                Path(marker).write_text(json.dumps(temporaries))
                if how == "killed":
                    os._exit(1)
                raise OSError("stale file handle")

            return dies_after_one_chunk()

        first_attempt_fails.real = real  # type: ignore[attr-defined]
        run.iter_jets = first_attempt_fails

    def uninstall() -> None:
        from jetevo.trees import run

        run.iter_jets = getattr(run.iter_jets, "real", run.iter_jets)

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(sim_dir / "jetclass" / "TTBar_000.root", src / f"TTBar_{how}.root")
    shutil.copy(sim_dir / "jetclass" / "ZJetsToNuNu_000.root", src)
    client.run(install, str(marker), str(out), how)
    try:
        s = tree_run.recluster_files(
            [src], out, shard_size=16, chunk_size=8, progress=False, dask=client
        )
    finally:
        client.run(uninstall)
        client.wait_for_workers(2, timeout=60)  # the killed worker's restart, for later tests
    # the first attempt died with its first chunk in a temporary file; a second one ran
    temporaries = json.loads(marker.read_text())
    assert any(t.startswith(f".TTBar_{how}.0000.trees.parquet.") for t in temporaries)
    assert attempts(client, f"jetevo-recluster-TTBar_{how}.0000") == 2
    assert s["failed"] == [] and s["jets_read"] == s["trees_written"] == 70
    assert len(tree_format.load(out)) == 70
    assert not list(out.glob(".*.tmp"))


def attempts(client, prefix: str) -> int:
    """How many times the scheduler sent a task whose name begins with ``prefix`` to a
    worker (from waiting or from the queue)."""

    def count(dask_scheduler) -> int:
        return sum(
            1
            for key, start, finish, *_ in dask_scheduler.transition_log
            if str(key).startswith(prefix) and finish == "processing"
        )

    return client.run_on_scheduler(count)


def test_a_damaged_shard_is_retried_then_reported(sim_dir, tmp_path, client):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(sim_dir / "aoj" / "RunG_batch0.h5", src)
    shutil.copy(sim_dir / "jetclass" / "ZJetsToNuNu_000.root", src)
    corrupt_real_file(src / "RunH_batch3.h5")
    out = tmp_path / "o"
    with pytest.raises(tree_run.ReclusterFailed, match=r"RunH_batch3\.h5") as exc:
        tree_run.recluster_files([src], out, shard_size=50, progress=False, dask=client)
    assert "\n" not in str(exc.value) and "1 shard(s) or input(s) failed" in str(exc.value)
    summary = json.loads((out / "summary.json").read_text())
    [failed] = summary["failed"]
    assert failed["output"] == "RunH_batch3.0000.trees.parquet" and failed["jets"] == [0, 50]
    assert "cannot read entries 0-49" in failed["reason"] and "\n" not in failed["reason"]
    assert attempts(client, "jetevo-recluster-RunH_batch3.0000") == 1 + tree_run.DASK_RETRIES
    assert attempts(client, "jetevo-recluster-RunH_batch3.0001") == 1
    assert summary["trees_written"] == 40 + 40 + 50  # every other shard is written
    assert sorted(summary["outputs"]) == [
        "RunG_batch0.trees.parquet", "RunH_batch3.0001.trees.parquet",
        "ZJetsToNuNu_000.trees.parquet",
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "options, words",
    [
        (["--dask", "local:0"], ["--dask 'local:0'", "local:N"]),
        (["--dask", "local:two"], ["--dask 'local:two'", "local:N"]),
        (["--dask", "tcp://host:8786"], ["--dask takes local", "--dask-scheduler"]),
        (["--dask-scheduler", "local:2"], ["--dask-scheduler takes", "--dask local:N"]),
        (["--dask", "local:2", "--workers", "2"], ["--workers 2 and --dask exclude"]),
        (["--dask-scheduler", "tcp://h:1", "--workers", "3"], ["--workers 3 and --dask-sch"]),
        (["--dask", "local", "--dask-scheduler", "tcp://h:1"], ["exclude each other"]),
        (["--dask-scheduler", "nonsense"], ["--dask-scheduler nonsense: cannot connect"]),
        (["--dask-scheduler", "tcp://127.0.0.1:PORT"], ["cannot connect", "Timed out"]),
    ],
)
def test_bad_dask_settings_are_one_line(sim_dir, tmp_path, capsys, options, words):
    import dask

    options = [o.replace("PORT", str(free_port())) for o in options]
    src = sim_dir / "aoj" / "RunG_batch0.h5"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        rc = main(["recluster", str(src), "--out", str(tmp_path / "o"), "--quiet", *options])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("jetevo recluster: error: ") and all(w in err for w in words), err
    assert not list((tmp_path / "o").glob("*.trees.parquet"))


def test_dask_without_the_cluster_extra(sim_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails
    src = sim_dir / "aoj" / "RunG_batch0.h5"
    assert main(["recluster", str(src), "--out", str(tmp_path / "o"), "--dask", "local:2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'jetevo[cluster]'" in err, err
