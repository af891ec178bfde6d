"""Files written by ``simulate`` follow SCHEMAS.md and read back into the common form."""

from __future__ import annotations

import awkward as ak
import h5py
import numpy as np
import uproot

from jetevo.io.readers import count_jets, detect_format, iter_jets

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


def test_aoj_layout(sim_dir):
    path = sim_dir / "aoj" / "RunG_batch0.h5"
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
    assert np.all(kin[:, 0] > 300) and np.all(np.abs(kin[:, 1]) < 2.5)


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
        # jet pT from the file agrees with the constituent sum (no detector, E-scheme anti-kt)
        pt_sum = np.hypot(
            ak.to_numpy(ak.sum(jets.px, axis=1)), ak.to_numpy(ak.sum(jets.py, axis=1))
        )
        assert np.allclose(pt_sum, ak.to_numpy(jets.jet_pt), rtol=1e-3) or label == "unlabeled"
        pids = set(np.abs(ak.to_numpy(ak.flatten(jets.pid))).tolist())
        assert pids <= {11, 13, 22, 130, 211} or label == "unlabeled"
        assert detect_format(path) in ("jetclass", "aoj")


def test_simulate_is_deterministic(tmp_path):
    from jetevo.io.simulate import simulate

    a = simulate("qcd", 5, tmp_path / "a", seed=3, progress=False)
    b = simulate("qcd", 5, tmp_path / "b", seed=3, progress=False, workers=2)
    ja, jb = (ak.concatenate(list(iter_jets(p))) for p in (a, b))
    assert ak.to_list(ja.px) == ak.to_list(jb.px)
