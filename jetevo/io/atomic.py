"""Atomic output: write under a temporary name in the target folder, rename when complete.

An interrupted run therefore never leaves a half-written file under the final name,
and "the final file exists" can be used to mean "this output is complete" (resume).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
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


def _host() -> str:
    """This machine's name, without the dots and underscores a temporary name splits on."""
    return socket.gethostname().replace(".", "-").replace("_", "-") or "localhost"


def temporary_name(final: Path) -> Path:
    """``.{name}.{host}_{pid}.tmp``: whose process it is, on which machine (folders on a
    shared file system are written from many nodes)."""
    return final.with_name(f".{final.name}.{_host()}_{os.getpid()}.tmp")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files that a killed jetevo process (``kill -9``, a node
    failure) left in ``folder``: those of :func:`atomic_path` whose process is gone. Only
    this machine's processes can be asked: another host's temporaries are kept (a name
    without a host is an older jetevo's, written here)."""
    removed = []
    here = _host()
    for tmp in Path(folder).glob(".*.*.tmp"):
        owner = tmp.name.rsplit(".", 2)[-2]
        host, _, pid = owner.rpartition("_")
        if (host and host != here) or not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it to ``final`` only on success."""
    final = Path(final)
    tmp = temporary_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def json_safe(obj):
    """``obj`` with every non-finite float as ``null``: outputs stay strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj, indent: int = 2) -> None:
    """Write ``obj`` as strict JSON (non-finite numbers as ``null``), atomically: the one
    way jetevo writes its reports and summaries."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n")
