"""Tagging metrics (ROC, rejection, bootstrap, histogram likelihood ratio), the likelihood
ratio of a model against itself, and the calibration/sharpness of completions."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import tiny_checkpoint

from jetevo.errors import SettingError
from jetevo.evaluate.evolution import calibration, ks_uniform, ranks
from jetevo.evaluate.tagging import (
    histogram_llr,
    mass_window_score,
    metrics_once,
    tagger_metrics,
)
from jetevo.score import score

pytest.importorskip("sklearn")


def _two_classes(rng, n=2000, shift=1.0):
    sig = rng.normal(shift, 1.0, n)
    bkg = rng.normal(0.0, 1.0, n)
    return np.concatenate([sig, bkg]), np.repeat([True, False], n)


def test_roc_metrics_known_answers():
    rng = np.random.default_rng(0)
    x, y = _two_classes(rng, shift=1.0)
    m = tagger_metrics(x, y, n_bootstrap=50, seed=1)
    # two unit Gaussians one sigma apart: AUC = Phi(1/sqrt 2) = 0.760
    assert m["auc"] == pytest.approx(0.760, abs=0.02) and 0 < m["auc_std"] < 0.02
    # at eff_S = 0.5 the cut sits at the signal median (1.0): eff_B = 1 - Phi(1) = 0.159
    assert m["rejection@0.5"] == pytest.approx(1 / 0.159, rel=0.1)
    assert m["rejection@0.3"] > m["rejection@0.5"]
    # a monotone transform of a score is the same tagger
    same = metrics_once(np.exp(x), y)
    assert same["auc"] == pytest.approx(m["auc"]) and same["rejection@0.3"] == pytest.approx(
        m["rejection@0.3"]
    )
    perfect = metrics_once(y.astype(float), y)
    assert perfect["auc"] == 1.0 and perfect["rejection@0.5"] == float("inf")
    with pytest.raises(SettingError, match="both classes"):
        tagger_metrics(x[:10], np.ones(10, bool))


def test_histogram_llr_and_mass_window():
    rng = np.random.default_rng(2)
    sig = np.column_stack([rng.normal(172, 15, 3000), rng.uniform(0.2, 0.7, 3000)])
    bkg = np.column_stack([rng.uniform(20, 300, 3000), rng.uniform(0.4, 1.0, 3000)])
    x, y = np.concatenate([sig, bkg]), np.repeat([True, False], 3000)
    llr = histogram_llr(x[::2], y[::2], x[1::2])
    assert (
        metrics_once(llr, y[1::2])["auc"]
        > metrics_once(mass_window_score(x[1::2, 0]), y[1::2])["auc"]
    )
    # classes drawn alike: the log ratio is noise around 0
    same = histogram_llr(bkg[:1500], np.repeat([True, False], 750), bkg[1500:], n_bins=5)
    assert abs(np.mean(same)) < 0.1


def test_likelihood_ratio_of_a_model_against_itself_is_zero(tiny_tokenizer, token_dir, tmp_path):
    a = tiny_checkpoint(tiny_tokenizer, token_dir, tmp_path / "a.ckpt")
    shutil.copy(a, tmp_path / "b.ckpt")
    sa, sb = score(a, [token_dir]), score(tmp_path / "b.ckpt", [token_dir])
    llr = np.asarray(sa["log_likelihood"]) - np.asarray(sb["log_likelihood"])
    assert np.all(llr == 0.0)
    is_top = np.asarray(sa["label"].to_pylist()) == "Tbqq"
    assert metrics_once(llr, is_top)["auc"] == 0.5  # all tied: no separation
    other = tiny_checkpoint(tiny_tokenizer, token_dir, tmp_path / "c.ckpt", seed=1)
    assert np.any(
        np.asarray(score(other, [token_dir])["log_likelihood"]) != np.asarray(sa["log_likelihood"])
    )


def test_calibrated_completions_give_uniform_ranks_and_biased_ones_do_not():
    rng = np.random.default_rng(3)
    n, m = 4000, 9
    truth = rng.normal(0, 1, (n, 1))
    noise = 0.5
    real = truth[:, 0] + rng.normal(0, noise, n)
    calibrated = truth + rng.normal(0, noise, (n, m))
    c = calibration(real, calibrated, seed=1)
    assert c["ks"] < c["ks_95"] and len(c["rank_histogram"]) == m + 1
    # the completions' mean follows the real value: corr = 1/sqrt((1 + s²)(1 + s²/M))
    expected = 1 / np.sqrt((1 + noise**2) * (1 + noise**2 / m))
    assert c["correlation"] == pytest.approx(expected, abs=0.02)
    assert c["spread_over_marginal"] == pytest.approx(
        noise * np.sqrt((m - 1) / m) / np.sqrt(1 + noise**2), rel=0.05
    )
    biased = calibration(real, calibrated + 0.5, seed=1)
    overconfident = calibration(real, truth + rng.normal(0, 0.1 * noise, (n, m)), seed=1)
    assert biased["ks"] > 3 * c["ks_95"] and overconfident["ks"] > 3 * c["ks_95"]
    # a jet kept whole: every completion is the real jet; ties are broken at random
    exact = np.repeat(real[:, None], m, axis=1)
    r = ranks(real, exact, np.random.default_rng(0))
    assert ks_uniform(r, m) < c["ks_95"]
    assert calibration(real, exact)["spread"] == pytest.approx(0.0, abs=1e-12)
    # integer observables (multiplicity) with many ties stay uniform when calibrated
    lam = rng.uniform(20, 60, (n, 1))
    ints = calibration(rng.poisson(lam[:, 0]), rng.poisson(lam, (n, m)), seed=2)
    assert ints["ks"] < ints["ks_95"]
