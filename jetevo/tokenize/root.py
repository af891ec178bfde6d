"""The root's own quantizer: the jet's pT and mass on a grid of their own.

A root token fixes the jet's pT and mass for everything below it (decoding conserves
four-momentum), so sharing a codebook with soft particles (a root is ~1% of all nodes)
limited every jet's mass to the codebook's resolution. Here the K codes of the vocabulary
are, at the root, a product grid of ``n_pt`` pT values and ``n_mass`` mass values: quantiles
of the training jets' log pT and log mass, so the resolution follows where jets are, and a
root's code is the nearest value of each, independently. Root and node codes share the
token range: what a code means depends on where it stands (the root, or a child).
Torch-free; the grid is stored in the tokenizer's checkpoint.
"""

from __future__ import annotations

import math

import numpy as np

from jetevo.errors import SettingError
from jetevo.kinematics import four_momentum, pt_y_phi_m

MASS_EPS = 1e-3  # GeV: keeps the log of a massless root (a one-particle jet) finite


def grid_shape(n_codes: int) -> tuple[int, int]:
    """(n_pt, n_mass) with n_pt * n_mass == n_codes: the largest divisor of ``n_codes`` not
    above sqrt(n_codes / 8) values of pT, the rest of mass (K = 8192: 32 x 256), since jets
    of one sample spread over a factor of a few in pT but over two decades in mass."""
    target = max(1, math.isqrt(max(n_codes // 8, 1)))
    n_pt = max(d for d in range(1, target + 1) if n_codes % d == 0)
    return n_pt, n_codes // n_pt


def _log_pt_mass(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pt, _, _, m = pt_y_phi_m(np.asarray(p, np.float64))
    return np.log(np.maximum(pt, 1e-9)), np.log(m + MASS_EPS)


def _nearest(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``values`` for every ``x``."""
    mid = 0.5 * (values[1:] + values[:-1])
    return np.searchsorted(mid, x, side="left").astype(np.int64)


class RootQuantizer:
    """Product grid of log pT values ``log_pt`` and log(m + MASS_EPS) values ``log_mass``
    (both sorted); code = i_pt * n_mass + i_mass."""

    def __init__(self, log_pt, log_mass):
        self.log_pt = np.asarray(log_pt, np.float64)
        self.log_mass = np.asarray(log_mass, np.float64)
        for name, v in (("log_pt", self.log_pt), ("log_mass", self.log_mass)):
            if v.ndim != 1 or len(v) == 0 or not np.all(np.isfinite(v)):
                raise SettingError(f"root quantizer {name}: a non-empty finite list is needed")
            if np.any(np.diff(v) < 0):
                raise SettingError(f"root quantizer {name} must be sorted")

    @property
    def n_codes(self) -> int:
        return len(self.log_pt) * len(self.log_mass)

    @classmethod
    def fit(cls, roots: np.ndarray, n_codes: int) -> RootQuantizer:
        """The grid of ``n_codes`` codes at the quantiles of the roots (n, 4): each axis's
        values at the middle of equal-probability bins."""
        if len(roots) == 0:
            raise SettingError("no jets to fit the root quantizer on")
        n_pt, n_mass = grid_shape(n_codes)
        log_pt, log_mass = _log_pt_mass(roots)
        return cls(
            np.quantile(log_pt, (np.arange(n_pt) + 0.5) / n_pt),
            np.quantile(log_mass, (np.arange(n_mass) + 0.5) / n_mass),
        )

    def encode(self, p: np.ndarray) -> np.ndarray:
        """Codes of roots (n, 4): the nearest grid value of log pT and of log mass."""
        log_pt, log_mass = _log_pt_mass(p)
        return _nearest(self.log_pt, log_pt) * len(self.log_mass) + _nearest(
            self.log_mass, log_mass
        )

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Four-momenta (n, 4) of root codes, in the jet frame (rapidity 0, azimuth 0)."""
        codes = np.asarray(codes, np.int64)
        i_pt, i_mass = np.divmod(codes, len(self.log_mass))
        m = np.maximum(np.exp(self.log_mass[i_mass]) - MASS_EPS, 0.0)
        zero = np.zeros(len(codes))
        return four_momentum(np.exp(self.log_pt[i_pt]), zero, zero, m)

    def code_features(self) -> np.ndarray:
        """(n_codes, 2) log pT and log mass of every code, each standardized over its grid
        values (what a model can tell neighbouring root codes by)."""

        def standardized(v: np.ndarray) -> np.ndarray:
            return (v - v.mean()) / (v.std() if v.std() > 0 else 1.0)

        n_pt, n_mass = len(self.log_pt), len(self.log_mass)
        return np.stack(
            [
                np.repeat(standardized(self.log_pt), n_mass),
                np.tile(standardized(self.log_mass), n_pt),
            ],
            axis=1,
        )

    def code_log_pt(self) -> np.ndarray:
        """log pT (GeV) that every code decodes to."""
        return np.repeat(self.log_pt, len(self.log_mass))

    def state(self) -> dict:
        return {"log_pt": self.log_pt.tolist(), "log_mass": self.log_mass.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> RootQuantizer:
        return cls(state["log_pt"], state["log_mass"])
