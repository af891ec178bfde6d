"""Readers against a real AspenOpenJets file (values read off with h5py), and files
written by ``simulate`` against SCHEMAS.md and the common form."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import pytest
import uproot

from jetevo.io.readers import count_jets, detect_format, iter_jets
from jetevo.io.writers import CHARGED_HADRON_MASS, PF_PDGIDS, pf_ids

# 100 real CMS 2016H jets in the AOJ layout, written by the AOJ production code (provenance:
# tests/data/README.md). Our writer never touched it, so a misreading of the real layout
# shared by our writer and reader cannot pass the tests below.
REAL_AOJ = Path(__file__).parent / "data" / "2016H_job0_mini.h5"

JETCLASS_BRANCHES = {
    **{
        f"part_{k}": "float32"
        for k in (
            "px",
            "py",
            "pz",
            "energy",
            "deta",
            "dphi",
            "d0val",
            "d0err",
            "dzval",
            "dzerr",
            "charge",
        )
    },
    **{
        f"part_is{k}": "int32"
        for k in ("ChargedHadron", "NeutralHadron", "Photon", "Electron", "Muon")
    },
    "label_QCD": "float32",
    **{f"label_{k}": "bool" for k in ("Hbb", "Hcc", "Hgg", "H4q", "Hqql")},
    **{f"label_{k}": "int32" for k in ("Zqq", "Wqq", "Tbqq", "Tbl")},
    **{
        f"jet_{k}": "float32"
        for k in (
            "pt",
            "eta",
            "phi",
            "energy",
            "nparticles",
            "sdmass",
            "tau1",
            "tau2",
            "tau3",
            "tau4",
        )
    },
}


def test_jetclass_layout(sim_dir):
    path = sim_dir / "jetclass" / "TTBar_000.root"
    tree = uproot.open(path)["tree"]
    arrays = tree.arrays(list(JETCLASS_BRANCHES), library="ak")
    for name, dtype in JETCLASS_BRANCHES.items():
        leaf = ak.flatten(arrays[name], axis=None) if name.startswith("part_") else arrays[name]
        assert str(ak.to_numpy(leaf).dtype) == dtype, name
    assert np.all(ak.to_numpy(arrays["label_Tbqq"]) == 1)
    assert np.all(ak.to_numpy(arrays["label_QCD"]) == 0)
    pt = np.hypot(arrays["part_px"], arrays["part_py"])
    assert ak.all(pt[:, :-1] >= pt[:, 1:]), "particles must be pT-ordered"
    jet_pt = ak.to_numpy(arrays["jet_pt"])
    assert np.all((jet_pt > 500) & (jet_pt < 1000)) and np.all(
        np.abs(ak.to_numpy(arrays["jet_eta"])) < 2
    )
    # part_deta is sign-flipped with the jet
    eta = np.arcsinh(arrays["part_pz"] / pt)
    jet_eta = arrays["jet_eta"]
    expected = ak.where(jet_eta > 0, eta - jet_eta, -(eta - jet_eta))
    assert np.allclose(
        ak.to_numpy(ak.flatten(arrays["part_deta"])), ak.to_numpy(ak.flatten(expected)), atol=1e-3
    )
    sd = ak.to_numpy(arrays["jet_sdmass"])
    assert 120 < np.median(sd) < 220, "hadronic top jets peak near the top mass"


@pytest.mark.parametrize("which", ["simulated", "real"])
def test_aoj_layout(request, which):
    """Our writer's AOJ file and the real one have the same layout (SCHEMAS.md)."""
    if which == "real":
        path = REAL_AOJ
    else:
        path = request.getfixturevalue("sim_dir") / "aoj" / "RunG_batch0.h5"
    with h5py.File(path, "r") as f:
        assert f["event_info"].dtype == np.int64 and f["event_info"].shape[1] == 3
        assert f["jet_kinematics"].dtype == np.float32 and f["jet_kinematics"].shape[1] == 4
        assert f["jet_tagging"].dtype == np.float32 and f["jet_tagging"].shape[1] == 13
        cands = f["PFCands"][:]
        assert cands.dtype == np.float32 and cands.shape[1:] == (150, 11)
        assert f["PFCands"].compression == "gzip"
        kin = f["jet_kinematics"][:]
        tagging = f["jet_tagging"][:]
    real = cands[:, :, 3] > 0
    assert np.all(real.sum(axis=1) == tagging[:, 0].clip(max=150))
    assert np.all(cands[~real] == 0), "padding is all zeros"
    n = real.sum(axis=1)
    assert np.all(real == (np.arange(150) < n[:, None])), "real candidates come first"
    assert np.all(kin[:, 0] > 300) and np.all(np.abs(kin[:, 1]) < 2.5)


# ---------------------------------------------------------------- the real AOJ file

# read off the file with h5py (rows: px, py, pz, E, d0, d0Err, dz, dzErr, charge, pdgId,
# puppiWeight); float32 values, written out exactly
# fmt: off
REAL_N_JETS = 100
REAL_COUNTS_FIRST = [30, 34, 23, 40, 70, 55, 77, 25]
REAL_COUNTS_LAST = [34, 42, 11]  # jets 97, 98, 99
REAL_N_CANDIDATES = 4585
REAL_CANDIDATES = {  # (jet, candidate) -> the stored row
    (0, 0): [64.82647705078125, 34.77022933959961, -62.17525100708008, 96.3182373046875,
             -1.0, -1.0, -1.0, -1.0, 0.0, 22.0, 1.0],
    (0, 1): [53.38717269897461, 29.250221252441406, -50.33784866333008, 78.99166870117188,
             0.0010957717895507812, 0.0014858245849609375, 0.002471923828125,
             0.003387451171875, -1.0, -211.0, 1.0],
    (0, 29): [0.28501006960868835, 0.03465615212917328, -0.11744601279497147,
              0.34013667702674866, -1.0, -1.0, -1.0, -1.0, 1.0, 211.0, 1.0],
    (1, 0): [-52.82119369506836, -32.58335876464844, -239.40890502929688,
             247.32244873046875, 0.00107574462890625, 0.0020503997802734375,
             -0.0015420913696289062, 0.0018930435180664062, -1.0, -211.0, 1.0],
    (99, 0): [157.18226623535156, 88.225830078125, -330.16009521484375, 376.15924072265625,
              -0.0002295970916748047, 0.0009493827819824219, -0.0019197463989257812,
              0.0020160675048828125, 1.0, 211.0, 1.0],
    (99, 10): [0.2566530108451843, 0.3446165919303894, -1.6417242288589478,
               1.7027499675750732, -1.0, -1.0, -1.0, -1.0, 1.0, 211.0, 1.0],
}
REAL_KINEMATICS = {  # jet -> pt, eta, phi, msoftdrop
    0: [348.0, -0.7796630859375, 0.4793701171875, 8.375],
    1: [304.5, -2.03271484375, -2.6162109375, 2.55078125],
    97: [458.75, 0.8240966796875, 3.08544921875, 42.84375],
    98: [359.25, -0.2467041015625, -1.114990234375, 3.75],
    99: [324.5, -1.380859375, 0.5177001953125, 1.5908203125],
}
REAL_EVENTS = {  # jet -> run, lumiBlock, event (jets 0 and 1 come from one event)
    0: [281693, 1401, 2611725178],
    1: [281693, 1401, 2611725178],
    99: [281693, 1401, 2611387836],
}
REAL_JET0_CHARGE = [0, -1, -1, 1, -1, -1, -1, 1, 1, -1, 0, 1, 0, 1, 1,
                    1, 0, 0, 0, 0, -1, -1, 1, 1, 1, -1, 0, 0, -1, 1]
REAL_JET0_PDGID = [22, -211, -211, 211, -211, -211, -211, 211, 211, -211, 22, 211, 22, 211, 211,
                   211, 22, 22, 22, 130, -211, -211, 211, 211, 211, -211, 22, 22, -211, 211]
REAL_PDGID_COUNTS = {-211: 1357, -13: 3, -11: 5, 11: 8, 13: 1, 22: 1483, 130: 340, 211: 1388}
# fmt: on
# jet 0: invariant mass and pT of its 30 candidates' four-momentum sum (float64 sums)
REAL_JET0_CAND_MASS = 29.29963436509652
REAL_JET0_CAND_PT = 313.10375664785033


def test_real_aoj_file_holds_the_known_values():
    """The reference values above are what h5py reads from the file (so a changed file, or
    a misreading in the literals, shows here and not as a reader failure)."""
    with h5py.File(REAL_AOJ, "r") as f:
        cands = f["PFCands"][:]
        kin = f["jet_kinematics"][:]
        events = f["event_info"][:]
        assert cands.shape == (REAL_N_JETS, 150, 11) and kin.shape == (REAL_N_JETS, 4)
        assert f["jet_tagging"].shape == (REAL_N_JETS, 13)
        n_const = f["jet_tagging"][:, 0]
    n = (cands[:, :, 3] > 0).sum(axis=1)
    assert n[:8].tolist() == REAL_COUNTS_FIRST and n[-3:].tolist() == REAL_COUNTS_LAST
    assert int(n.sum()) == REAL_N_CANDIDATES and np.array_equal(n_const, n)
    for (j, i), row in REAL_CANDIDATES.items():
        assert np.array_equal(cands[j, i], np.array(row, np.float32)), (j, i)
    for j, row in REAL_KINEMATICS.items():
        assert np.array_equal(kin[j], np.array(row, np.float32)), j
    for j, row in REAL_EVENTS.items():
        assert events[j].tolist() == row, j
    assert cands[0, :30, 8].tolist() == REAL_JET0_CHARGE
    assert cands[0, :30, 9].tolist() == REAL_JET0_PDGID
    ids, counts = np.unique(cands[:, :, 9][cands[:, :, 3] > 0], return_counts=True)
    assert dict(zip(ids.astype(int).tolist(), counts.tolist(), strict=True)) == REAL_PDGID_COUNTS
    s = cands[0, :30, :4].astype(np.float64).sum(axis=0)
    assert np.sqrt(s[3] ** 2 - s[0] ** 2 - s[1] ** 2 - s[2] ** 2) == pytest.approx(
        REAL_JET0_CAND_MASS, rel=1e-12
    )
    assert np.hypot(s[0], s[1]) == pytest.approx(REAL_JET0_CAND_PT, rel=1e-12)


def test_reader_returns_the_real_aoj_values():
    """The reader gives back exactly what the real file holds, across chunk boundaries."""
    assert detect_format(REAL_AOJ) == "aoj" and count_jets(REAL_AOJ) == REAL_N_JETS
    chunks = list(iter_jets(REAL_AOJ, chunk_size=32))
    assert [len(c) for c in chunks] == [32, 32, 32, 4]
    jets = ak.concatenate(chunks)
    assert len(jets) == REAL_N_JETS
    counts = ak.to_numpy(ak.num(jets.px)).tolist()
    assert counts[:8] == REAL_COUNTS_FIRST and counts[-3:] == REAL_COUNTS_LAST
    assert sum(counts) == REAL_N_CANDIDATES
    for k in ("px", "py", "pz", "E"):
        assert str(ak.flatten(jets[k]).type.content) == "float32", k
    assert str(ak.flatten(jets.charge).type.content) == "int8"
    assert str(ak.flatten(jets.pid).type.content) == "int32"
    for (j, i), row in REAL_CANDIDATES.items():
        got = [float(jets[j][k][i]) for k in ("px", "py", "pz", "E")]
        assert got == [float(np.float32(x)) for x in row[:4]], (j, i)
        assert int(jets[j].charge[i]) == row[8] and int(jets[j].pid[i]) == row[9], (j, i)
    assert ak.to_list(jets[0].charge) == REAL_JET0_CHARGE
    assert ak.to_list(jets[0].pid) == REAL_JET0_PDGID
    ids, n_ids = np.unique(ak.to_numpy(ak.flatten(jets.pid)), return_counts=True)
    assert dict(zip(ids.tolist(), n_ids.tolist(), strict=True)) == REAL_PDGID_COUNTS
    # jet columns: the candidates' four-momentum sum (what a tree's root carries), not the
    # file's jet_kinematics, whose pt is the corrected jet pT (348.0 against 313.1 for jet 0)
    # and whose mass column is the soft-drop mass (8.375 for jet 0); the file's values are
    # kept under their own names
    assert float(jets.jet_pt[0]) == pytest.approx(REAL_JET0_CAND_PT, rel=1e-6)
    assert float(jets.jet_mass[0]) == pytest.approx(REAL_JET0_CAND_MASS, rel=1e-6)
    for j, row in REAL_KINEMATICS.items():
        got = [float(jets[f"file_jet_{k}"][j]) for k in ("pt", "eta", "phi", "msoftdrop")]
        assert got == [float(np.float32(x)) for x in row], j
    assert ak.all(jets.label == "unlabeled")
    assert ak.to_list(jets.entry) == list(range(REAL_N_JETS))
    assert ak.all(jets.source == str(REAL_AOJ))
    # a slice: entries keep their file index; stop beyond the end is clipped
    tail = ak.concatenate(list(iter_jets(REAL_AOJ, start=97, stop=1000, particle_ids=False)))
    assert ak.to_list(tail.entry) == [97, 98, 99]
    assert ak.to_numpy(ak.num(tail.px)).tolist() == REAL_COUNTS_LAST
    assert "pid" not in tail.fields and "charge" not in tail.fields
    assert float(tail.E[2][10]) == float(np.float32(REAL_CANDIDATES[(99, 10)][3]))
    assert list(iter_jets(REAL_AOJ, start=100)) == []


def test_reader_matches_h5py_on_every_real_candidate():
    """Every real candidate (E > 0, SCHEMAS.md) in stored order, and nothing else."""
    with h5py.File(REAL_AOJ, "r") as f:
        cands = f["PFCands"][:]
    real = cands[:, :, 3] > 0
    jets = ak.concatenate(list(iter_jets(REAL_AOJ, chunk_size=17)))
    assert np.array_equal(ak.to_numpy(ak.num(jets.px)), real.sum(axis=1))
    for col, k in enumerate(("px", "py", "pz", "E")):
        assert np.array_equal(ak.to_numpy(ak.flatten(jets[k])), cands[real][:, col]), k
    assert np.array_equal(ak.to_numpy(ak.flatten(jets.charge)), cands[real][:, 8].astype(np.int8))
    assert np.array_equal(ak.to_numpy(ak.flatten(jets.pid)), cands[real][:, 9].astype(np.int32))


def _candidate_masses(cands: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mass^2, pdgId, float32 rounding scale of mass^2) of the real candidates of a
    PFCands array: float32 E and p leave E^2 - p^2 uncertain by about eps * E^2."""
    rows = cands[cands[:, :, 3] > 0].astype(np.float64)
    m2 = rows[:, 3] ** 2 - (rows[:, :3] ** 2).sum(axis=1)
    return m2, rows[:, 9].astype(int), 4 * float(np.finfo(np.float32).eps) * rows[:, 3] ** 2


def test_real_aoj_particle_flow_facts():
    """What the real file shows about particle-flow candidates (docs/tree_format.md,
    "Real-layout facts"), which our simulated AOJ writer follows."""
    with h5py.File(REAL_AOJ, "r") as f:
        cands = f["PFCands"][:]
    rows = cands[cands[:, :, 3] > 0]
    pid, charge = rows[:, 9].astype(int), rows[:, 8]
    assert set(pid.tolist()) <= set(PF_PDGIDS)
    assert np.all(np.sign(pid[np.abs(pid) == 211]) == charge[np.abs(pid) == 211])
    assert np.all(
        -np.sign(pid[np.isin(np.abs(pid), (11, 13))]) == charge[np.isin(np.abs(pid), (11, 13))]
    )
    neutral = charge == 0
    assert np.all(rows[neutral][:, 4:8] == -1), "neutral candidates: d0, d0Err, dz, dzErr = -1"
    # some charged hadrons (soft ones: 153 of 2745 here) carry -1 too; never leptons
    no_track = np.all(rows[:, 4:8] == -1, axis=1)
    assert (
        0
        < np.count_nonzero(no_track & (np.abs(pid) == 211))
        < 0.1 * np.count_nonzero(np.abs(pid) == 211)
    )
    assert not np.any(no_track & np.isin(np.abs(pid), (11, 13)))
    m2, pid, tol = _candidate_masses(cands)
    # charged hadrons: the pion mass as NanoAOD stores it (0.13957 to 10 mantissa bits:
    # 0.1395264), to float32 rounding for all but 34 of 2745 (those a few MeV off)
    ch = np.abs(pid) == 211
    assert np.sqrt(np.median(m2[ch])) == pytest.approx(0.1395264, abs=1e-6)
    assert np.mean(np.abs(m2[ch] - 0.1395264**2) <= tol[ch] + 1e-7) > 0.98
    for massless in (130, 22):  # neutral hadrons and photons
        sel = pid == massless
        assert np.all(np.abs(m2[sel]) <= tol[sel] + 1e-7), massless


def test_reader_jet_columns_are_the_constituent_sum_on_the_real_file():
    with h5py.File(REAL_AOJ, "r") as f:
        cands = f["PFCands"][:]
        kin = f["jet_kinematics"][:]
    sums = np.where((cands[:, :, 3] > 0)[:, :, None], cands[:, :, :4], 0).astype(np.float64)
    s = sums.sum(axis=1)
    pt = np.hypot(s[:, 0], s[:, 1])
    jets = ak.concatenate(list(iter_jets(REAL_AOJ, chunk_size=33, particle_ids=False)))
    assert np.allclose(ak.to_numpy(jets.jet_pt), pt, rtol=1e-6)
    assert np.allclose(ak.to_numpy(jets.jet_eta), np.arcsinh(s[:, 2] / pt), atol=1e-6)
    assert np.allclose(ak.to_numpy(jets.jet_phi), np.arctan2(s[:, 1], s[:, 0]), atol=1e-6)
    mass = np.sqrt(np.maximum(s[:, 3] ** 2 - (s[:, :3] ** 2).sum(axis=1), 0))
    assert np.allclose(ak.to_numpy(jets.jet_mass), mass, rtol=1e-5)
    # the file's own values, exactly, under their own names
    for i, k in enumerate(("pt", "eta", "phi", "msoftdrop")):
        assert np.array_equal(ak.to_numpy(jets[f"file_jet_{k}"]), kin[:, i]), k
    # the file's pt is the corrected jet pT: about 1.13 times the candidates' sum
    assert 1.08 < float(np.min(kin[:, 0] / pt)) and float(np.max(kin[:, 0] / pt)) < 1.21
    assert float(np.mean(kin[:, 0] / pt)) == pytest.approx(1.13, abs=0.01)


def test_pf_ids():
    pid = np.array([321, -321, 2212, -2212, 2112, -2112, 130, 22, 11, -11, 13, -13, 211, -211])
    charge = np.array([1, -1, 1, -1, 0, 0, 0, 0, -1, 1, -1, 1, 1, -1])
    expected = [211, -211, 211, -211, 130, 130, 130, 22, 11, -11, 13, -13, 211, -211]
    assert pf_ids(pid, charge).tolist() == expected


def test_simulated_aoj_is_particle_flow(sim_dir):
    """Our simulated AOJ file holds what real ones do: only the particle-flow ids, signed by
    the charge; pion-mass charged hadrons and massless neutral hadrons; d0/dz = -1 for
    neutral candidates."""
    with h5py.File(sim_dir / "aoj" / "RunG_batch0.h5", "r") as f:
        cands = f["PFCands"][:]
    rows = cands[cands[:, :, 3] > 0]
    pid, charge = rows[:, 9].astype(int), rows[:, 8]
    assert set(pid.tolist()) <= set(PF_PDGIDS)
    assert {211, -211, 130, 22} <= set(pid.tolist())
    hadron = np.abs(pid) == 211
    assert np.all(np.sign(pid[hadron]) == charge[hadron])
    assert np.all((charge == 0) == np.isin(pid, (22, 130)))
    assert np.all(rows[charge == 0][:, 4:8] == -1) and np.all(rows[charge != 0][:, 4:8] == 0)
    m2, pid, tol = _candidate_masses(cands)
    ch = np.abs(pid) == 211
    assert np.all(np.abs(m2[ch] - CHARGED_HADRON_MASS**2) <= tol[ch] + 1e-7)
    sel = pid == 130
    assert sel.any() and np.all(np.abs(m2[sel]) <= tol[sel] + 1e-7)


def test_readers_common_form(sim_dir):
    for path, label in [
        (sim_dir / "jetclass" / "TTBar_000.root", "Tbqq"),
        (sim_dir / "jetclass" / "ZJetsToNuNu_000.root", "QCD"),
        (sim_dir / "aoj" / "RunG_batch0.h5", "unlabeled"),
    ]:
        n = count_jets(path)
        chunks = list(iter_jets(path, chunk_size=7))
        jets = ak.concatenate(chunks)
        assert len(jets) == n and len(chunks) == -(-n // 7)
        assert set(jets.fields) >= {
            "px",
            "py",
            "pz",
            "E",
            "charge",
            "pid",
            "jet_pt",
            "jet_eta",
            "jet_phi",
            "jet_mass",
            "label",
            "source",
            "entry",
        }
        assert ak.all(jets.label == label)
        assert ak.to_list(jets.entry) == list(range(n))
        assert ak.all(jets.source == str(path))
        assert ak.all(ak.num(jets.px) > 0)
        assert detect_format(path) == ("jetclass" if path.suffix == ".root" else "aoj")
        # jet pT is the constituent sum; in our simulated files the file's own jet pT is too
        # (no detector, E-scheme anti-kt; real AOJ files store the corrected jet pT instead)
        pt_sum = np.hypot(
            ak.to_numpy(ak.sum(jets.px, axis=1)), ak.to_numpy(ak.sum(jets.py, axis=1))
        )
        assert np.allclose(pt_sum, ak.to_numpy(jets.jet_pt), rtol=1e-5)
        assert np.allclose(pt_sum, ak.to_numpy(jets.file_jet_pt), rtol=1e-3)
        if path.suffix == ".root":
            # the file's own jet columns, as stored, under their own names
            tree = uproot.open(path)["tree"]
            for k in ("jet_pt", "jet_eta", "jet_phi", "jet_energy"):
                assert np.array_equal(ak.to_numpy(jets[f"file_{k}"]), tree[k].array(library="np"))
            e_sum = ak.to_numpy(ak.sum(ak.values_astype(jets.E, np.float64), axis=1))
            p2 = sum(
                ak.to_numpy(ak.sum(ak.values_astype(jets[k], np.float64), axis=1)) ** 2
                for k in ("px", "py", "pz")
            )
            mass = np.sqrt(np.maximum(e_sum**2 - p2, 0))
            assert np.allclose(ak.to_numpy(jets.jet_mass), mass, rtol=1e-5, atol=1e-3)
        else:
            assert "file_jet_msoftdrop" in jets.fields
        pids = set(np.abs(ak.to_numpy(ak.flatten(jets.pid))).tolist())
        assert pids <= {11, 13, 22, 130, 211}


def test_simulate_is_deterministic(tmp_path):
    from jetevo.io.simulate import simulate

    a = simulate("qcd", 5, tmp_path / "a", seed=3, progress=False)
    b = simulate("qcd", 5, tmp_path / "b", seed=3, progress=False, workers=2)
    ja, jb = (ak.concatenate(list(iter_jets(p))) for p in (a, b))
    assert ak.to_list(ja.px) == ak.to_list(jb.px)
