import numpy as np
import pytest

from npvae import metrics


def test_ranks_average_ties():
    np.testing.assert_array_equal(metrics.ranks([10, 20, 20, 5]), [2, 3.5, 3.5, 1])


def test_spearman():
    x = np.arange(50.0)
    assert metrics.spearman(x, x ** 3) == pytest.approx(1.0)
    assert metrics.spearman(x, -np.exp(x / 10)) == pytest.approx(-1.0)


def test_roc_auc_and_rejection():
    bkg = np.arange(100.0)
    assert metrics.roc_auc(bkg, bkg + 1000) == 1.0
    assert metrics.roc_auc(bkg, bkg) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    # two unit Gaussians one σ apart: AUC = Φ(1/√2) = 0.760
    assert metrics.roc_auc(rng.normal(size=4000), rng.normal(1.0, 1.0, size=4000)) == pytest.approx(0.760, abs=0.015)
    assert metrics.rejection_at(bkg, bkg + 1000) == float("inf")
    u = np.linspace(0, 1, 1001)
    assert metrics.rejection_at(u, u) == pytest.approx(1 / 0.3, rel=0.01)
