"""Tagging metrics and the baselines a likelihood-ratio tagger is measured against.

A tagger is a per-jet score (larger: more signal-like). Its ROC, AUC and background
rejection 1/ε_B at fixed signal efficiencies come with bootstrap errors (jets resampled
with replacement, both classes). The baselines see the same training jets as the models:
a top-mass window, τ32, the two-dimensional (mass, τ32) likelihood ratio from histograms
and a gradient-boosted classifier (scikit-learn, the ``study`` extra) on substructure.
"""

from __future__ import annotations

import numpy as np

from jetevo.errors import SettingError
from jetevo.evaluate.metrics import quantile_edges
from jetevo.kinematics import TOP_MASS

EFFICIENCIES = (0.3, 0.5)


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise SettingError(
            "the tagging metrics need scikit-learn: pip install 'jetevo[study]'"
        ) from None


def roc(score: np.ndarray, is_signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ε_S, ε_B) of every threshold on ``score``."""
    _sklearn()
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(is_signal, bool), np.asarray(score, np.float64))
    return tpr, fpr


def rejection(eff_s: np.ndarray, eff_b: np.ndarray, at: float) -> float:
    """1/ε_B at signal efficiency ``at`` (ε_B interpolated; inf where no background passes)."""
    eb = float(np.interp(at, eff_s, eff_b))
    return float("inf") if eb <= 0 else 1.0 / eb


def metrics_once(score: np.ndarray, is_signal: np.ndarray, efficiencies=EFFICIENCIES) -> dict:
    """AUC and 1/ε_B at each efficiency, for one sample."""
    _sklearn()
    from sklearn.metrics import auc

    eff_s, eff_b = roc(score, is_signal)
    out = {"auc": float(auc(eff_b, eff_s))}  # the area under the curve already sorted
    for e in efficiencies:
        out[f"rejection@{e}"] = rejection(eff_s, eff_b, e)
    return out


def tagger_metrics(
    score: np.ndarray,
    is_signal: np.ndarray,
    n_bootstrap: int = 200,
    seed: int = 0,
    efficiencies=EFFICIENCIES,
) -> dict:
    """:func:`metrics_once` on the sample and, as ``<name>_std``, the standard deviation of
    each over ``n_bootstrap`` resamples (each class resampled with replacement to its own
    size, so every resample keeps the class balance)."""
    score, is_signal = np.asarray(score, np.float64), np.asarray(is_signal, bool)
    if not np.all(np.isfinite(score)):
        raise SettingError(
            f"{int(np.count_nonzero(~np.isfinite(score)))} tagger scores are not finite"
        )
    if is_signal.all() or not is_signal.any():
        raise SettingError("a ROC needs jets of both classes")
    out = metrics_once(score, is_signal, efficiencies)
    rng = np.random.default_rng(seed)
    sig, bkg = np.flatnonzero(is_signal), np.flatnonzero(~is_signal)
    boots: dict[str, list[float]] = {k: [] for k in out}
    for _ in range(n_bootstrap):
        idx = np.concatenate([rng.choice(sig, len(sig)), rng.choice(bkg, len(bkg))])
        for k, v in metrics_once(score[idx], is_signal[idx], efficiencies).items():
            boots[k].append(v)
    for k, values in boots.items():
        finite = np.asarray(values)[np.isfinite(values)]
        out[f"{k}_std"] = float(np.std(finite)) if len(finite) > 1 else None
    return out


def mass_window_score(mass: np.ndarray, center: float = TOP_MASS) -> np.ndarray:
    """The jet-mass window tagger: closer to the top mass is more top-like, so a cut on it is
    a window around ``center`` that widens as ε_S grows."""
    return -np.abs(np.asarray(mass, np.float64) - center)


def histogram_llr(
    train_x: np.ndarray, train_signal: np.ndarray, test_x: np.ndarray, n_bins: int = 20
) -> np.ndarray:
    """log p_S(x)/p_B(x) from per-class histograms of the training jets, on the quantile
    bins of :func:`~jetevo.evaluate.metrics.quantile_edges` of the training jets in each
    coordinate (half a count added to every bin, so that no
    bin is log 0). ``train_x``, ``test_x``: (n, d) with d = 1 or 2."""
    train_x, test_x = np.atleast_2d(train_x.T).T, np.atleast_2d(test_x.T).T
    train_signal = np.asarray(train_signal, bool)
    edges = [quantile_edges(train_x[:, i], n_bins) for i in range(train_x.shape[1])]

    def cell(x: np.ndarray) -> tuple[np.ndarray, ...]:  # outer bins open, as in binned_kl
        return tuple(np.searchsorted(e, x[:, i], side="right") for i, e in enumerate(edges))

    shape = tuple(len(e) + 1 for e in edges)
    counts = []
    for mask in (train_signal, ~train_signal):
        h = np.zeros(shape)
        np.add.at(h, cell(train_x[mask]), 1.0)
        h += 0.5
        counts.append(h / h.sum())
    c = cell(test_x)
    return np.log(counts[0][c]) - np.log(counts[1][c])


def gradient_boosted_scores(
    train_x: np.ndarray, train_signal: np.ndarray, test_x: np.ndarray, seed: int = 0
) -> np.ndarray:
    """Signal probability of a histogram gradient-boosted classifier (scikit-learn, early
    stopping on a 10% validation split of the training jets)."""
    _sklearn()
    from sklearn.ensemble import HistGradientBoostingClassifier

    clf = HistGradientBoostingClassifier(
        max_iter=300, learning_rate=0.1, early_stopping=True, validation_fraction=0.1,
        random_state=seed,
    )  # fmt: skip
    clf.fit(train_x, np.asarray(train_signal, bool))
    return clf.predict_proba(test_x)[:, 1]
