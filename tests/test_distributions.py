"""The Gaussian posterior, prior and KL: gradients, and the intended mathematics.

The property checks below are written as functions of the implementation so that the
"slipped" versions from the lecture (corrections L6 and L7) can be fed to them: those must fail.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npvae import distributions, ops
from npvae.testing import check_gradients
from npvae.testing import strategies as nst

MU = np.array([[0.7, -1.2, 0.0, 2.0]])
LOGVAR = np.array([[1.5, -1.0, 0.6, -2.0]])  # v != 0, so σ = e^{v/2} and e^{v} differ
N = 200_000


def sampler_moments_ok(reparametrize):
    eps = np.random.default_rng(1).standard_normal((N, 4))
    z = reparametrize(MU, LOGVAR, eps)[0]
    var = np.exp(LOGVAR[0])
    mean_ok = np.all(np.abs(z.mean(0) - MU[0]) < 5 * np.sqrt(var / N))
    var_ok = np.all(np.abs(z.var(0) - var) < 5 * var * np.sqrt(2 / N))
    return bool(mean_ok and var_ok)


def mc_kl_ok(reparametrize, kl_normal):
    """E_q[ln q(z) − ln p(z)], with z from the given sampler, equals the analytic KL."""
    eps = np.random.default_rng(2).standard_normal((N, 4))
    z = reparametrize(np.repeat(MU, N, 0), np.repeat(LOGVAR, N, 0), eps)[0]
    log_ratio = ops.gaussian_log_prob(z, MU, LOGVAR) - ops.standard_normal_log_prob(z)
    se = log_ratio.std() / math.sqrt(N)
    return abs(log_ratio.mean() - kl_normal(MU, LOGVAR)[0]) < 5 * se


def kl_is_a_divergence(kl_normal):
    rng = np.random.default_rng(3)
    mu, lv = rng.normal(size=(1000, 3)) * 2, rng.normal(size=(1000, 3)) * 2
    return bool(np.all(kl_normal(mu, lv) >= 0) and kl_normal(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 0)


def test_sampler_moments_are_mu_and_exp_logvar():
    assert sampler_moments_ok(lambda m, v, e: distributions.reparametrize(m, v, e))


def test_monte_carlo_kl_matches_analytic_kl():
    assert mc_kl_ok(lambda m, v, e: distributions.reparametrize(m, v, e), ops.kl_normal)


def test_kl_is_zero_at_the_prior_and_nonnegative():
    assert kl_is_a_divergence(ops.kl_normal)
    kl, _ = distributions.kl_standard_normal(np.zeros((2, 5)), np.zeros((2, 5)))
    np.testing.assert_array_equal(kl, 0.0)


@given(data=st.data())
def test_kl_nonnegative_for_drawn_values(data):
    b, j = data.draw(nst.shapes(width=(1, 6)))
    mu = data.draw(nst.arrays((b, j), low=-10, high=10))
    lv = data.draw(nst.arrays((b, j), low=-20, high=20))
    assert np.all(ops.kl_normal(mu, lv) >= 0)


# corrections L6 and L7: the lecture's slips, written out, must be caught by the checks above.
def _lecture_kl(mu, lv):  # −KL = ½ Σ (1 + ln σ² − μ² + σ²)
    return -0.5 * np.sum(1 + lv - mu**2 + np.exp(lv), axis=-1)


def _exp_v_as_sigma(mu, lv, eps):  # numpy-ml's slip: σ = exp(v)
    return mu + np.exp(lv) * eps, np.exp(lv)


def test_correction_l6_lecture_kl_would_be_caught():
    assert not kl_is_a_divergence(_lecture_kl)
    assert not mc_kl_ok(lambda m, v, e: distributions.reparametrize(m, v, e), _lecture_kl)


def test_correction_l7_exp_v_as_sigma_would_be_caught():
    assert not sampler_moments_ok(_exp_v_as_sigma)
    assert not mc_kl_ok(_exp_v_as_sigma, ops.kl_normal)


def test_corrections_l4_l5_entropy_and_cross_term():
    """E_q[ln q] = −(J/2) ln 2π − ½ Σ (1 + v);  E_q[ln p] = −(J/2) ln 2π − ½ Σ (μ² + e^v)."""
    J = MU.shape[1]
    eps = np.random.default_rng(4).standard_normal((N, J))
    z, _ = distributions.reparametrize(MU, LOGVAR, eps)
    log_q = distributions.log_q(z, MU, LOGVAR)
    log_p = distributions.log_prior(z)
    entropy_term = -J / 2 * math.log(2 * math.pi) - 0.5 * np.sum(1 + LOGVAR)
    cross_term = -J / 2 * math.log(2 * math.pi) - 0.5 * np.sum(MU**2 + np.exp(LOGVAR))
    assert abs(log_q.mean() - entropy_term) < 5 * log_q.std() / math.sqrt(N)
    assert abs(log_p.mean() - cross_term) < 5 * log_p.std() / math.sqrt(N)
    # and the lecture's versions are far off
    assert abs(log_q.mean() - (-J / 2 * math.log(2 * math.pi) - 0.5 * np.sum(MU**2 + LOGVAR))) > 0.5
    assert abs(log_p.mean() - (-J / 2 * math.log(2 * math.pi) - 0.5 * np.sum(1 + np.exp(LOGVAR)))) > 0.5


def test_correction_l7_change_of_variables():
    """ln q(z|x) = ln N(ε; 0, I) − Σ_j ln σ_j exactly, for z = μ + σ ε."""
    eps = np.random.default_rng(6).standard_normal((10, 4))
    z, _ = distributions.reparametrize(MU, LOGVAR, eps)
    want = ops.standard_normal_log_prob(eps) - np.sum(0.5 * LOGVAR)
    np.testing.assert_allclose(distributions.log_q(z, MU, LOGVAR), want, rtol=1e-13)


@given(data=st.data(), samples=st.integers(0, 3))
def test_reparametrize_and_kl_gradients(data, samples):
    b, j = data.draw(nst.shapes(width=(1, 6)))
    mu = data.draw(nst.arrays((b, j)))
    lv = data.draw(nst.arrays((b, j)))
    eps_shape = (b, j) if samples == 0 else (samples, b, j)
    eps = data.draw(nst.arrays(eps_shape))
    dz = data.draw(nst.arrays(eps_shape))
    dkl = data.draw(nst.arrays((b,), low=0, high=2))
    params = {"mu": mu, "logvar": lv}

    def fn(p):
        z, z_bp = distributions.reparametrize(p["mu"], p["logvar"], eps)
        kl, kl_bp = distributions.kl_standard_normal(p["mu"], p["logvar"])
        dmu, dlv = z_bp(dz)
        dmu2, dlv2 = kl_bp(dkl)
        return float(np.sum(z * dz) + np.dot(kl, dkl)), {"mu": dmu + dmu2, "logvar": dlv + dlv2}

    check_gradients(fn, params)


def test_kl_per_dimension_weights():
    mu, lv = MU.copy(), LOGVAR.copy()
    w = np.array([[0.0, 1.0, 2.0, 0.5]])
    dmu, dlv = ops.kl_normal_backward(mu, lv, w)
    np.testing.assert_allclose(dmu, w * mu)
    np.testing.assert_allclose(dlv, w * 0.5 * (np.exp(lv) - 1))
    np.testing.assert_allclose(ops.kl_normal_per_dim(mu, lv).sum(-1), ops.kl_normal(mu, lv))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes(dtype):
    mu, lv = MU.astype(dtype), LOGVAR.astype(dtype)
    z, bp = distributions.reparametrize(mu, lv, np.ones_like(mu))
    kl, kbp = distributions.kl_standard_normal(mu, lv)
    assert z.dtype == dtype and kl.dtype == dtype
    assert all(g.dtype == dtype for g in bp(np.ones_like(z)) + kbp(np.ones(1, dtype)))
    assert distributions.log_q(z, mu, lv).dtype == dtype
