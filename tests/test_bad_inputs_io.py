"""Every bad input file is one line naming the file (``InputError``), raised by what the
recluster path calls first (``detect_format``, ``count_jets``, then ``iter_jets``), never an
error from inside uproot or h5py. Each bad file is built here, from the real AOJ file or
from small uproot/h5py writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import pytest
import uproot

from jetevo.errors import InputError, JetevoError
from jetevo.io.readers import count_jets, detect_format, iter_jets

REAL_AOJ = Path(__file__).parent / "data" / "2016H_job0_mini.h5"
BASKET = 500  # entries per basket of the JetClass files written here


def one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}: "), msg
    assert isinstance(exc.value, InputError) and exc.value.path == str(path)
    return msg


def read_all(path: Path, **kw) -> list[ak.Array]:
    """What the recluster path does with a file: detect, count, then iterate."""
    detect_format(path)
    count_jets(path)
    return list(iter_jets(path, **kw))


# ---------------------------------------------------------------- JetClass (ROOT)


def jetclass_file(path: Path, n: int = 2000, part=None, jet=None, seed: int = 0) -> Path:
    """A JetClass-layout file (counted part_* arrays, several baskets per branch);
    ``part``/``jet``: branches to replace or add, by name."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 40, n)
    total = int(counts.sum())
    pt = rng.exponential(20, total) + 0.5
    eta, phi = rng.normal(0, 0.3, total), rng.normal(0, 0.3, total)
    p = {
        "px": pt * np.cos(phi),
        "py": pt * np.sin(phi),
        "pz": pt * np.sinh(eta),
        "energy": pt * np.cosh(eta),
        "charge": rng.integers(-1, 2, total),
    }
    particles = {
        k: ak.unflatten(v.astype(np.float32), counts)
        for k, v in p.items()
        if f"part_{k}" not in (part or {})
    }
    data = {
        "part": ak.zip(particles),  # branches part_px, ... counted by npart
        **{
            f"jet_{k}": np.full(n, v, np.float32)
            for k, v in (("pt", 500.0), ("eta", 0.0), ("phi", 0.0), ("energy", 520.0))
        },
        "label_QCD": np.ones(n, np.float32),
    }
    for name, value in (part or {}).items():
        data[name] = value(counts) if callable(value) else value
    data.update(jet or {})
    with uproot.recreate(path) as f:
        types = {
            k: v.type.content if isinstance(v, ak.Array) else np.dtype((v.dtype, v.shape[1:]))
            for k, v in data.items()
        }
        tree = f.mktree("tree", types)
        for s in range(0, n, BASKET):
            tree.extend({k: v[s : s + BASKET] for k, v in data.items()})
    return path


@pytest.fixture(scope="module")
def good_root(tmp_path_factory) -> Path:
    return jetclass_file(tmp_path_factory.mktemp("root") / "ZJetsToNuNu_000.root")


def test_good_jetclass_file_reads(good_root):
    jets = ak.concatenate(read_all(good_root, chunk_size=700))
    assert len(jets) == 2000 and ak.to_list(jets.entry) == list(range(2000))


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.9, 0.999])
def test_root_truncated(good_root, tmp_path, fraction):
    """Cut anywhere after the header (today: ``OSError: expected Chunk of length ...``
    over three lines, at count time or while reading baskets): one line, at count time."""
    data = good_root.read_bytes()
    path = tmp_path / "HToBB_001.root"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert detect_format(path) == "jetclass"
    with pytest.raises(InputError) as exc:
        count_jets(path)
    msg = one_line(exc, path)
    assert "truncated ROOT file" in msg and f"of the {len(data)} bytes" in msg
    with pytest.raises(InputError) as exc:
        next(iter_jets(path))
    one_line(exc, path)


def test_root_truncated_in_the_header(tmp_path):
    path = tmp_path / "TTBar_002.root"
    path.write_bytes(b"root\x00\x00\xf4\x4a")
    with pytest.raises(InputError) as exc:
        count_jets(path)
    assert "truncated ROOT file" in one_line(exc, path)


def test_root_damaged_basket_names_the_entries(good_root, tmp_path):
    """A damaged basket in an otherwise complete file (today: zlib's error, three lines
    for some damages, "entries from 0 on"): one line with the entries being read."""
    branch = uproot.open(good_root)["tree"]["part_px"]
    seek, size = int(branch.member("fBasketSeek")[1]), int(branch.member("fBasketBytes")[1])
    data = bytearray(good_root.read_bytes())
    data[seek + size // 2 : seek + size // 2 + 32] = b"\x55" * 32  # basket 1: entries 500-999
    path = tmp_path / "WToQQ_003.root"
    path.write_bytes(bytes(data))
    assert count_jets(path) == 2000
    chunks = iter_jets(path, chunk_size=400, start=0)
    assert len(next(chunks)) == 400  # entries 0-399 lie in basket 0
    with pytest.raises(InputError) as exc:
        next(chunks)
    msg = one_line(exc, path)
    assert "cannot read entries 400-799" in msg


def test_root_damaged_tree_record(good_root, tmp_path):
    key = uproot.open(good_root).key("tree")
    data = bytearray(good_root.read_bytes())
    start = key.fSeekKey + key.fKeylen
    data[start : start + 16] = b"\xa7" * 16
    path = tmp_path / "HToCC_004.root"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as exc:
        count_jets(path)
    assert "cannot read tree 'tree'" in one_line(exc, path)


def test_root_tree_is_a_histogram(tmp_path):
    """``tree`` that is a TH1D (today: ``TypeError: argument of type 'Model_TH1D_v3' is
    not iterable``)."""
    path = tmp_path / "HToGG_005.root"
    with uproot.recreate(path) as f:
        f["tree"] = np.histogram(np.arange(10.0), bins=5)
    with pytest.raises(InputError) as exc:
        count_jets(path)
    assert "'tree' is a TH1D, not a TTree" in one_line(exc, path)


def test_root_part_px_flat(tmp_path):
    """part_px with one number per jet (today: ``axis=1 exceeds the depth`` naming no
    file, while reading)."""
    path = jetclass_file(
        tmp_path / "HToBB_006.root", n=600, part={"part_px": np.ones(600, np.float32)}
    )
    with pytest.raises(InputError) as exc:
        count_jets(path)
    msg = one_line(exc, path)
    assert "part_px" in msg and "expected one list of numbers per jet" in msg


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda c: ak.unflatten(np.ones(int(c.sum()), np.bool_), c), "holds bool"),
        (lambda c: np.ones((len(c), 3), np.float32), "expected one list of numbers per jet"),
    ],
    ids=["bool", "fixed-size-array"],
)
def test_root_part_px_not_a_list_of_numbers(tmp_path, make, words):
    """part_px as bool (today: read as 0/1 momenta, silently) or as a fixed-size array."""
    path = jetclass_file(tmp_path / "HToWW4Q_007.root", n=600, part={"part_px": make})
    with pytest.raises(InputError) as exc:
        count_jets(path)
    msg = one_line(exc, path)
    assert "part_px" in msg and words in msg


def test_root_jet_column_jagged(tmp_path):
    path = jetclass_file(
        tmp_path / "TTBarLep_008.root",
        n=600,
        jet={"jet_pt": ak.unflatten(np.ones(1200, np.float32), np.full(600, 2))},
    )
    with pytest.raises(InputError) as exc:
        count_jets(path)
    assert "jet_pt" in one_line(exc, path)


def test_root_particle_branches_of_different_lengths(tmp_path):
    """part_py counted by a counter of its own and one particle short in every jet: the
    momenta of a jet would not line up."""
    path = jetclass_file(
        tmp_path / "ZToQQ_009.root",
        n=600,
        part={"part_py": lambda c: ak.unflatten(np.ones(int(c.sum()) - len(c), np.float32), c - 1)},
    )
    assert count_jets(path) == 600
    with pytest.raises(InputError) as exc:
        list(iter_jets(path, chunk_size=250))
    msg = one_line(exc, path)
    assert "entries 0-249" in msg and "part_py" in msg


# ---------------------------------------------------------------- AspenOpenJets (HDF5)


def aoj_file(path: Path, **datasets) -> Path:
    """An AOJ-layout file of the real file's first 20 jets; ``datasets`` replace or add
    (a value of None: the name becomes a group)."""
    with h5py.File(REAL_AOJ, "r") as real:
        data = {k: real[k][:20] for k in ("PFCands", "jet_kinematics", "event_info")}
    data.update(datasets)
    with h5py.File(path, "w") as f:
        for name, value in data.items():
            if value is None:
                f.create_group(name)
            else:
                f.create_dataset(name, data=value)
    return path


def test_good_aoj_file_reads(tmp_path):
    jets = ak.concatenate(read_all(aoj_file(tmp_path / "RunG_batch0.h5"), chunk_size=7))
    assert len(jets) == 20


@pytest.mark.parametrize(
    "datasets, words",
    [
        ({"jet_kinematics": np.zeros(20, np.float32)}, "jet_kinematics has shape (20,)"),
        ({"jet_kinematics": np.zeros((20, 2), np.float32)}, "jet_kinematics has shape (20, 2)"),
        ({"jet_kinematics": np.zeros((20, 4), "S4")}, "'jet_kinematics' holds |S4"),
        ({"PFCands": None}, "'PFCands' is a group, expected a dataset"),
        ({"PFCands": np.full((20, 150, 11), b"ab", "S2")}, "'PFCands' holds |S2, expected numbers"),
        ({"PFCands": np.ones((20, 150, 11), np.bool_)}, "'PFCands' holds bool, expected numbers"),
        ({"PFCands": np.ones((20, 150), np.float32)}, "PFCands has shape (20, 150)"),
    ],
    ids=[
        "kin-1d",
        "kin-2-columns",
        "kin-strings",
        "pfcands-group",
        "pfcands-strings",
        "pfcands-bool",
        "pfcands-2d",
    ],
)
def test_aoj_bad_layout(tmp_path, datasets, words):
    """Today: ``IndexError`` (jet_kinematics 1-D or 2 columns), ``AttributeError: 'Group'
    object has no attribute 'shape'``, ``ValueError: could not convert string to float``,
    or bool candidates read as numbers; now one line at count time."""
    path = aoj_file(tmp_path / "RunH_batch1.h5", **datasets)
    assert detect_format(path) == "aoj"
    with pytest.raises(InputError) as exc:
        count_jets(path)
    assert words in one_line(exc, path)
    with pytest.raises(InputError) as exc:
        next(iter_jets(path))
    one_line(exc, path)


def corrupt_chunk(tmp_path: Path) -> Path:
    """The real file with garbage in the middle of one gzip chunk of PFCands (jets 0-24)."""
    return corrupt_real_file(tmp_path / "RunG_batch7.h5")


def corrupt_real_file(path: Path) -> Path:
    """The real AOJ file at ``path`` with garbage inside one gzip chunk of PFCands (jets
    0-24): the damage is met only when those jets are read, not when the file is planned."""
    shutil.copyfile(REAL_AOJ, path)
    with h5py.File(path, "r") as f:
        info = f["PFCands"].id.get_chunk_info(5)
    assert info.chunk_offset[0] == 0
    with path.open("r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(b"\xff" * 16)
    return path


def test_aoj_corrupt_gzip_chunk(tmp_path):
    """Today: ``OSError: Can't synchronously read data (filter returned failure during
    read)`` from h5py, naming no file."""
    path = corrupt_chunk(tmp_path)
    assert count_jets(path) == 100  # the damage is met only when the jets are read
    assert len(next(iter_jets(path, start=40, chunk_size=20))) == 20  # other chunks read
    with pytest.raises(InputError) as exc:
        list(iter_jets(path, chunk_size=20))
    msg = one_line(exc, path)
    assert "cannot read entries 0-19" in msg and "filter returned failure" in msg


def test_corrupt_input_leaves_no_half_written_output(tmp_path):
    from jetevo.trees.run import recluster_files

    path = corrupt_chunk(tmp_path)
    out = tmp_path / "trees"
    with pytest.raises(JetevoError) as exc:
        recluster_files([path], out, progress=False, chunk_size=20)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)
    assert not list(out.glob("*.parquet")) and not list(out.glob(".*.tmp"))
