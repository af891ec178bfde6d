"""Embedded default data: Pythia 8 jets written in the real JetClass / AspenOpenJets layouts.

Real physics rather than toy data: pp collisions at 13 TeV, anti-kt R=0.8 jets from the
visible final-state particles (neutrinos removed; charged pT > 0.3 GeV and neutral
pT > 0.5 GeV as a crude stand-in for tracking and calorimeter thresholds; there is no
detector simulation). Processes:

- ``top``: t tbar, jets matched to a hadronic top whose b, q, q' all lie within
  dR < 0.8 of the jet axis; 500 < pT < 1000 GeV, |eta| < 2 -> JetClass ``TTBar_NNN.root``;
- ``qcd``: HardQCD, 500 < pT < 1000 GeV, |eta| < 2 -> JetClass ``ZJetsToNuNu_NNN.root``
  (the JetClass QCD class);
- ``qcd-wide``: HardQCD, pT > 300 GeV, |eta| < 2.5, at most 150 candidates ->
  AOJ ``RunG_batchNNN.h5``.

Generation runs in fixed blocks of jets, each with its own seed derived from ``seed``,
so the output depends only on the seed, not on the number of worker processes.
Quantities a generator cannot know (impact parameters, PNet scores) are zeros with the
real names and dtypes; in the AOJ layout, as in real AOJ files, neutral candidates carry
impact parameters of -1, and the constituents are particle-flow candidates (ids +-211, 130,
22, +-11, +-13; charged hadrons with the pion mass, neutral hadrons massless:
:func:`jetevo.io.writers.pf_candidates`). The AOJ ``jet_kinematics`` pt is the generated
jet's pT (the candidates' sum), not a corrected jet pT as in real files.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np

from jetevo.errors import SettingError
from jetevo.io.atomic import atomic_path, ensure_writable_dir
from jetevo.io.writers import write_aoj, write_jetclass
from jetevo.kinematics import JET_R, eta_of, phi_of, wrap_phi

BLOCK_JETS = 250
NEUTRINOS = (12, 14, 16)
MIN_CHARGED_PT = 0.3
MIN_NEUTRAL_PT = 0.5


@dataclass(frozen=True)
class Process:
    name: str
    pythia: tuple[str, ...]
    pt_min: float
    pt_max: float
    abs_eta_max: float
    layout: str  # "jetclass" or "aoj"
    file_pattern: str
    label: str


PROCESSES = {
    "top": Process(
        "top",
        ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on", "PhaseSpace:pTHatMin = 450", "PhaseSpace:pTHatMax = 1200"),
        500.0, 1000.0, 2.0, "jetclass", "TTBar_{index:03d}.root", "Tbqq",
    ),
    "qcd": Process(
        "qcd",
        ("HardQCD:all = on", "PhaseSpace:pTHatMin = 450", "PhaseSpace:pTHatMax = 1100"),
        500.0, 1000.0, 2.0, "jetclass", "ZJetsToNuNu_{index:03d}.root", "QCD",
    ),
    "qcd-wide": Process(
        "qcd-wide",
        ("HardQCD:all = on", "PhaseSpace:pTHatMin = 280"),
        300.0, math.inf, 2.5, "aoj", "RunG_batch{index}.h5", "unlabeled",
    ),
}  # fmt: skip


def output_name(process: str, index: int = 0) -> str:
    return PROCESSES[process].file_pattern.format(index=index)


def simulate(
    process: str,
    n_jets: int,
    out_dir: str | Path,
    seed: int = 1,
    index: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Generate ``n_jets`` jets of ``process`` and write them to ``out_dir``; return the file."""
    from tqdm import tqdm

    if process not in PROCESSES:
        raise SettingError(f"process must be one of {sorted(PROCESSES)}, got {process!r}")
    if n_jets < 1:
        raise SettingError("n_jets must be >= 1")
    proc = PROCESSES[process]
    out = ensure_writable_dir(out_dir) / output_name(process, index)
    blocks = [
        (proc, min(BLOCK_JETS, n_jets - s), _block_seed(seed, k))
        for k, s in enumerate(range(0, n_jets, BLOCK_JETS))
    ]
    bar = tqdm(
        total=n_jets, unit="jet", disable=not progress, file=sys.stderr, desc=f"simulate {process}"
    )
    results = []
    if workers <= 1 or len(blocks) == 1:
        for b in blocks:
            results.append(_generate_block(*b))
            bar.update(b[1])
    else:
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for b, res in zip(
                blocks, pool.map(_generate_block, *zip(*blocks, strict=True)), strict=True
            ):
                results.append(res)
                bar.update(b[1])
    bar.close()
    jets = ak.concatenate(results)
    with atomic_path(out) as tmp:
        if proc.layout == "jetclass":
            write_jetclass(tmp, jets, proc.label)
        else:
            write_aoj(tmp, jets)
    return out


def _block_seed(seed: int, block: int) -> int:
    # Pythia accepts seeds up to 900,000,000
    return (seed * 100_003 + block * 7_919) % 900_000_000 + 1


def _generate_block(proc: Process, n_jets: int, seed: int) -> ak.Array:
    """Run Pythia until ``n_jets`` selected jets are found (awkward, one record per jet)."""
    import pythia8mc

    pythia = pythia8mc.Pythia("", False)
    for line in (
        "Beams:eCM = 13000.",
        *proc.pythia,
        "Print:quiet = on",
        "Next:numberCount = 0",
        "Next:numberShowEvent = 0",
        "Next:numberShowInfo = 0",
        "Next:numberShowProcess = 0",
        "Init:showChangedSettings = off",
        "Init:showChangedParticleData = off",
        "Init:showProcesses = off",
        "Random:setSeed = on",
        f"Random:seed = {seed}",
    ):
        pythia.readString(line)
    if not pythia.init():
        raise RuntimeError(f"Pythia failed to initialise for process {proc.name}")
    jets: list[ak.Array] = []
    have = 0
    event_number = 0
    while have < n_jets:
        batch, partons = [], []
        for _ in range(64):
            if not pythia.next():
                continue
            event_number += 1
            batch.append(_visible_particles(pythia.event))
            partons.append(_hadronic_top_partons(pythia.event) if proc.name == "top" else [])
        selected = _select_jets(batch, partons, proc)
        jets.append(selected)
        have += len(selected)
    return ak.concatenate(jets)[:n_jets]


def _visible_particles(event) -> np.ndarray:
    rows = []
    for p in event:
        if not p.isFinal() or p.idAbs() in NEUTRINOS or abs(p.eta()) > 3.5:
            continue
        if p.pT() > (MIN_CHARGED_PT if p.isCharged() else MIN_NEUTRAL_PT):
            rows.append((p.px(), p.py(), p.pz(), p.e(), p.charge(), p.id()))
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def _hadronic_top_partons(event) -> list[np.ndarray]:
    """(eta, phi) of b, q, q' for every top that decays hadronically."""
    out = []
    for i in range(event.size()):
        p = event[i]
        if p.idAbs() != 6 or p.iBotCopyId() != i:
            continue
        daughters = [event[d] for d in p.daughterList()]
        b = [d for d in daughters if d.idAbs() == 5]
        w = [d for d in daughters if d.idAbs() == 24]
        if not b or not w:
            continue
        w_last = event[w[0].iBotCopyId()]
        quarks = [event[d] for d in w_last.daughterList() if 1 <= event[d].idAbs() <= 5]
        if len(quarks) != 2:
            continue
        out.append(np.array([(q.eta(), q.phi()) for q in (b[0], *quarks)]))
    return out


def _select_jets(
    batch: list[np.ndarray], partons: list[list[np.ndarray]], proc: Process
) -> ak.Array:
    import fastjet

    counts = np.array([len(b) for b in batch])
    flat = np.concatenate(batch) if batch else np.zeros((0, 6))
    events = ak.unflatten(
        ak.zip(
            {k: flat[:, i] for i, k in enumerate(("px", "py", "pz", "E"))}, with_name="Momentum4D"
        ),
        counts,
    )
    cs = fastjet.ClusterSequence(events, fastjet.JetDefinition(fastjet.antikt_algorithm, JET_R))
    jets = cs.inclusive_jets(min_pt=proc.pt_min)
    index = cs.constituent_index(min_pt=proc.pt_min)
    px, py, pz = (ak.to_numpy(ak.flatten(c)) for c in (jets.px, jets.py, jets.pz))
    pt = np.hypot(px, py)
    eta = eta_of(px, py, pz)
    phi = phi_of(px, py)
    event_of_jet = np.repeat(np.arange(len(batch)), ak.to_numpy(ak.num(jets)))
    ok = (pt < proc.pt_max) & (np.abs(eta) < proc.abs_eta_max)
    if proc.name == "top":
        for j in np.flatnonzero(ok):
            ok[j] = any(_all_within(t, eta[j], phi[j]) for t in partons[event_of_jet[j]])
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    idx_flat = ak.flatten(index, axis=1)[ok]
    picked = ak.to_numpy(ak.flatten(idx_flat + starts[event_of_jet[ok]]))
    n_per_jet = ak.to_numpy(ak.num(idx_flat))
    parts = flat[picked]
    # pT-ordered constituents, as in both datasets
    jet_id = np.repeat(np.arange(len(n_per_jet)), n_per_jet)
    order = np.lexsort((-np.hypot(parts[:, 0], parts[:, 1]), jet_id))
    parts = parts[order]
    fields = {
        k: ak.unflatten(parts[:, i], n_per_jet)
        for i, k in enumerate(("px", "py", "pz", "E", "charge", "pid"))
    }
    return ak.zip(
        {**fields, "jet_pt": pt[ok], "jet_eta": eta[ok], "jet_phi": phi[ok]}, depth_limit=1
    )


def _all_within(partons: np.ndarray, eta: float, phi: float) -> bool:
    dphi = wrap_phi(partons[:, 1] - phi)
    return bool(np.all((partons[:, 0] - eta) ** 2 + dphi**2 < JET_R**2))
