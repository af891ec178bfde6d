"""The one reader and writer of jetevo checkpoints (tokenizer and model).

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, loaded with
``torch.load(weights_only=True)``: opening a file never runs pickled code. Each carries its
``kind`` and a ``format_version``; a reader passes the migrations that bring an older
version up to date, and a file from a newer jetevo is refused in one line.

Version 0 is every checkpoint written before versions existed: they hold numpy arrays,
which are read through numpy's array reconstructor alone (allow-listed, still no code
from the file) and turned into tensors.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jetevo.errors import InputError

Migration = Callable[[dict], dict]


class Retired(Exception):
    """Raised by a migration for a checkpoint that this jetevo can no longer use (its
    message says why and what to do)."""


def _numpy_globals() -> list:
    """What a pickled numpy array needs: its reconstructor, ndarray and dtypes."""
    core = getattr(np, "_core", None) or np.core
    dtype_classes = [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGSUV"] + [type(np.dtype("O"))]
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, *dtype_classes]


def tensors_only(value: Any) -> Any:
    """``value`` with every numpy array (and numpy scalar) turned into a tensor (a Python
    number): what ``weights_only`` loading accepts."""
    import torch

    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: tensors_only(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [tensors_only(v) for v in value]
    return value


def write_checkpoint(state: dict, path: str | Path, kind: str, version: int) -> None:
    """Save ``state`` as a checkpoint of ``kind`` at format ``version``, atomically."""
    import torch

    from jetevo.io.atomic import atomic_path

    full = {**tensors_only(state), "kind": kind, "format_version": version}
    with atomic_path(path) as tmp:
        torch.save(full, tmp)


def read_checkpoint(
    path: str | Path,
    kind: str,
    version: int,
    migrations: Mapping[int, Migration] | None = None,
    what: str = "checkpoint",
) -> dict:
    """The checkpoint at ``path``, checked to be of ``kind`` and brought to ``version``:
    ``migrations[v]`` turns a version-v state into version v + 1."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"no such {what}")
    data = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # version 0 (numpy arrays inside): numpy's reconstructor is all it may call
        try:
            with torch.serialization.safe_globals(_numpy_globals()):
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(
                path, f"not a jetevo {what}: it holds pickled objects ({type(exc).__name__})"
            ) from None
    except Exception as exc:
        raise InputError(path, f"not a readable {what} ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise InputError(path, f"not a jetevo {what}")
    found = state.get("format_version", 0)
    if not isinstance(found, int) or found < 0:
        raise InputError(path, f"damaged {what}: format_version {found!r}")
    if found > version:
        raise InputError(
            path,
            f"{what} format version {found} is newer than this jetevo reads ({version}): "
            "upgrade jetevo",
        )
    migrations = migrations or {}
    for v in range(found, version):
        if v not in migrations:
            raise InputError(path, f"{what} format version {v} can no longer be read")
        try:
            state = migrations[v](state)
        except Retired as exc:
            raise InputError(
                path, f"{what} format version {v} can no longer be read: {exc}"
            ) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(
                path, f"damaged {what}: cannot migrate it from format version {v} ({exc})"
            ) from None
    state["format_version"] = version
    return state
