"""Readers for JetClass (ROOT, uproot) and AspenOpenJets (HDF5, h5py).

Both stream in chunks of jets and yield one common in-memory form, an awkward
array with one record per jet:

- ``px, py, pz, E`` (jagged float32, GeV), and unless ``particle_ids=False``, ``charge``
  (jagged int8) and ``pid`` (jagged int32; JetClass stores particle-type flags, which are
  mapped back to PDG ids). Reclustering needs only the four-momenta, and skipping the six
  extra jagged JetClass branches more than halves the reading time;
- ``jet_pt, jet_eta, jet_phi, jet_mass`` (float32);
- ``label`` (class name: ``"QCD"``, ``"Tbqq"``, ...; AOJ is unlabelled data: ``"unlabeled"``);
- ``source`` (file path) and ``entry`` (jet index in that file): provenance.

The file format is chosen by content (magic bytes), not by extension. Layouts follow
``SCHEMAS.md`` exactly; only the particle four-momenta and the jet kinematics are
required, so auxiliary branches may be absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import awkward as ak
import numpy as np

from jetevo import kinematics
from jetevo.errors import InputError

ROOT_MAGIC = b"root"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

JETCLASS_TREE = "tree"
JETCLASS_REQUIRED = (
    "part_px",
    "part_py",
    "part_pz",
    "part_energy",
    "jet_pt",
    "jet_eta",
    "jet_phi",
    "jet_energy",
)
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
# PFCands columns
AOJ_PX, AOJ_PY, AOJ_PZ, AOJ_E, AOJ_CHARGE, AOJ_PDGID = 0, 1, 2, 3, 8, 9


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


class _open_jetclass:
    """Context manager that opens a JetClass file and checks its tree and branches."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __enter__(self):
        import uproot

        try:
            self.file = uproot.open(self.path)
        except Exception as exc:  # uproot raises many types for damaged files
            raise InputError(
                self.path, f"not a readable ROOT file ({type(exc).__name__}: {exc})"
            ) from None
        if JETCLASS_TREE not in self.file:
            keys = ", ".join(sorted({k.split(";")[0] for k in self.file.keys()})) or "none"
            self.file.close()
            raise InputError(self.path, f"no TTree named '{JETCLASS_TREE}' (found: {keys})")
        tree = self.file[JETCLASS_TREE]
        missing = [b for b in JETCLASS_REQUIRED if b not in tree]
        if missing:
            self.file.close()
            raise InputError(
                self.path, f"tree '{JETCLASS_TREE}' is missing branch(es) {', '.join(missing)}"
            )
        return tree

    def __exit__(self, *exc):
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
        while True:
            try:
                item = next(chunks, None)
            except Exception as exc:
                raise InputError(
                    path, f"cannot read entries from {start} on ({type(exc).__name__}: {exc})"
                ) from None
            if item is None:
                return
            arrays, report = item
            begin = report.tree_entry_start
            yield _jetclass_common(arrays, path, begin, particle_ids)


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
    pt, eta, phi, energy = (
        ak.to_numpy(a[k]).astype(np.float64) for k in ("jet_pt", "jet_eta", "jet_phi", "jet_energy")
    )
    pz = pt * np.sinh(eta)
    mass = np.sqrt(np.maximum(energy**2 - pt**2 - pz**2, 0.0))
    return _common_form(
        px=a["part_px"],
        py=a["part_py"],
        pz=a["part_pz"],
        E=a["part_energy"],
        ids=ids,
        jet=(pt, eta, phi, mass),
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


class _open_aoj:
    """Context manager that opens an AOJ file and checks its datasets."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __enter__(self):
        import h5py

        try:
            self.file = h5py.File(self.path, "r")
        except Exception as exc:
            raise InputError(
                self.path, f"not a readable HDF5 file ({type(exc).__name__}: {exc})"
            ) from None
        missing = [d for d in AOJ_REQUIRED if d not in self.file]
        if missing:
            self.file.close()
            raise InputError(
                self.path,
                f"missing dataset(s) {', '.join(missing)} (AspenOpenJets layout expected)",
            )
        shape = self.file["PFCands"].shape
        if len(shape) != 3 or shape[2] != 11:
            self.file.close()
            raise InputError(self.path, f"PFCands has shape {shape}, expected (N, 150, 11)")
        if self.file["jet_kinematics"].shape[0] != shape[0]:
            self.file.close()
            raise InputError(self.path, "PFCands and jet_kinematics have different numbers of jets")
        return self.file

    def __exit__(self, *exc):
        self.file.close()


def _iter_aoj(
    path: Path, chunk_size: int, start: int, stop: int | None, particle_ids: bool
) -> Iterator[ak.Array]:
    with _open_aoj(path) as h5:
        n = h5["PFCands"].shape[0]
        stop = n if stop is None else min(stop, n)
        for begin in range(start, stop, chunk_size):
            end = min(begin + chunk_size, stop)
            cands = np.asarray(h5["PFCands"][begin:end], dtype=np.float32)
            kin = np.asarray(h5["jet_kinematics"][begin:end], dtype=np.float64)
            yield _aoj_common(cands, kin, path, begin, particle_ids)


def _aoj_common(
    cands: np.ndarray, kin: np.ndarray, path: Path, first_entry: int, particle_ids: bool
) -> ak.Array:
    # Zero padding is an all-zero four-momentum; anything else (even E <= 0 or NaN) is a
    # real entry, so that bad candidates are seen and counted downstream, not hidden.
    real = np.any(cands[:, :, :4] != 0, axis=2)
    counts = real.sum(axis=1)
    flat = cands[real]  # row-major: jets in order, candidates in stored order
    pt, eta, phi = kin[:, 0], kin[:, 1], kin[:, 2]
    p4 = flat[:, :4].astype(np.float64)
    sums = (
        np.add.reduceat(p4, np.r_[0, np.cumsum(counts)[:-1]], axis=0)
        if len(flat)
        else np.zeros((len(counts), 4))
    )
    sums[counts == 0] = 0.0
    mass = kinematics.mass(sums)

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
        jet=(pt, eta, phi, mass),
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


def _common_form(*, px, py, pz, E, ids, jet, label, source, first_entry) -> ak.Array:
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
            "label": string_array(label),
            "source": string_array(np.full(n, source)),
            "entry": np.arange(first_entry, first_entry + n, dtype=np.int64),
        },
        depth_limit=1,
    )
