"""Writers for the real dataset layouts (used by ``jetevo simulate`` and by tests).

Input: an awkward array with one record per jet holding jagged ``px, py, pz, E, charge,
pid`` (pT-ordered constituents) and ``jet_pt, jet_eta, jet_phi``. Jet substructure
columns both datasets carry (soft-drop mass, N-subjettiness tau1..tau4) are computed
with FastJet: C/A reclustering, soft drop zcut=0.1 beta=0 R0=0.8, and N-subjettiness
with one-pass kt axes, beta=1, R0=0.8.

uproot cannot write ``std::vector<float>`` branches, so JetClass-layout files store the
jagged ``part_*`` branches as counted arrays (with an extra counter branch ``npart``);
uproot reads both forms into the same awkward arrays, so readers see no difference.

AspenOpenJets-layout files hold CMS particle-flow candidates, as the real files do
(``docs/tree_format.md``, "Real-layout facts"): generator ids are mapped to the particle
flow classes (charged hadrons -> +-211 with the sign of the charge, neutral hadrons -> 130,
photons 22, electrons +-11, muons +-13), charged hadrons carry the charged-pion mass and
neutral hadrons none (the energy is recomputed from the momentum), and neutral candidates
carry impact parameters d0, d0Err, dz, dzErr of -1. Charged ones carry 0: a generator
knows no tracks.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np

from jetevo.errors import SettingError
from jetevo.io.readers import JETCLASS_LABELS
from jetevo.kinematics import (
    ALL_IN_ONE_R,
    JET_R,
    SOFT_DROP_BETA,
    SOFT_DROP_ZCUT,
    eta_of,
    phi_of,
    wrap_phi,
)

AOJ_MAX_CANDIDATES = 150
AOJ_IMPACT_COLUMNS = (4, 5, 6, 7)  # PFCands d0, d0Err, dz, dzErr
AOJ_NO_TRACK = -1.0  # d0, d0Err, dz, dzErr of a candidate without a track
# the particle-flow ids of real AOJ files, and the masses of their hadron classes
PF_PDGIDS = (-211, -13, -11, 11, 13, 22, 130, 211)
CHARGED_HADRON_MASS = 0.13957  # the charged pion (GeV), as Pythia and CMS particle flow
NEUTRAL_HADRON_MASS = 0.0
AOJ_TAGGING = (
    "nConstituents", "tau1", "tau2", "tau3", "tau4", "PNet_H4qvsQCD", "PNet_HbbvsQCD",
    "PNet_HccvsQCD", "PNet_QCD", "PNet_TvsQCD", "PNet_WvsQCD", "PNet_ZvsQCD", "PNet_mass",
)  # fmt: skip
# JetClass label branch dtypes (the real files mix float, bool and int32)
JETCLASS_LABEL_DTYPES = {
    "label_QCD": np.float32,
    **{k: np.bool_ for k in ("label_Hbb", "label_Hcc", "label_Hgg", "label_H4q", "label_Hqql")},
    **{k: np.int32 for k in ("label_Zqq", "label_Wqq", "label_Tbqq", "label_Tbl")},
}
ROOT_BASKET_ENTRIES = 2000
JETCLASS_ZERO_BRANCHES = ("part_d0val", "part_d0err", "part_dzval", "part_dzerr")


def substructure(jets: ak.Array) -> dict[str, np.ndarray]:
    """Soft-drop mass and tau1..tau4 per jet (FastJet, batch over all jets)."""
    import fastjet

    constituents = ak.zip(
        {k: ak.values_astype(jets[k], np.float64) for k in ("px", "py", "pz", "E")},
        with_name="Momentum4D",
    )
    cs = fastjet.ClusterSequence(
        constituents, fastjet.JetDefinition(fastjet.cambridge_algorithm, ALL_IN_ONE_R)
    )
    sd = cs.exclusive_jets_softdrop_grooming(
        1, beta=SOFT_DROP_BETA, symmetry_cut=SOFT_DROP_ZCUT, R0=JET_R
    )
    taus = ak.fill_none(
        ak.pad_none(cs.njettiness(njets=[1, 2, 3, 4], R0=JET_R, beta=1.0), 4, axis=1, clip=True),
        0.0,
    )
    out = {"sdmass": ak.to_numpy(sd.msoftdrop).astype(np.float32)}
    for k in range(4):
        out[f"tau{k + 1}"] = ak.to_numpy(taus[:, k]).astype(np.float32)
    return out


def _jet_energy(jets: ak.Array) -> np.ndarray:
    return ak.to_numpy(ak.sum(jets["E"], axis=1)).astype(np.float32)


def write_jetclass(path: str | Path, jets: ak.Array, label: str) -> None:
    """Write jets as one JetClass ROOT file (TTree ``tree``)."""
    import uproot

    branch = f"label_{label}"
    if branch not in JETCLASS_LABEL_DTYPES:
        raise SettingError(f"unknown JetClass label {label!r}; expected one of {JETCLASS_LABELS}")
    n = len(jets)
    f32 = {k: ak.values_astype(jets[k], np.float32) for k in ("px", "py", "pz", "E", "charge")}
    eta = eta_of(f32["px"], f32["py"], f32["pz"])
    phi = phi_of(f32["px"], f32["py"])
    jet_eta = np.asarray(jets["jet_eta"], np.float32)
    sign = np.where(jet_eta > 0, 1.0, -1.0).astype(np.float32)
    deta = (eta - jet_eta) * sign
    dphi = wrap_phi(phi - np.asarray(jets["jet_phi"]))
    pid = np.abs(jets["pid"])
    charge = f32["charge"]
    part = {
        "px": f32["px"], "py": f32["py"], "pz": f32["pz"], "energy": f32["E"],
        "deta": ak.values_astype(deta, np.float32), "dphi": ak.values_astype(dphi, np.float32),
        **{k.removeprefix("part_"): ak.values_astype(0 * f32["px"], np.float32) for k in JETCLASS_ZERO_BRANCHES},
        "charge": charge,
        "isChargedHadron": ak.values_astype((charge != 0) & (pid != 11) & (pid != 13), np.int32),
        "isNeutralHadron": ak.values_astype((charge == 0) & (pid != 22), np.int32),
        "isPhoton": ak.values_astype(pid == 22, np.int32),
        "isElectron": ak.values_astype(pid == 11, np.int32),
        "isMuon": ak.values_astype(pid == 13, np.int32),
    }  # fmt: skip
    sub = substructure(jets)
    branches: dict = {"part": ak.zip(part)}
    for name, dtype in JETCLASS_LABEL_DTYPES.items():
        branches[name] = np.full(n, name == branch, dtype=dtype)
    branches.update(
        jet_pt=np.asarray(jets["jet_pt"], np.float32),
        jet_eta=jet_eta,
        jet_phi=np.asarray(jets["jet_phi"], np.float32),
        jet_energy=_jet_energy(jets),
        jet_nparticles=ak.to_numpy(ak.num(jets["px"])).astype(np.float32),
        jet_sdmass=sub["sdmass"],
        **{f"jet_tau{k}": sub[f"tau{k}"] for k in range(1, 5)},
    )
    with uproot.recreate(path) as f:
        types = {
            k: v.type.content if isinstance(v, ak.Array) else v.dtype for k, v in branches.items()
        }
        tree = f.mktree("tree", types)
        # one basket per extend call: keep baskets near the few-thousand-entry size of real files
        for start in range(0, max(n, 1), ROOT_BASKET_ENTRIES):
            tree.extend({k: v[start : start + ROOT_BASKET_ENTRIES] for k, v in branches.items()})


def pf_ids(pid: np.ndarray, charge: np.ndarray) -> np.ndarray:
    """CMS particle-flow ids of generator particles (flat arrays): electrons and muons keep
    their ids (signed by the charge), photons are 22, every other charged particle is a
    charged hadron (211 with the sign of the charge) and every other neutral one a neutral
    hadron (130)."""
    q = np.sign(np.asarray(charge)).astype(np.int32)
    a = np.abs(np.asarray(pid)).astype(np.int32)
    out = np.where(q != 0, 211 * q, 130).astype(np.int32)
    out[(a == 11) & (q != 0)] = -11 * q[(a == 11) & (q != 0)]
    out[(a == 13) & (q != 0)] = -13 * q[(a == 13) & (q != 0)]
    out[(a == 22) & (q == 0)] = 22
    return out


def pf_candidates(jets: ak.Array) -> ak.Array:
    """Jets whose constituents are particle-flow candidates: ``pid`` mapped by
    :func:`pf_ids`, and hadrons given the mass of their class (charged pion, massless
    neutral) with the three-momentum kept; photons and leptons keep their four-momenta."""
    counts = ak.num(jets["px"])
    flat = {k: ak.to_numpy(ak.flatten(jets[k])) for k in ("px", "py", "pz", "E", "charge", "pid")}
    pid = pf_ids(flat["pid"], flat["charge"])
    p2 = sum(flat[k].astype(np.float64) ** 2 for k in ("px", "py", "pz"))
    energy = flat["E"].astype(np.float64)
    charged_hadron, neutral_hadron = np.abs(pid) == 211, pid == 130
    energy[charged_hadron] = np.sqrt(p2[charged_hadron] + CHARGED_HADRON_MASS**2)
    energy[neutral_hadron] = np.sqrt(p2[neutral_hadron] + NEUTRAL_HADRON_MASS**2)
    fields = {k: jets[k] for k in jets.fields}
    fields["E"] = ak.unflatten(energy.astype(flat["E"].dtype), counts)
    fields["pid"] = ak.unflatten(pid, counts)
    return ak.zip(fields, depth_limit=1)


def write_aoj(path: str | Path, jets: ak.Array, run: int = 1) -> None:
    """Write jets as one AspenOpenJets HDF5 file (zero-padded to 150 candidates, gzip) of
    particle-flow candidates (:func:`pf_candidates`)."""
    import h5py

    jets = pf_candidates(jets)
    n = len(jets)
    cands = np.zeros((n, AOJ_MAX_CANDIDATES, 11), np.float32)
    n_const = np.minimum(ak.to_numpy(ak.num(jets["px"])), AOJ_MAX_CANDIDATES)
    padded = {
        k: ak.to_numpy(
            ak.fill_none(ak.pad_none(jets[k], AOJ_MAX_CANDIDATES, clip=True), 0.0)
        ).astype(np.float32)
        for k in ("px", "py", "pz", "E", "charge", "pid")
    }
    for col, name in enumerate(("px", "py", "pz", "E")):
        cands[:, :, col] = padded[name]
    cands[:, :, 8] = padded["charge"]
    cands[:, :, 9] = padded["pid"]
    real = np.arange(AOJ_MAX_CANDIDATES)[None, :] < n_const[:, None]
    no_track = real & (padded["charge"] == 0)
    for col in AOJ_IMPACT_COLUMNS:
        cands[:, :, col][no_track] = AOJ_NO_TRACK
    cands[:, :, 10] = real.astype(np.float32)  # puppiWeight: no pileup here
    sub = substructure(jets)
    tagging = np.zeros((n, len(AOJ_TAGGING)), np.float32)
    tagging[:, 0] = ak.to_numpy(ak.num(jets["px"]))
    for k in range(1, 5):
        tagging[:, k] = sub[f"tau{k}"]
    kin = np.stack(
        [np.asarray(jets[k], np.float32) for k in ("jet_pt", "jet_eta", "jet_phi")]
        + [sub["sdmass"]],
        axis=1,
    )
    info = np.stack([np.full(n, run), np.zeros(n, np.int64), np.arange(n)], axis=1).astype(np.int64)
    with h5py.File(path, "w") as f:
        opts = {"compression": "gzip", "chunks": True}
        f.create_dataset("event_info", data=info, **opts)
        f.create_dataset("jet_kinematics", data=kin.astype(np.float32), **opts)
        f.create_dataset("jet_tagging", data=tagging, **opts)
        f.create_dataset("PFCands", data=cands, **opts)
