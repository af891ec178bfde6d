"""Atomic output: write under a temporary name in the target folder, rename when complete.

An interrupted run therefore never leaves a half-written file under the final name,
and "the final file exists" can be used to mean "this output is complete" (resume).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from jetevo.errors import InputError


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written there."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, f"cannot create output directory ({exc.strerror})") from None
    if not out.is_dir():
        raise InputError(out, "output path exists and is not a directory")
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(out, "output directory is not writable")
    return out


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it to ``final`` only on success."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
