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
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jetevo.errors import InputError
from jetevo.kinematics import wrap_phi

TREE_SUFFIX = ".parquet"
REQUIRED_COLUMNS = ("px", "py", "pz", "E", "left", "right", "parent", "depth", "leaf_index")
NODE_FLOAT_FIELDS = ("px", "py", "pz", "E")
NODE_INT_FIELDS = ("left", "right", "parent", "depth", "leaf_index")
JET_FLOAT_FIELDS = ("jet_pt", "jet_eta", "jet_phi", "jet_mass")


@dataclass
class Topology:
    """The shape of a batch of binary trees, flat over jets: ``left``/``right`` (local child
    indices, -1 for leaves), ``parent`` (local, -1 for the root), ``depth`` (root 0) and
    per-jet ``offsets``. Every child comes after its parent (pre-order and generation order
    both do), the one property the bottom-up helpers need."""

    left: np.ndarray
    right: np.ndarray
    parent: np.ndarray
    depth: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def of(cls, trees: ak.Array) -> Topology:
        """The topology of tree records (columns left, right, parent, depth)."""
        counts = ak.to_numpy(ak.num(trees["left"], axis=1)).astype(np.int64)
        offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        flat = {
            k: ak.to_numpy(ak.flatten(trees[k])).astype(np.int64)
            for k in ("left", "right", "parent", "depth")
        }
        return cls(offsets=offsets, **flat)

    @property
    def jet_start(self) -> np.ndarray:
        """Global index of each node's root."""
        return np.repeat(self.offsets[:-1], np.diff(self.offsets))

    @property
    def is_leaf(self) -> np.ndarray:
        return self.left < 0

    def global_parent(self) -> np.ndarray:
        """Global parent index of each node, -1 for roots."""
        return np.where(self.parent >= 0, self.jet_start + self.parent, -1)

    def leaves_below(self) -> np.ndarray:
        """Number of particles under every node (1 for a particle): a full binary subtree
        of n nodes has (n + 1) / 2 leaves."""
        return (_subtree_sizes(self.left, self.right, self.offsets) + 1) // 2

    def int_columns(self, leaf_index: np.ndarray) -> dict[str, np.ndarray]:
        """The tree format's integer node columns (``NODE_INT_FIELDS``), int32."""
        values = (self.left, self.right, self.parent, self.depth, leaf_index)
        return {
            k: np.asarray(v).astype(np.int32) for k, v in zip(NODE_INT_FIELDS, values, strict=True)
        }

    def harder_first(self, pt: np.ndarray) -> tuple[np.ndarray, Topology, np.ndarray]:
        """The trees in the tree format's order: depth-first pre-order, the child with the
        larger ``pt`` first (the first-stored child on ties). Returns the node at every new
        slot (global indices), the new topology, and ``leaf_index``: each leaf's rank in
        decreasing ``pt`` within its jet, -1 for internal nodes."""
        from jetevo.trees.kernel import preorder_batch

        order, left, right, parent, depth, leaf = preorder_batch(
            self.left, self.right, np.asarray(pt, np.float64), self.offsets
        )
        return order, Topology(left, right, parent, depth, self.offsets), leaf


@dataclass
class JetColumns:
    """The jet-level columns copied from the input (or set by a generator): label, source,
    entry.

    Strings are kept dictionary-encoded (a handful of distinct values per chunk) as numpy
    codes, so that the reclustering finisher thread builds the output without awkward
    (which holds the GIL that the clustering thread needs).
    """

    label_codes: np.ndarray
    label_names: list[str]
    source_codes: np.ndarray
    source_names: list[str]
    entry: np.ndarray

    @classmethod
    def of(cls, jets: ak.Array) -> JetColumns:
        label, source = _dictionary(jets["label"]), _dictionary(jets["source"])
        entry = ak.to_numpy(jets["entry"]).astype(np.int64)
        return cls(*label, *source, entry)

    @classmethod
    def constant(cls, label: str, source: str, entry: np.ndarray) -> JetColumns:
        """One label and one source for every jet."""
        one = np.zeros(len(entry), np.int32)
        return cls(one, [label], one, [source], np.asarray(entry, np.int64))

    def select(self, mask: np.ndarray) -> JetColumns:
        return JetColumns(
            self.label_codes[mask], self.label_names,
            self.source_codes[mask], self.source_names, self.entry[mask],
        )  # fmt: skip

    def arrow(self) -> dict[str, pa.Array]:
        def strings(codes, names):
            return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names, pa.string()))

        return {
            "label": strings(self.label_codes, self.label_names),
            "source": strings(self.source_codes, self.source_names),
            "entry": pa.array(self.entry),
        }


def _dictionary(strings: ak.Array) -> tuple[np.ndarray, list[str]]:
    """int32 codes and distinct values of an awkward string array."""
    arrow = ak.to_arrow(strings, extensionarray=False)
    if isinstance(arrow, pa.ChunkedArray):
        arrow = arrow.combine_chunks()
    if not pa.types.is_dictionary(arrow.type):
        arrow = arrow.cast(pa.string()).dictionary_encode()
    codes = arrow.indices.cast(pa.int32()).to_numpy(zero_copy_only=False)
    return codes, [str(v) for v in arrow.dictionary.to_pylist()]


def list_column(values: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """Arrow list column; non-nullable items so awkward reads plain (not option) types."""
    item = pa.from_numpy_dtype(values.dtype)
    list_type = pa.list_(pa.field("item", item, nullable=False))
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values), type=list_type
    )


def non_nullable_table(columns: dict[str, pa.Array], metadata: dict) -> pa.Table:
    """Table whose fields are all non-nullable (no missing values exist in jetevo files)."""
    schema = pa.schema(
        [pa.field(k, v.type, nullable=False) for k, v in columns.items()], metadata=metadata
    )
    return pa.Table.from_arrays(list(columns.values()), schema=schema)


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


def read_schema(path: str | Path) -> pa.Schema:
    """The Parquet schema of a file; a damaged or foreign file is one :class:`InputError`."""
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable Parquet file ({_first_line(exc)})") from None


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """A whole Parquet file (or its ``columns``); damage is one :class:`InputError`."""
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise InputError(path, f"damaged Parquet file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_metadata(path: str | Path) -> dict:
    """The ``jetevo`` run metadata of one tree file."""
    meta = read_schema(path).metadata or {}
    if b"jetevo" not in meta:
        raise InputError(path, "not a jetevo tree file (no 'jetevo' schema metadata)")
    try:
        value = json.loads(meta[b"jetevo"])
    except ValueError:
        raise InputError(path, "damaged 'jetevo' schema metadata") from None
    if not isinstance(value, dict):
        raise InputError(path, "damaged 'jetevo' schema metadata")
    return value


def load(paths: str | Path | Iterable[str | Path], columns: list[str] | None = None) -> ak.Array:
    """Load tree files (or folders of them) into one awkward array, one record per jet."""
    tables: list[pa.Table] = []
    files = tree_files(paths)
    for f in files:
        read_metadata(f)
        names = set(read_schema(f).names)
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise InputError(f, f"missing tree column(s) {', '.join(missing)}")
        # the structure is read and checked whatever columns are asked for
        checked = _file_key(f) in _CHECKED  # already checked by this process: not read again
        structure = [] if checked else [c for c in STRUCTURE_COLUMNS if c in names]
        wanted = None if columns is None else list(dict.fromkeys([*columns, *structure]))
        table = read_table(f, columns=wanted)
        check_structure(f, table)
        if columns is not None:
            table = table.select(columns)
        # dictionary-encoded strings (label, source) become plain strings so files concatenate
        for i, field in enumerate(table.schema):
            if pa.types.is_dictionary(field.type):
                plain = pa.field(field.name, field.type.value_type, nullable=field.nullable)
                table = table.set_column(i, plain, table.column(i).cast(field.type.value_type))
        if tables and not table.schema.equals(tables[0].schema, check_metadata=False):
            raise InputError(
                f, f"columns or types differ from {files[0]}'s (e.g. float32 and float64 runs)"
            )
        tables.append(table.replace_schema_metadata(None))
    return ak.from_arrow(pa.concat_tables(tables))


# what the structure check reads: the integer node columns and the constituent count, not
# the kinematics (a jet-level or token read does not pay for the four-momenta)
STRUCTURE_COLUMNS = (*NODE_INT_FIELDS, "n_constituents")


def check_structure(path: Path, table: pa.Table, required: bool = False) -> None:
    """Refuse a file whose trees are not binary trees in pre-order (a damaged file can read
    back cleanly yet hold nonsense indices, on which later stages would loop or misread)."""
    if required:  # a file that is used whole: every tree column
        needed = (*REQUIRED_COLUMNS, "n_constituents", *JET_FLOAT_FIELDS)
        absent = [c for c in needed if c not in table.column_names]
        if absent:
            raise InputError(path, f"missing tree column(s) {', '.join(absent)}")
    if any(c not in table.column_names for c in STRUCTURE_COLUMNS):
        return
    lists = [n for n in table.column_names if pa.types.is_list(table.schema.field(n).type)]
    offsets = {n: table.column(n).combine_chunks().offsets for n in lists}
    for n in lists:
        if not offsets[n].equals(offsets["left"]):
            raise InputError(path, f"not a valid tree file (column {n} has other node counts)")
    key = _file_key(path)
    if key is not None and key in _CHECKED:
        return
    structure = table.select(list(STRUCTURE_COLUMNS))
    for start in range(0, table.num_rows, CHECK_ROWS):  # bounded memory on large files
        try:
            validate(
                ak.from_arrow(structure.slice(start, CHECK_ROWS)),
                subset_leaves=True,
                harder_first=False,
            )
        except ValueError as exc:
            message = _renumber(str(exc), start)
            raise InputError(path, f"not a valid tree file ({message})") from None
    if key is not None:
        _CHECKED.add(key)


def _renumber(message: str, offset: int) -> str:
    """``jet k: ...`` of a slice as the jet number in the file."""
    m = re.match(r"jet (\d+)", message)
    return f"jet {offset + int(m.group(1))}{message[m.end() :]}" if m else message


CHECK_ROWS = 5_000
_CHECKED: set[tuple] = set()  # files already checked by this process (path, size, mtime)


def _file_key(path: Path) -> tuple | None:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


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
    rows = np.stack([local[internal], flat_left[internal], flat_right[internal]], axis=1).astype(
        np.int32
    )
    per_jet = np.bincount(
        np.repeat(np.arange(len(counts)), counts)[internal], minlength=len(counts)
    )
    return ak.unflatten(rows, per_jet)


def _flat(trees: ak.Array, field: str) -> np.ndarray:
    return ak.to_numpy(ak.flatten(trees[field]))


def validate(
    trees: ak.Array,
    scheme: str | None = None,
    rtol: float = 1e-5,
    subset_leaves: bool = False,
    harder_first: bool = True,
) -> None:
    """Raise ``ValueError`` naming the first jet that breaks the tree format.

    Checks: 2N-1 nodes; full binary tree in depth-first pre-order (left child right after
    its parent, right child after the whole left subtree); consistent parent/depth;
    leaves map one-to-one onto constituents 0..N-1; larger-pT child left; finite
    kinematics (these last two only where ``trees`` holds px, py, pz, E; ``subset_leaves``: trees kept by ``on_split="hardest"`` hold a subset of
    the input, so leaf indices are distinct but may exceed N-1); ``harder_first=False`` for
    decoded or generated trees, whose quantized children may swap pT order; and, for ``scheme="E"``, parent four-momentum = sum of the children's
    (within ``rtol`` of the parent energy) or, for ``"wta_pt"``, parent pT = sum of the
    children's pT.
    """
    counts = ak.to_numpy(ak.num(trees["left"], axis=1)).astype(np.int64)
    n_const = ak.to_numpy(trees["n_constituents"]).astype(np.int64)
    first = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=first[1:])
    jet_of = np.repeat(np.arange(len(counts)), counts)
    local = np.arange(first[-1]) - first[jet_of]

    def fail(node_mask: np.ndarray, rule: str) -> None:
        if np.any(node_mask):
            raise ValueError(f"jet {int(jet_of[np.flatnonzero(node_mask)[0]])}: {rule}")

    bad = np.flatnonzero(counts != 2 * n_const - 1)
    if len(bad):
        raise ValueError(f"jet {int(bad[0])}: number of nodes is not 2N-1")
    left, right, parent = (_flat(trees, k).astype(np.int64) for k in ("left", "right", "parent"))
    depth, leaf = (
        _flat(trees, "depth").astype(np.int64),
        _flat(trees, "leaf_index").astype(np.int64),
    )
    kinematics = "px" in trees.fields  # without them: the structure alone
    if kinematics:
        p = np.stack([_flat(trees, k).astype(np.float64) for k in NODE_FLOAT_FIELDS], axis=1)
        fail(~np.all(np.isfinite(p), axis=1), "non-finite kinematics")
    elif harder_first or scheme is not None:
        raise ValueError("harder_first and scheme checks need the node four-momenta")
    internal = left >= 0
    fail(internal != (right >= 0), "a node with exactly one child")
    fail((local == 0) & ((parent != -1) | (depth != 0)), "root must have parent -1 and depth 0")
    fail(internal & (left != local + 1), "left child does not follow its parent (not pre-order)")
    size = _subtree_sizes(left, right, first)
    li, ri = (
        first[jet_of] + np.where(internal, left, 0),
        first[jet_of] + np.where(internal, right, 0),
    )
    fail(
        internal & (right != local + 1 + size[li]),
        "right child does not follow the left subtree (not pre-order)",
    )
    fail(
        internal & ((parent[li] != local) | (parent[ri] != local)),
        "children do not point back to their parent",
    )
    fail(
        internal & ((depth[li] != depth + 1) | (depth[ri] != depth + 1)),
        "child depth is not parent depth + 1",
    )
    fail(internal != (leaf < 0), "leaf_index must be set exactly on leaves")
    limit = np.iinfo(np.int64).max if subset_leaves else n_const[jet_of]
    fail(~internal & (leaf >= limit), "leaf_index out of range")
    key = jet_of[~internal] * (int(leaf.max(initial=0)) + 1) + leaf[~internal]
    if len(np.unique(key)) != len(key):
        raise ValueError("a constituent appears in more than one leaf")
    if not kinematics:
        return
    pt = np.hypot(p[:, 0], p[:, 1])
    if harder_first:
        fail(internal & (pt[li] < pt[ri] * (1 - rtol)), "softer child placed left")
    if scheme == "E":
        resid = np.abs(p - p[li] - p[ri]).max(axis=1)
        fail(
            internal & (resid > rtol * np.maximum(p[:, 3], 1e-12)),
            "parent four-momentum != sum of children (E-scheme)",
        )
    elif scheme == "wta_pt":
        fail(
            internal & (np.abs(pt - pt[li] - pt[ri]) > rtol * np.maximum(pt, 1e-12)),
            "parent pT != sum of children pT (WTA)",
        )
        # rapidity as stored, without pt_y_phi_m's floor on E - |pz|: float32 rounding can put a
        # massless particle's E below |pz|, and the WTA parent inherits the child's rapidity
        # only as the same expression of the same rounded numbers
        rap = 0.5 * np.log((p[:, 3] + p[:, 2]) / np.maximum(p[:, 3] - p[:, 2], 1e-300))
        phi = np.arctan2(p[:, 1], p[:, 0])
        dphi = wrap_phi(phi - phi[li])
        # the stored precision limits the rapidity of a light, forward vector: dy ~ eps E /
        # (E - |pz|) (float32 at y ~ 4: 1e-3)
        eps = np.finfo(_flat(trees, "E").dtype).eps
        light = np.maximum(p[:, 3] - np.abs(p[:, 2]), 1e-300)
        tol_y = 1e-4 + 8 * eps * (p[:, 3] / light + p[li, 3] / light[li])
        off_axis = (np.abs(rap - rap[li]) > tol_y) | (np.abs(dphi) > 1e-4)
        fail(internal & off_axis, "parent direction != harder child's (WTA)")


def _subtree_sizes(left: np.ndarray, right: np.ndarray, first: np.ndarray) -> np.ndarray:
    from jetevo.trees.kernel import subtree_sizes

    return subtree_sizes(left, right, first)
