"""The one home of four-vector kinematics on flat (n, 4) ``px, py, pz, E`` arrays.

Trees, tokens and generated jets are flat numpy arrays by the time kinematics is needed,
so these are numpy functions; awkward records are tagged ``Momentum4D`` and can be read
with scikit-hep ``vector`` directly. Numba kernels that need FastJet's exact conventions
keep their own twin next to the kernel (:func:`jetevo.trees.kernel._rap_phi`).

Conventions: rapidity ``y`` (not pseudorapidity) is the angle variable of every distance;
azimuth in (-pi, pi]; masses of spacelike vectors are 0 (use :func:`signed_mass` to see
them); ``eta`` is the pseudorapidity and is only used for the stored jet columns.
"""

from __future__ import annotations

import numpy as np

# Jet definitions every stage shares: both datasets' anti-kt radius, which is also the R0 of
# soft drop and N-subjettiness; soft drop's zcut and beta; and a radius that no pair of a
# jet's particles reaches (clustering at it makes the whole jet one tree / one jet).
JET_R = 0.8
SOFT_DROP_ZCUT = 0.1
SOFT_DROP_BETA = 0.0
ALL_IN_ONE_R = 100.0
TOP_MASS = 172.5  # GeV: the centre of the jet-mass window tagger


def eta_of(px, py, pz):
    """Pseudorapidity of particles (pT > 0) from components: numpy or awkward arrays."""
    return np.arcsinh(pz / np.hypot(px, py))


def phi_of(px, py):
    """Azimuth in (-pi, pi] from components: numpy or awkward arrays."""
    return np.arctan2(py, px)


def pt(p: np.ndarray) -> np.ndarray:
    """Transverse momentum of (n, 4) rows."""
    return np.hypot(p[:, 0], p[:, 1])


def pt_y_phi_m(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pT, rapidity, azimuth, mass) of (n, 4) px, py, pz, E rows.

    A massless vector along the beam would have infinite rapidity: E is raised to just
    above |pz| so that it stays finite."""
    p = np.asarray(p, np.float64)
    pt = np.hypot(p[:, 0], p[:, 1])
    e = np.maximum(p[:, 3], np.abs(p[:, 2]) + 1e-12)
    y = 0.5 * np.log((e + p[:, 2]) / (e - p[:, 2]))
    phi = np.arctan2(p[:, 1], p[:, 0])
    m = np.sqrt(np.maximum(p[:, 3] ** 2 - (p[:, :3] ** 2).sum(axis=1), 0.0))
    return pt, y, phi, m


def mass(p: np.ndarray) -> np.ndarray:
    """Invariant mass of (n, 4) rows; 0 for spacelike rows."""
    return pt_y_phi_m(p)[3]


def signed_mass(p: np.ndarray) -> np.ndarray:
    """sign(m^2) sqrt(|m^2|): spacelike rows come out negative instead of 0."""
    m2 = p[:, 3] ** 2 - (p[:, :3] ** 2).sum(axis=1)
    return np.sign(m2) * np.sqrt(np.abs(m2))


def four_momentum(pt, y, phi, m) -> np.ndarray:
    """(n, 4) px, py, pz, E from pT, rapidity, azimuth and mass."""
    mt = np.sqrt(pt**2 + m**2)
    return np.stack([pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y), mt * np.cosh(y)], axis=1)


def four_momentum_eta(pt, eta, phi, m) -> np.ndarray:
    """(n, 4) px, py, pz, E from pT, pseudorapidity, azimuth and mass."""
    pz = pt * np.sinh(eta)
    e = np.sqrt(pt**2 + pz**2 + m**2)
    return np.stack([pt * np.cos(phi), pt * np.sin(phi), pz, e], axis=1)


def wrap_phi(dphi: np.ndarray) -> np.ndarray:
    """Azimuth (differences) wrapped into [-pi, pi)."""
    return (dphi + np.pi) % (2 * np.pi) - np.pi


def eta(p: np.ndarray) -> np.ndarray:
    """Pseudorapidity of (n, 4) rows; 0 for a row along the beam (pT = 0)."""
    pt = np.hypot(p[:, 0], p[:, 1])
    return np.arcsinh(np.divide(p[:, 2], pt, out=np.zeros_like(pt), where=pt > 0))


JET_KINEMATICS = ("jet_pt", "jet_eta", "jet_phi", "jet_mass")


def jet_kinematics(root: np.ndarray) -> dict[str, np.ndarray]:
    """The stored jet columns ``jet_pt, jet_eta, jet_phi, jet_mass`` of (n, 4) root rows
    (``jet_eta`` is the pseudorapidity, 0 for a jet along the beam)."""
    pt = np.hypot(root[:, 0], root[:, 1])
    eta_ = eta(root)
    mass = np.sqrt(np.maximum(root[:, 3] ** 2 - pt**2 - root[:, 2] ** 2, 0.0))
    phi = np.arctan2(root[:, 1], root[:, 0])
    return dict(zip(JET_KINEMATICS, (pt, eta_, phi, mass), strict=True))


def with_mass(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Four-vectors with the same three-momentum and mass ``m``."""
    out = p.copy()
    out[:, 3] = np.sqrt((p[:, :3] ** 2).sum(axis=1) + m**2)
    return out


def velocity(p: np.ndarray) -> np.ndarray:
    """Velocity (n, 3) = p / E of (n, 4) rows."""
    return p[:, :3] / np.maximum(p[:, 3:4], 1e-300)


def boost(p: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Lorentz boost of four-vectors ``p`` (n, 4) by velocities ``beta`` (n, 3)."""
    b2 = np.clip((beta**2).sum(axis=1), 0.0, 1.0 - 1e-15)
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = (beta * p[:, :3]).sum(axis=1)
    coef = np.where(b2 > 0, (gamma - 1.0) / np.where(b2 > 0, b2, 1.0), 0.0)
    out = np.empty_like(p)
    out[:, :3] = p[:, :3] + (coef * bp + gamma * p[:, 3])[:, None] * beta
    out[:, 3] = gamma * (p[:, 3] + bp)
    return out


def _split_frame_params(frame: np.ndarray, frame_mass: np.ndarray):
    pt_f, y_f, phi_f, _ = pt_y_phi_m(frame)
    mt = np.sqrt(pt_f**2 + frame_mass**2)
    return pt_f, mt, np.cos(phi_f), np.sin(phi_f), np.cosh(y_f), np.sinh(y_f)


def to_split_frame(p: np.ndarray, frame: np.ndarray, frame_mass: np.ndarray) -> np.ndarray:
    """Four-vectors ``p`` (n, 4) in the rest frame of ``frame`` (n, 4) of mass
    ``frame_mass`` (> 0), reached as a jet physicist reaches it: rotate the frame to azimuth
    0, boost it longitudinally to rapidity 0, then boost it to rest along x. Unlike a pure
    boost from the lab, this frame does not depend on the jet's own rapidity and azimuth
    (no Wigner rotation), so what is measured in it is the same in the lab and in the jet
    frame. There the frame's flight direction is x, z points to larger rapidity and y to
    larger azimuth."""
    pt_f, mt, c, s, ch, sh = _split_frame_params(frame, frame_mass)
    px = p[:, 0] * c + p[:, 1] * s
    py = -p[:, 0] * s + p[:, 1] * c
    pz = p[:, 2] * ch - p[:, 3] * sh
    e = p[:, 3] * ch - p[:, 2] * sh
    out = np.empty_like(p)
    out[:, 0] = (mt * px - pt_f * e) / frame_mass
    out[:, 1] = py
    out[:, 2] = pz
    out[:, 3] = (mt * e - pt_f * px) / frame_mass
    return out


def from_split_frame(p: np.ndarray, frame: np.ndarray, frame_mass: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_split_frame`."""
    pt_f, mt, c, s, ch, sh = _split_frame_params(frame, frame_mass)
    px = (mt * p[:, 0] + pt_f * p[:, 3]) / frame_mass
    e = (mt * p[:, 3] + pt_f * p[:, 0]) / frame_mass
    pz = p[:, 2] * ch + e * sh
    e, py = e * ch + p[:, 2] * sh, p[:, 1]
    out = np.empty_like(p)
    out[:, 0] = px * c - py * s
    out[:, 1] = px * s + py * c
    out[:, 2] = pz
    out[:, 3] = e
    return out


def boost_rapidity(p: np.ndarray, dy: float) -> np.ndarray:
    """Longitudinal boost of four-momenta (n, 4) by a rapidity shift ``dy``."""
    if dy == 0.0:
        return p
    ch, sh = np.cosh(dy), np.sinh(dy)
    out = p.copy()
    out[:, 2] = p[:, 2] * ch + p[:, 3] * sh
    out[:, 3] = p[:, 3] * ch + p[:, 2] * sh
    return out
