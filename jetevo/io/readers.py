"""Readers for JetClass (ROOT, uproot) and AspenOpenJets (HDF5, h5py).

Both stream in chunks of jets and yield one common in-memory form, an awkward
array with one record per jet:

- ``px, py, pz, E`` (jagged float32, GeV), and unless ``particle_ids=False``, ``charge``
  (jagged int8) and ``pid`` (jagged int32; JetClass stores particle-type flags, which are
  mapped back to PDG ids). Reclustering needs only the four-momenta, and skipping the six
  extra jagged JetClass branches more than halves the reading time;
- ``jet_pt, jet_eta, jet_phi, jet_mass`` (float32): of the constituents' four-momentum
  sum, the same four-vector a tree's root carries. The files' own jet columns describe
  other objects (AOJ's pt is the corrected jet pT, about 1.13 times the candidates' sum,
  and its mass column is the soft-drop mass), so they are kept under their own names:
  ``file_jet_pt, file_jet_eta, file_jet_phi`` and ``file_jet_energy`` (JetClass) or
  ``file_jet_msoftdrop`` (AOJ);
- ``label`` (class name: ``"QCD"``, ``"Tbqq"``, ...; AOJ is unlabelled data: ``"unlabeled"``);
- ``source`` (file path) and ``entry`` (jet index in that file): provenance.

The file format is chosen by content (magic bytes), not by extension. Layouts follow
``SCHEMAS.md`` exactly; only the particle four-momenta and the jet kinematics are
required, so auxiliary branches may be absent.

A file that cannot be read as such a layout (truncated, damaged, another layout, wrong
types) raises :class:`~jetevo.errors.InputError` with one line naming the file, and the
entry range where the damage was met; never an error from inside uproot or h5py.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import awkward as ak
import numpy as np

from jetevo import kinematics
from jetevo.errors import InputError

ROOT_MAGIC = b"root"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

JETCLASS_TREE = "tree"
JETCLASS_PARTICLES = ("part_px", "part_py", "part_pz", "part_energy")
JETCLASS_JET = ("jet_pt", "jet_eta", "jet_phi", "jet_energy")
JETCLASS_REQUIRED = (*JETCLASS_PARTICLES, *JETCLASS_JET)
JETCLASS_TYPE_FLAGS = (
    "part_isChargedHadron",
    "part_isNeutralHadron",
    "part_isPhoton",
    "part_isElectron",
    "part_isMuon",
)
# label branch -> class name; JetClass has exactly one label set per jet
JETCLASS_LABELS = (
    "label_QCD",
    "label_Hbb",
    "label_Hcc",
    "label_Hgg",
    "label_H4q",
    "label_Hqql",
    "label_Zqq",
    "label_Wqq",
    "label_Tbqq",
    "label_Tbl",
)
AOJ_REQUIRED = ("PFCands", "jet_kinematics")
AOJ_UNLABELED = "unlabeled"
AOJ_CANDIDATE_COLUMNS = 11
AOJ_KINEMATICS = ("pt", "eta", "phi", "msoftdrop")  # jet_kinematics columns
# PFCands columns
AOJ_PX, AOJ_PY, AOJ_PZ, AOJ_E, AOJ_CHARGE, AOJ_PDGID = 0, 1, 2, 3, 8, 9

_NUMBERS = "iuf"  # numpy dtype kinds of numbers (bool is kind "b")
_MAX_DETAIL = 200  # characters of a library's message kept in an error line


def _detail(exc: BaseException, path: Path | None = None) -> str:
    """A library exception as one short line: its type and message, whitespace collapsed,
    without uproot's "for file path ..." (the error names the file already)."""
    msg = re.sub(r"\s+", " ", str(exc)).strip()
    if path is not None:
        for said in (f" for file path {path}", f" in file {path}"):
            msg = msg.replace(said, "")
        msg = msg.replace(str(path), "the file")
    if len(msg) > _MAX_DETAIL:
        msg = msg[: _MAX_DETAIL - 3] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _entries(begin: int, end: int) -> str:
    return f"entry {begin}" if end - begin <= 1 else f"entries {begin}-{end - 1}"


def detect_format(path: str | Path) -> str:
    """Return ``"jetclass"`` (ROOT) or ``"aoj"`` (HDF5) from the file's first bytes."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    if not p.is_file():
        raise InputError(p, "not a regular file")
    try:
        with p.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise InputError(p, f"cannot read ({exc.strerror})") from None
    if head.startswith(ROOT_MAGIC):
        return "jetclass"
    if head.startswith(HDF5_MAGIC):
        return "aoj"
    raise InputError(
        p, "neither a ROOT nor an HDF5 file (JetClass .root or AspenOpenJets .h5 expected)"
    )


def count_jets(path: str | Path) -> int:
    """Number of jets in a file, without reading the particles."""
    if detect_format(path) == "jetclass":
        with _open_jetclass(path) as tree:
            return int(tree.num_entries)
    with _open_aoj(path) as h5:
        return int(h5["PFCands"].shape[0])


def iter_jets(
    path: str | Path,
    chunk_size: int = 20_000,
    start: int = 0,
    stop: int | None = None,
    particle_ids: bool = True,
) -> Iterator[ak.Array]:
    """Stream jets ``[start, stop)`` of a JetClass or AOJ file in chunks (common form)."""
    fmt = detect_format(path)
    reader = _iter_jetclass if fmt == "jetclass" else _iter_aoj
    yield from reader(Path(path), chunk_size, start, stop, particle_ids)


# ---------------------------------------------------------------- JetClass (ROOT)


def _root_truncation(path: Path) -> str | None:
    """The problem if the file is shorter than its ROOT header says (``fEND``), else None.

    A ROOT file written by ROOT keeps its key list and TTree metadata at the end, so a cut
    file fails somewhere inside uproot, at a point that depends on where it was cut; the
    header tells it at once."""
    with path.open("rb") as fh:
        head = fh.read(20)
    size = os.path.getsize(path)
    if len(head) < 16:
        return f"truncated ROOT file ({size} bytes, not even a complete header)"
    (version,) = struct.unpack(">i", head[4:8])
    if version >= 1_000_000:  # large-file header: 64-bit pointers
        if len(head) < 20:
            return f"truncated ROOT file ({size} bytes, not even a complete header)"
        (end,) = struct.unpack(">q", head[12:20])
    else:
        (end,) = struct.unpack(">i", head[12:16])
    if size < end:
        return f"truncated ROOT file: {size} of the {end} bytes its header declares are present"
    return None


def _branch_layout(branch) -> tuple[str, str] | None:
    """(``"jagged"`` or ``"flat"``, numpy dtype kind) of a branch of numbers, else None."""
    from uproot.interpretation.jagged import AsJagged
    from uproot.interpretation.numerical import AsDtype

    interp = branch.interpretation
    if isinstance(interp, AsJagged) and isinstance(interp.content, AsDtype):
        return "jagged", interp.content.to_dtype.kind
    if isinstance(interp, AsDtype) and interp.to_dtype.shape == ():
        return "flat", interp.to_dtype.kind
    return None


def _check_branch(tree, name: str, layout: str, bool_ok: bool) -> str | None:
    """The problem with branch ``name`` if it is not a ``layout`` branch of numbers."""
    want = "one list of numbers per jet" if layout == "jagged" else "one number per jet"
    got = _branch_layout(tree[name])
    typename = _one_line(str(tree[name].typename)) or "unknown"
    if got is None or got[0] != layout:
        return f"branch '{name}' has type {typename}, expected {want}"
    if got[1] not in _NUMBERS and not (bool_ok and got[1] == "b"):
        return f"branch '{name}' holds {typename}, expected numbers"
    return None


def _jetclass_problem(tree) -> str | None:
    missing = [b for b in JETCLASS_REQUIRED if b not in tree]
    if missing:
        return f"tree '{JETCLASS_TREE}' is missing branch(es) {', '.join(missing)}"
    checks = [
        *((b, "jagged", False) for b in (*JETCLASS_PARTICLES, "part_charge")),
        *((b, "jagged", True) for b in JETCLASS_TYPE_FLAGS),
        *((b, "flat", False) for b in JETCLASS_JET),
        *((b, "flat", True) for b in JETCLASS_LABELS),
    ]
    for name, layout, bool_ok in checks:
        if name in tree:
            problem = _check_branch(tree, name, layout, bool_ok)
            if problem:
                return problem
    return None


class _open_jetclass:
    """Context manager that opens a JetClass file and checks its tree and branches."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = None

    def __enter__(self):
        import uproot

        try:
            truncated = _root_truncation(self.path)
        except OSError as exc:
            raise InputError(self.path, f"cannot read ({exc.strerror})") from None
        if truncated:
            raise InputError(self.path, truncated)
        try:
            self.file = uproot.open(self.path)
        except Exception as exc:  # uproot raises many types for damaged files
            raise InputError(
                self.path, f"not a readable ROOT file ({_detail(exc, self.path)})"
            ) from None
        try:
            return self._tree(uproot)
        except InputError:
            self.file.close()
            raise
        except Exception as exc:  # a damaged directory, TTree record or branch list
            self.file.close()
            raise InputError(
                self.path, f"cannot read tree '{JETCLASS_TREE}' ({_detail(exc, self.path)})"
            ) from None

    def _tree(self, uproot):
        if JETCLASS_TREE not in self.file:
            keys = ", ".join(sorted({k.split(";")[0] for k in self.file.keys()})) or "none"
            raise InputError(
                self.path, _one_line(f"no TTree named '{JETCLASS_TREE}' (found: {keys})")
            )
        tree = self.file[JETCLASS_TREE]
        if not isinstance(tree, uproot.behaviors.TTree.TTree):
            classname = self.file.classname_of(JETCLASS_TREE)
            raise InputError(
                self.path, _one_line(f"'{JETCLASS_TREE}' is a {classname}, not a TTree")
            )
        problem = _jetclass_problem(tree)
        if problem:
            raise InputError(self.path, problem)
        return tree

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()


def _iter_jetclass(
    path: Path, chunk_size: int, start: int, stop: int | None, particle_ids: bool
) -> Iterator[ak.Array]:
    with _open_jetclass(path) as tree:
        available = set(tree.keys())
        wanted = (
            (*JETCLASS_LABELS, "part_charge", *JETCLASS_TYPE_FLAGS)
            if particle_ids
            else JETCLASS_LABELS
        )
        optional = [b for b in wanted if b in available]
        stop = tree.num_entries if stop is None else min(stop, tree.num_entries)
        if start >= stop:
            return
        # TTree.iterate keeps baskets that straddle chunk boundaries instead of re-reading them
        chunks = tree.iterate(
            [*JETCLASS_REQUIRED, *optional],
            step_size=chunk_size,
            entry_start=start,
            entry_stop=stop,
            library="ak",
            report=True,
        )
        begin = start
        while True:
            end = min(begin + chunk_size, stop)
            try:
                item = next(chunks, None)
            except Exception as exc:  # a damaged basket: uproot raises many types
                raise InputError(
                    path, f"cannot read {_entries(begin, end)} ({_detail(exc, path)})"
                ) from None
            if item is None:
                return
            arrays, report = item
            begin = report.tree_entry_start
            _check_jetclass_chunk(arrays, path, begin, report.tree_entry_stop)
            yield _jetclass_common(arrays, path, begin, particle_ids)
            begin = report.tree_entry_stop


def _check_jetclass_chunk(a: ak.Array, path: Path, begin: int, end: int) -> None:
    """Every per-particle branch read has one list per jet of the same lengths as
    ``part_px`` (counted arrays may have counters of their own)."""
    counts = ak.to_numpy(ak.num(a["part_px"], axis=1))
    for name in a.fields:
        if name.startswith("part_") and name != "part_px":
            if not np.array_equal(ak.to_numpy(ak.num(a[name], axis=1)), counts):
                raise InputError(
                    path,
                    f"{_entries(begin, end)}: branch '{name}' holds a different number of "
                    "particles than part_px",
                )


def _jet_columns(sums: np.ndarray) -> tuple[np.ndarray, ...]:
    """``jet_pt, jet_eta, jet_phi, jet_mass`` of (n, 4) constituent sums (NaN stays NaN:
    such jets are counted and skipped downstream)."""
    with np.errstate(invalid="ignore", over="ignore"):
        k = kinematics.jet_kinematics(sums)
    return k["jet_pt"], k["jet_eta"], k["jet_phi"], k["jet_mass"]


def _jetclass_common(a: ak.Array, path: Path, first_entry: int, particle_ids: bool) -> ak.Array:
    fields = set(a.fields)
    ids = {}
    if particle_ids:
        counts = ak.num(a["part_px"])
        charge_flat = (
            ak.to_numpy(ak.flatten(a["part_charge"])).astype(np.int8)
            if "part_charge" in fields
            else np.zeros(int(ak.sum(counts)), np.int8)
        )
        ids = {
            "charge": ak.unflatten(charge_flat, counts),
            "pid": ak.unflatten(_jetclass_pid(a, fields, charge_flat), counts),
        }
    with np.errstate(invalid="ignore", over="ignore"):
        sums = np.stack(
            [
                ak.to_numpy(ak.sum(ak.values_astype(a[b], np.float64), axis=1))
                for b in JETCLASS_PARTICLES
            ],
            axis=1,
        )
    return _common_form(
        px=a["part_px"],
        py=a["part_py"],
        pz=a["part_pz"],
        E=a["part_energy"],
        ids=ids,
        jet=_jet_columns(sums),
        file_jet={f"file_{b}": ak.to_numpy(a[b]) for b in JETCLASS_JET},
        label=_jetclass_labels(a, fields),
        source=str(path),
        first_entry=first_entry,
    )


def _jetclass_pid(a: ak.Array, fields: set[str], charge: np.ndarray) -> np.ndarray:
    """PDG id from JetClass's one-hot particle-type flags and the charge."""
    pid = np.zeros(len(charge), np.int32)
    c = charge.astype(np.int32)
    rules = {
        "part_isChargedHadron": 211 * c,
        "part_isNeutralHadron": np.full_like(c, 130),
        "part_isPhoton": np.full_like(c, 22),
        "part_isElectron": -11 * c,
        "part_isMuon": -13 * c,
    }
    for flag, value in rules.items():
        if flag in fields:
            mask = ak.to_numpy(ak.flatten(a[flag])) != 0
            pid[mask] = value[mask]
    return pid


def _jetclass_labels(a: ak.Array, fields: set[str]) -> np.ndarray:
    labels = np.full(len(a), "unknown", dtype=object)
    for branch in JETCLASS_LABELS:
        if branch in fields:
            labels[ak.to_numpy(a[branch]).astype(np.float64) > 0.5] = branch.removeprefix("label_")
    return labels


# ---------------------------------------------------------------- AspenOpenJets (HDF5)


def _aoj_problem(h5) -> str | None:
    import h5py

    missing = [d for d in AOJ_REQUIRED if d not in h5]
    if missing:
        return f"missing dataset(s) {', '.join(missing)} (AspenOpenJets layout expected)"
    for name in AOJ_REQUIRED:
        obj = h5[name]
        if not isinstance(obj, h5py.Dataset):
            return f"'{name}' is a {type(obj).__name__.lower()}, expected a dataset"
        if obj.dtype.kind not in _NUMBERS:
            return f"'{name}' holds {obj.dtype}, expected numbers"
    shape = h5["PFCands"].shape
    if len(shape) != 3 or shape[2] != AOJ_CANDIDATE_COLUMNS:
        return f"PFCands has shape {shape}, expected (N, 150, {AOJ_CANDIDATE_COLUMNS})"
    kin = h5["jet_kinematics"].shape
    if len(kin) != 2 or kin[1] != len(AOJ_KINEMATICS):
        return f"jet_kinematics has shape {kin}, expected (N, {len(AOJ_KINEMATICS)}): " + ", ".join(
            AOJ_KINEMATICS
        )
    if kin[0] != shape[0]:
        return "PFCands and jet_kinematics have different numbers of jets"
    return None


class _open_aoj:
    """Context manager that opens an AOJ file and checks its datasets."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = None

    def __enter__(self):
        import h5py

        try:
            self.file = h5py.File(self.path, "r")
        except Exception as exc:
            raise InputError(
                self.path, f"not a readable HDF5 file ({_detail(exc, self.path)})"
            ) from None
        try:
            problem = _aoj_problem(self.file)
        except Exception as exc:  # a damaged object header or link
            problem = f"cannot read the file's datasets ({_detail(exc, self.path)})"
        if problem:
            self.file.close()
            raise InputError(self.path, problem)
        return self.file

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()


def _iter_aoj(
    path: Path, chunk_size: int, start: int, stop: int | None, particle_ids: bool
) -> Iterator[ak.Array]:
    with _open_aoj(path) as h5:
        n = h5["PFCands"].shape[0]
        stop = n if stop is None else min(stop, n)
        for begin in range(start, stop, chunk_size):
            end = min(begin + chunk_size, stop)
            try:
                cands = np.asarray(h5["PFCands"][begin:end], dtype=np.float32)
                kin = np.asarray(h5["jet_kinematics"][begin:end], dtype=np.float64)
            except Exception as exc:  # a corrupt chunk: "filter returned failure", ...
                raise InputError(
                    path, f"cannot read {_entries(begin, end)} ({_detail(exc, path)})"
                ) from None
            yield _aoj_common(cands, kin, path, begin, particle_ids)


def _aoj_common(
    cands: np.ndarray, kin: np.ndarray, path: Path, first_entry: int, particle_ids: bool
) -> ak.Array:
    # Zero padding is an all-zero four-momentum; anything else (even E <= 0 or NaN) is a
    # real entry, so that bad candidates are seen and counted downstream, not hidden.
    real = np.any(cands[:, :, :4] != 0, axis=2)
    counts = real.sum(axis=1)
    flat = cands[real]  # row-major: jets in order, candidates in stored order
    p4 = flat[:, :4].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        # per-jet sums; a jet of padding only has none (reduceat cannot take empty segments)
        sums = np.zeros((len(counts), 4))
        some = counts > 0
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        if some.any():
            sums[some] = np.add.reduceat(p4, starts[some], axis=0)

    def jag(col: int, dtype) -> ak.Array:
        return ak.unflatten(flat[:, col].astype(dtype), counts)

    return _common_form(
        px=jag(AOJ_PX, np.float32),
        py=jag(AOJ_PY, np.float32),
        pz=jag(AOJ_PZ, np.float32),
        E=jag(AOJ_E, np.float32),
        ids={"charge": jag(AOJ_CHARGE, np.int8), "pid": jag(AOJ_PDGID, np.int32)}
        if particle_ids
        else {},
        jet=_jet_columns(sums),
        file_jet={f"file_jet_{k}": kin[:, i] for i, k in enumerate(AOJ_KINEMATICS)},
        label=np.full(len(counts), AOJ_UNLABELED, dtype=object),
        source=str(path),
        first_entry=first_entry,
    )


# ---------------------------------------------------------------- common form


def string_array(values: np.ndarray) -> ak.Array:
    """Awkward strings built straight from bytes (``ak.Array(list)`` is ~100x slower)."""
    uniques, codes = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    encoded = [u.encode() for u in uniques.tolist()]
    lengths = (
        np.array([len(e) for e in encoded], np.int64)[codes]
        if len(codes)
        else np.zeros(0, np.int64)
    )
    offsets = np.zeros(len(codes) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    content = np.frombuffer(b"".join(encoded[c] for c in codes.tolist()), dtype=np.uint8)
    chars = ak.contents.NumpyArray(content, parameters={"__array__": "char"})
    return ak.Array(
        ak.contents.ListOffsetArray(
            ak.index.Index64(offsets), chars, parameters={"__array__": "string"}
        )
    )


def _common_form(*, px, py, pz, E, ids, jet, file_jet, label, source, first_entry) -> ak.Array:
    n = len(jet[0])
    pt, eta, phi, mass = (np.asarray(x, dtype=np.float32) for x in jet)
    return ak.zip(
        {
            "px": ak.values_astype(px, np.float32),
            "py": ak.values_astype(py, np.float32),
            "pz": ak.values_astype(pz, np.float32),
            "E": ak.values_astype(E, np.float32),
            **ids,
            "jet_pt": pt,
            "jet_eta": eta,
            "jet_phi": phi,
            "jet_mass": mass,
            **{k: np.asarray(v, dtype=np.float32) for k, v in file_jet.items()},
            "label": string_array(label),
            "source": string_array(np.full(n, source)),
            "entry": np.arange(first_entry, first_entry + n, dtype=np.int64),
        },
        depth_limit=1,
    )
