"""The importance weights' kernels against their references (npvae.importance, and
npvae.posterior's ln p(z) − ln q(z|x)): hypothesis-drawn K, B, J and values, the extremes of
log weights far below zero (the weights themselves underflow), and K = 1."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npvae import importance, posterior
from npvae.testing import strategies as nst


@given(data=st.data(), K=st.integers(1, 40), B=st.integers(1, 5), shift=st.sampled_from([0.0, -700.0, -1e5]))
def test_log_mean_exp_kernel_matches_its_reference(data, K, B, shift):
    log_w = data.draw(nst.arrays((K, B), low=-30, high=30)) + shift
    bound, wn = importance.log_mean_exp(log_w)
    for i in range(B):
        row = log_w[:, i].copy()
        got = importance.log_mean_exp_(row)
        assert abs(got - bound[i]) <= 1e-12 * (abs(bound[i]) + 1)
        np.testing.assert_allclose(row, wn[:, i], rtol=1e-12, atol=1e-300)
        assert abs(row.sum() - 1) < 1e-12 and np.all(row >= 0)
    assert np.all(np.isfinite(bound))  # far below zero the weights underflow, their log-mean-exp does not


def test_log_mean_exp_of_one_sample_is_its_log_weight_and_of_equal_weights_their_value():
    row = np.array([-123.25])
    assert importance.log_mean_exp_(row) == -123.25 and row[0] == 1.0
    row = np.full(7, -3.5)
    assert importance.log_mean_exp_(row) == pytest.approx(-3.5, abs=1e-14)
    np.testing.assert_allclose(row, 1 / 7, rtol=1e-15)
    bound, _ = importance.log_mean_exp(np.log(np.array([[1.0], [3.0]])))
    assert bound[0] == pytest.approx(math.log(2.0), rel=1e-15)  # ln of the mean of 1 and 3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(data=st.data(), K=st.integers(1, 4), B=st.integers(1, 4), J=st.integers(1, 12))
def test_log_prior_over_posterior_kernel_matches_its_reference(dtype, data, K, B, J):
    """ln p(z) − ln q(z|x) from z = μ + σ ε: the reference's densities against the kernel's
    cancelled form, for every sample (z rows example-major, as the step keeps them)."""
    mu, lv = (data.draw(nst.arrays((B, J), low=-4, high=4)).astype(dtype) for _ in range(2))
    eps = data.draw(nst.arrays((K, B, J), low=-4, high=4)).astype(dtype)
    z = np.empty((B * K, J), dtype)
    posterior.reparametrize_kl_(mu, lv, eps, z, np.empty((B, J), dtype), np.empty(B), np.empty(J))
    want = posterior.log_prior_over_posterior(z.reshape(B, K, J).transpose(1, 0, 2), eps, lv[None])  # (K, B)
    # and the same from the densities of the definition: ln N(z; 0, I) − ln N(z; μ, σ²)
    direct = (posterior.standard_normal_log_prob(z.reshape(B, K, J).astype(np.float64))
              - posterior.gaussian_log_prob(z.reshape(B, K, J).astype(np.float64), mu[:, None].astype(np.float64),
                                            lv[:, None].astype(np.float64))).T
    scale = 1 + np.abs(z.astype(np.float64)).reshape(B, K, J).transpose(1, 0, 2).__pow__(2).sum(-1) \
        + (eps.astype(np.float64) ** 2).sum(-1) + np.abs(lv.astype(np.float64)).sum(-1)[None]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.all(np.abs(direct - want) <= tol * scale)
    for k in range(K):
        for i in range(B):
            got = posterior.log_prior_over_posterior_(z, i * K + k, eps, k, i, lv, i)
            assert abs(got - want[k, i]) <= 1e-12 * scale[k, i]
