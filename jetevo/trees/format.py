"""The jetevo tree format: Parquet, one row per jet.

Node columns (lists, one entry per node, depth-first pre-order, root first, and at every
split the child with the larger pT first = "left"):

- ``px, py, pz, E``: node four-momentum (GeV);
- ``left, right``: node index of the children, -1 for leaves;
- ``parent``: node index of the parent, -1 for the root;
- ``depth``: root 0;
- ``leaf_index``: index of the constituent in the input's pT order, -1 for internal nodes.

Jet columns: ``n_constituents``, ``jet_pt, jet_eta, jet_phi, jet_mass`` (of the root),
``label``, ``source``, ``entry``. Run metadata (algorithm, R, scheme, on-split policy, ...)
is JSON under the ``jetevo`` key of the Parquet schema metadata. A jet of N constituents
has 2N-1 nodes; later stages add columns (e.g. ``token``) and keep these.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow.parquet as pq

from jetevo.errors import InputError

TREE_SUFFIX = ".parquet"
REQUIRED_COLUMNS = ("px", "py", "pz", "E", "left", "right", "parent", "depth", "leaf_index")


def tree_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (all ``*.parquet`` inside, sorted) into a file list."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.glob(f"*{TREE_SUFFIX}") if not f.name.startswith("."))
            if not found:
                raise InputError(p, f"folder holds no {TREE_SUFFIX} tree files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(p, "no such file or folder")
    return files


def read_metadata(path: str | Path) -> dict:
    """The ``jetevo`` run metadata of one tree file."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as exc:
        raise InputError(path, f"not a readable Parquet file ({exc})") from None
    if b"jetevo" not in meta:
        raise InputError(path, "not a jetevo tree file (no 'jetevo' schema metadata)")
    return json.loads(meta[b"jetevo"])


def load(paths: str | Path | Iterable[str | Path], columns: list[str] | None = None) -> ak.Array:
    """Load tree files (or folders of them) into one awkward array, one record per jet."""
    arrays = []
    for f in tree_files(paths):
        read_metadata(f)
        names = set(pq.read_schema(f).names)
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise InputError(f, f"missing tree column(s) {', '.join(missing)}")
        arrays.append(ak.from_parquet(f, columns=columns))
    return arrays[0] if len(arrays) == 1 else ak.concatenate(arrays)


def triplets(trees: ak.Array) -> ak.Array:
    """Per jet, the (N-1) x 3 node indices (parent, left, right) of every split, in pre-order.

    This is the declustering view: each row says which node splits into which two.
    """
    left = trees["left"]
    counts = ak.to_numpy(ak.num(left, axis=1))
    flat_left = ak.to_numpy(ak.flatten(left))
    flat_right = ak.to_numpy(ak.flatten(trees["right"]))
    local = np.arange(len(flat_left)) - np.repeat(np.cumsum(counts) - counts, counts)
    internal = flat_left >= 0
    rows = np.stack([local[internal], flat_left[internal], flat_right[internal]], axis=1).astype(np.int32)
    per_jet = np.bincount(np.repeat(np.arange(len(counts)), counts)[internal], minlength=len(counts))
    return ak.unflatten(rows, per_jet)
