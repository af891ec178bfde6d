"""Comparison plots (mplhep CMS style): histograms with ratio panels, Lund-plane images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jetevo.evaluate.metrics import LUND_RANGE

LABELS = {
    "pt": r"jet $p_T$ [GeV]",
    "mass": r"jet mass [GeV]",
    "mass_sd": r"soft-drop mass [GeV]",
    "multiplicity": "constituents",
    "tau21": r"$\tau_{21}$",
    "tau32": r"$\tau_{32}$",
    "d2": r"$D_2$",
    "zg": r"C/A soft drop $z_g$",
    "rg": r"C/A soft drop $R_g$",
    "n_primary": "C/A primary declusterings",
    "tree_depth": "stored tree depth (diagnostic)",
    "tree_n_primary": "stored tree harder-branch length (diagnostic)",
    "particle_pt": r"particle $p_T$ [GeV]",
    "particle_mass": "particle mass [GeV] (negative: spacelike)",
}
LUND_BINS = (24, 22)  # plotting resolution; the metric uses coarser bins


def _style():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.CMS)
    return plt


def _save(fig, path: Path) -> None:
    from jetevo.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:], bbox_inches="tight")


def histograms(gen: dict, ref: dict, out: Path) -> list[Path]:
    """One file per observable: normalised histograms and the generated/reference ratio."""
    plt = _style()
    import mplhep

    paths = []
    for name in gen:
        g, r = gen[name][np.isfinite(gen[name])], ref[name][np.isfinite(ref[name])]
        if len(g) == 0 or len(r) == 0:
            continue
        lo, hi = np.quantile(np.concatenate([g, r]), [0.001, 0.999])
        if name in ("multiplicity", "n_primary", "tree_depth", "tree_n_primary"):
            edges = np.arange(
                np.floor(lo) - 0.5, np.ceil(hi) + 1.5, max(1.0, np.ceil((hi - lo) / 40))
            )
        else:
            edges = np.linspace(lo, hi if hi > lo else lo + 1, 31)
        hg, _ = np.histogram(g, edges)
        hr, _ = np.histogram(r, edges)
        width = np.diff(edges)
        dg, dr = hg / max(hg.sum(), 1) / width, hr / max(hr.sum(), 1) / width
        fig, (ax, rax) = plt.subplots(
            2, 1, figsize=(8, 8), gridspec_kw={"height_ratios": (3, 1)}, sharex=True
        )
        mplhep.histplot(dr, edges, ax=ax, label=f"reference ({len(r)})", color="k")
        mplhep.histplot(dg, edges, ax=ax, label=f"generated ({len(g)})", color="tab:red")
        ax.set_ylabel("normalised")
        ax.legend(fontsize=14)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(hr > 0, dg / dr, np.nan)
            err = np.where(
                (hr > 0) & (hg > 0),
                ratio * np.sqrt(1 / np.maximum(hg, 1) + 1 / np.maximum(hr, 1)),
                np.nan,
            )
        centers = 0.5 * (edges[1:] + edges[:-1])
        rax.errorbar(centers, ratio, yerr=err, fmt="o", color="tab:red", ms=4)
        rax.axhline(1.0, color="k", lw=1)
        rax.set_ylim(0, 2)
        rax.set_ylabel("gen/ref")
        rax.set_xlabel(LABELS.get(name, name))
        path = out / f"hist_{name}.png"
        _save(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def lund_planes(
    gen_points: np.ndarray, n_gen: int, ref_points: np.ndarray, n_ref: int, out: Path
) -> Path:
    """Primary Lund-plane density per jet: generated, reference, and their ratio."""
    plt = _style()
    hg, xe, ye = np.histogram2d(
        gen_points[:, 0], gen_points[:, 1], bins=LUND_BINS, range=LUND_RANGE
    )
    hr, _, _ = np.histogram2d(ref_points[:, 0], ref_points[:, 1], bins=LUND_BINS, range=LUND_RANGE)
    area = np.diff(xe)[0] * np.diff(ye)[0]
    dg, dr = hg / max(n_gen, 1) / area, hr / max(n_ref, 1) / area
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(hr > 0, dg / dr, np.nan)
    fig, axes = plt.subplots(1, 3, figsize=(24, 7))
    vmax = max(dg.max(), dr.max(), 1e-9)
    for ax, img, title, kw in (
        (axes[0], dg, "generated", {"vmin": 0, "vmax": vmax, "cmap": "viridis"}),
        (axes[1], dr, "reference", {"vmin": 0, "vmax": vmax, "cmap": "viridis"}),
        (axes[2], ratio, "generated / reference", {"vmin": 0.5, "vmax": 1.5, "cmap": "RdBu_r"}),
    ):
        mesh = ax.pcolormesh(xe, ye, img.T, **kw)
        fig.colorbar(mesh, ax=ax)
        ax.set_title(title, fontsize=18)
        ax.set_xlabel(r"$\ln 1/\Delta$")
        ax.set_ylabel(r"$\ln k_t$ / GeV")
    path = out / "lund_plane.png"
    _save(fig, path)
    plt.close(fig)
    return path
