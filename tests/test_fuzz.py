"""Corrupted inputs through every command (``scripts/fuzz.py``; seeded, a few dozen cases
here, ``python scripts/fuzz.py --minutes N`` for longer runs): only exit 0 with counts that
add up or exit 2 with one line, never a traceback, never an unreadable output."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"
spec = importlib.util.spec_from_file_location("jetevo_fuzz", SCRIPT)
assert spec is not None and spec.loader is not None
fuzz = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = fuzz  # its dataclasses look their module up
spec.loader.exec_module(fuzz)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzz.make_seeds(tmp_path_factory.mktemp("fuzz") / "seeds")


def test_seed_files_pass_every_command(seeds, tmp_path):
    """The uncorrupted files: every command exits 0 (so the cases test the corruption)."""
    from jetevo.cli import main

    for kind in sorted(seeds):
        for argv in fuzz.commands(kind, seeds[kind], seeds, tmp_path / kind):
            assert main(argv) == 0, argv


@settings(
    max_examples=60, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip
@given(case=st.integers(min_value=0, max_value=2**31))
def test_corrupted_inputs_give_one_line_or_a_counted_result(seeds, tmp_path, case):
    broken = fuzz.run_case(seeds, tmp_path, case)
    assert not broken, [(o.case, o.argv[:2], o.problem) for o in broken]
