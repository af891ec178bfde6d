"""The one tree writer: tree tables from flat node arrays, written atomically, in shards.

``jetevo recluster`` writes one file per planned shard of each input
(:class:`TreeFileWriter`, chunk by chunk); ``jetevo generate`` writes a stream of batches
into files of ``shard_size`` jets (:class:`ShardedTreeWriter`). Either way a file appears
under its final name only when complete (temporary name, then rename), so every existing
output is whole and a rerun may skip it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jetevo.errors import SettingError
from jetevo.io.atomic import atomic_path
from jetevo.kinematics import jet_kinematics
from jetevo.trees.format import (
    NODE_FLOAT_FIELDS,
    JetColumns,
    Topology,
    list_column,
    non_nullable_table,
)

# Chosen by measurement on top-jet trees (scripts/bench_recluster.py; docs/benchmarks.md):
# dictionaries and statistics on the float columns cost far more write time than the file
# size they save, and lz4 less CPU than zstd.
PARQUET_OPTIONS = {
    "compression": "lz4",
    "use_dictionary": ["label", "source"],
    "write_statistics": False,
}
METADATA_KEY = b"jetevo"


def tree_table(
    p: np.ndarray,
    topology: Topology,
    leaf_index: np.ndarray,
    jets: JetColumns,
    metadata: dict,
    precision: str = "float32",
    extra_nodes: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """A table in the tree format: node four-momenta ``p`` (n, 4) and ``topology`` in
    pre-order with ``leaf_index``, the jet columns (from the roots, and ``jets``), node
    columns ``extra_nodes`` after the required ones (e.g. ``token``), and the run
    ``metadata`` under the ``jetevo`` key."""
    off = topology.offsets
    ftype = np.dtype(precision)
    columns = {k: list_column(p[:, i].astype(ftype), off) for i, k in enumerate(NODE_FLOAT_FIELDS)}
    ints = {**topology.int_columns(leaf_index), **(extra_nodes or {})}
    for k, v in ints.items():
        columns[k] = list_column(np.asarray(v).astype(np.int32), off)
    root = p[off[:-1]] if len(off) > 1 else np.zeros((0, 4))
    columns.update(
        n_constituents=pa.array(((np.diff(off) + 1) // 2).astype(np.int32)),
        **{k: pa.array(v.astype(ftype)) for k, v in jet_kinematics(root).items()},
        **jets.arrow(),
    )
    return non_nullable_table(columns, {METADATA_KEY: json.dumps(metadata).encode()})


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write a whole table atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **PARQUET_OPTIONS)


class TreeFileWriter:
    """One tree file written table by table; it appears under ``path`` only if the ``with``
    block completes. ``add_metadata`` adds key-value metadata (e.g. counts) at the end."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._writer: pq.ParquetWriter | None = None
        self._metadata: dict[bytes, bytes] = {}

    def __enter__(self) -> TreeFileWriter:
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        return self

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema, **PARQUET_OPTIONS)
        if table.num_rows:
            self._writer.write_table(table)

    def add_metadata(self, metadata: dict[bytes, bytes]) -> None:
        self._metadata.update(metadata)

    def _finish(self, complete: bool) -> None:
        if self._writer is not None:
            if complete and self._metadata:
                self._writer.add_key_value_metadata(self._metadata)
            self._writer.close()
        elif complete:
            raise RuntimeError(f"{self.path}: no table was written")

    def __exit__(self, exc_type, exc, tb) -> bool | None:
        try:
            self._finish(exc_type is None)
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())  # the temporary file goes
            raise
        return self._atomic.__exit__(exc_type, exc, tb)


class ShardedTreeWriter:
    """Tables of jets in, files of ``shard_size`` jets out (the last one fewer), named
    ``{stem}.NNNN.trees.parquet`` in ``out_dir``; each file atomic."""

    def __init__(self, out_dir: str | Path, stem: str, shard_size: int):
        if shard_size < 1:
            raise SettingError(f"shard size must be at least 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.stem = stem
        self.shard_size = shard_size
        self.files: list[str] = []
        self._file: TreeFileWriter | None = None
        self._in_file = 0

    def __enter__(self) -> ShardedTreeWriter:
        return self

    def write(self, table: pa.Table) -> None:
        done = 0
        while done < table.num_rows:
            if self._file is None:
                path = self.out_dir / f"{self.stem}.{len(self.files):04d}.trees.parquet"
                self._file = TreeFileWriter(path).__enter__()
                self._in_file = 0
            take = min(table.num_rows - done, self.shard_size - self._in_file)
            self._file.write(table.slice(done, take))
            self._in_file += take
            done += take
            if self._in_file == self.shard_size:
                self._close_file(None, None, None)

    def _close_file(self, exc_type, exc, tb) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.__exit__(exc_type, exc, tb)
            if exc_type is None:
                self.files.append(file.path.name)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close_file(exc_type, exc, tb)
