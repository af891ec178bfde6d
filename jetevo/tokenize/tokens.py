"""Token files: the tree Parquet format plus a ``token`` column (one per node, pre-order).

Encoding keeps every tree column and adds the tokens; the tokenizer's identity, path and
feature set (the representation) are stored in the schema metadata (``jetevo_tokenizer``) so later stages can check that
their tokens and tokenizer match. Decoding rebuilds node kinematics from the tokens alone
with :func:`jetevo.tokenize.decode.decode_tokens` (as generated trees are decoded: a tree
tokenizer's with four-momentum conservation at every split, a flat one's particles alone,
summed up the tree) and
writes ordinary tree files in the jet frame, node for node in the stored order.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow as pa

from jetevo.errors import InputError, SettingError
from jetevo.io.atomic import ensure_writable_dir
from jetevo.kinematics import jet_kinematics
from jetevo.tokenize.decode import decode_tokens
from jetevo.tokenize.features import RETIRED_FEATURE_SETS
from jetevo.tokenize.tokenizer import Tokenizer
from jetevo.trees.format import (
    Topology,
    check_structure,
    list_column,
    read_metadata,
    read_schema,
    read_table,
    tree_files,
)
from jetevo.trees.writer import write_table

TOKENIZER_KEY = b"jetevo_tokenizer"


def tokenizer_metadata(path: str | Path) -> dict:
    meta = read_schema(path).metadata or {}
    if TOKENIZER_KEY not in meta:
        raise InputError(
            path, "not a token file (no tokenizer metadata; run 'jetevo tokenizer encode')"
        )
    try:
        info = json.loads(meta[TOKENIZER_KEY])
    except ValueError:
        info = None
    if not isinstance(info, dict) or not {"identity", "n_codes"} <= set(info):
        raise InputError(path, "damaged tokenizer metadata")
    retired = RETIRED_FEATURE_SETS.get(str(info.get("feature_set")))
    if retired is not None:
        raise InputError(
            path, f"tokens of the retired representation {info['feature_set']}: {retired}"
        )
    return info


def _offsets(table: pa.Table) -> np.ndarray:
    col = table.column("px").combine_chunks()
    return np.asarray(col.offsets, np.int64)


def encode_files(tok: Tokenizer, tree_paths, out_dir: str | Path) -> list[Path]:
    out = ensure_writable_dir(out_dir)
    written = []
    for f in tree_files(tree_paths):
        with _about(f):
            written.append(_encode_file(tok, f, out))
    return written


def _encode_file(tok: Tokenizer, f: Path, out: Path) -> Path:
    read_metadata(f)
    table = read_table(f)
    check_structure(f, table, required=True)
    if "token" in table.column_names:
        table = table.drop_columns(["token"])
    tokens = tok.encode_trees(
        ak.from_arrow(table.select(["px", "py", "pz", "E", "left", "parent"]))
    )
    column = list_column(tokens.astype(np.int32), _offsets(table))
    table = table.append_column(pa.field("token", column.type, nullable=False), column)
    meta = dict(table.schema.metadata or {})
    meta[TOKENIZER_KEY] = json.dumps(
        {
            "identity": tok.identity,
            "path": tok.path,
            "n_codes": tok.cfg.n_codes,
            "feature_set": tok.feature_set,
        }
    ).encode()
    target = out / f.name
    write_table(table.replace_schema_metadata(meta), target)
    return target


def decode_files(
    tok: Tokenizer,
    token_paths,
    out_dir: str | Path,
    particle_mass: str = "pion",
) -> list[Path]:
    """Tree files rebuilt from token files (see the module docstring); ``particle_mass`` as
    in :func:`~jetevo.tokenize.decode.decode_tokens` (a flat tokenizer's particles)."""
    out = ensure_writable_dir(out_dir)
    written = []
    for f in tree_files(token_paths):
        with _about(f):
            written.append(_decode_file(tok, f, out, particle_mass))
    return written


def _decode_file(tok: Tokenizer, f: Path, out: Path, particle_mass: str) -> Path:
    info = tokenizer_metadata(f)
    if info.get("identity") != tok.identity:
        raise InputError(
            f,
            f"tokens were made by tokenizer {info.get('identity')}, not by this one "
            f"({tok.identity})",
        )
    table = read_table(f)
    check_structure(f, table, required=True)
    if "token" not in table.column_names:
        raise InputError(f, "no token column (run 'jetevo tokenizer encode')")
    offsets = _offsets(table)
    flat = {
        k: np.asarray(table.column(k).combine_chunks().flatten()).astype(np.int64)
        for k in ("token", "left", "right", "parent", "depth")
    }
    topology = Topology(
        flat["left"], flat["right"], flat["parent"], flat["depth"], offsets.astype(np.int64)
    )
    if not np.all(tok.vocab.is_node(flat["token"])):
        raise InputError(f, "token column holds values that are not node tokens")
    p = decode_tokens(tok, flat["token"], topology, particle_mass)
    dtype = np.asarray(table.column("px").combine_chunks().flatten()).dtype
    for i, k in enumerate(("px", "py", "pz", "E")):
        table = table.set_column(
            table.column_names.index(k),
            pa.field(k, table.schema.field(k).type, nullable=False),
            list_column(p[:, i].astype(dtype), offsets),
        )
    for k, v in jet_kinematics(p[offsets[:-1]]).items():
        i = table.column_names.index(k)
        table = table.set_column(
            i,
            table.schema.field(k),
            pa.array(v.astype(table.schema.field(k).type.to_pandas_dtype())),
        )
    target = out / f.name
    write_table(table, target)
    return target


@contextlib.contextmanager
def _about(path: Path) -> Iterator[None]:
    """Problems met while reading one file, said as that file's problem (one line)."""
    try:
        yield
    except InputError:
        raise
    except SettingError as exc:
        raise InputError(path, str(exc)) from None
    except pa.ArrowException as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(path, f"not a usable tree file ({first})") from None
