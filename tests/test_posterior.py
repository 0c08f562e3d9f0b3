"""The Gaussian posterior's kernels against their references (npvae.posterior), directly:
hypothesis-drawn shapes and values, both dtypes, and the edge values (v large and small,
μ = 0, v = 0, NaN).  The references themselves are tested against finite differences, the
sampler's moments and a Monte Carlo KL in test_distributions.py."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npvae import posterior
from npvae.testing import strategies as nst

from helpers import DTYPES, agree, agree_elementwise, agree_sum


def _draw(data, shape, dtype, low=-4.0, high=4.0):
    return data.draw(nst.arrays(shape, low=low, high=high)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data(), shape=nst.shapes(batch=(1, 30), width=(1, 12)), K=st.integers(1, 4))
def test_reparametrize_kl_kernel_matches_its_reference(dtype, data, shape, K):
    """One sample per example (the ELBO) or K of them (the importance-weighted step), the
    kernel's z rows example-major (example i's sample k at row i·K + k)."""
    mu, lv = (_draw(data, shape, dtype, -6, 6) for _ in range(2))
    eps = _draw(data, (K, *shape), dtype, -6, 6)
    B, J = shape
    z, std, kl = np.empty((B * K, J), dtype), np.empty(shape, dtype), np.empty(B, dtype)
    kl_dim = np.empty(J)
    posterior.reparametrize_kl_(mu, lv, eps, z, std, kl, kl_dim)
    z_ref, std_ref = posterior.reparametrize(mu, lv, eps)  # (K, B, J)
    z_ref = z_ref.transpose(1, 0, 2).reshape(B * K, J)
    agree(dtype, (std, std_ref))
    agree_elementwise(dtype, z, z_ref, [np.repeat(mu, K, axis=0), (std_ref * eps).transpose(1, 0, 2).reshape(B * K, J)])
    terms = posterior.kl_normal_per_dim(mu, lv)
    agree_sum(dtype, kl, posterior.kl_normal(mu, lv), [0.5 * mu * mu, 0.5 * np.exp(lv), 0.5 + 0 * mu, 0.5 * lv])
    assert np.all(kl >= -1e-6 * np.abs(terms).sum(axis=1))
    scale = (0.5 * mu.astype(np.float64) ** 2 + 0.5 * np.exp(lv.astype(np.float64)) + 0.5 + 0.5 * np.abs(lv)).sum(axis=0)
    err = np.abs(kl_dim - terms.astype(np.float64).sum(axis=0))
    assert np.all(err <= (1e-5 if dtype == np.float32 else 1e-12) * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data(), shape=nst.shapes(batch=(1, 30), width=(1, 12)), wkl=st.floats(0, 2))
def test_reparametrize_kl_backward_kernel_matches_its_reference(dtype, data, shape, wkl):
    mu, lv, eps, dz = (_draw(data, shape, dtype, -6, 6) for _ in range(4))
    mask = (data.draw(nst.unit_arrays((shape[1],))) > 0.3).astype(dtype)  # free bits: 0 or 1 per dimension
    std = np.exp(lv * dtype(0.5))
    d, dlv = dz.copy(), np.empty(shape, dtype)
    posterior.reparametrize_kl_backward_(d, eps, std, mu, lv, dtype(wkl), mask, dlv)
    dmu_z, dlv_z = posterior.reparametrize_backward(dz, eps, std)
    w = np.broadcast_to(dtype(wkl) * mask, shape)
    dmu_kl, dlv_kl = posterior.kl_normal_backward(mu, lv, w)
    agree_elementwise(dtype, d, dmu_z + dmu_kl, [dmu_z, dmu_kl])
    agree_elementwise(dtype, dlv, dlv_z + dlv_kl, [dlv_z, dlv_kl])


@pytest.mark.parametrize("dtype", DTYPES)
def test_posterior_kernels_at_the_edges(dtype):
    """μ = 0, v = 0: σ = 1, z = ε, KL exactly 0; v = ±60: σ and KL finite and as the reference;
    a NaN in μ or v comes out as NaN in z and KL, not as a number."""
    mu = np.array([[0.0, 0.0, 1.0, np.nan], [0.0, 0.0, -2.0, 0.0]], dtype)
    lv = np.array([[0.0, 60.0, -60.0, 0.0], [0.0, 0.0, 1e-9, np.nan]], dtype)
    eps = np.array([[0.5, -1.0, 2.0, 1.0], [1.5, 0.0, -1.0, 1.0]], dtype)
    z, std, kl = np.empty_like(mu), np.empty_like(mu), np.empty(2, dtype)
    c = np.ascontiguousarray  # the kernel's arrays have contiguous rows
    posterior.reparametrize_kl_(c(mu[:, :2]), c(lv[:, :2]), c(eps[None, :, :2]), c(z[:, :2]), c(std[:, :2]), kl, np.empty(2))
    assert kl[1] == 0.0
    posterior.reparametrize_kl_(mu, lv, eps[None], z, std, kl, np.empty(4))
    assert z[1, 0] == eps[1, 0] and std[1, 0] == 1.0
    assert np.isfinite(std[0, 1]) and np.isfinite(std[0, 2])
    assert np.isnan(z[0, 3]) and np.isnan(kl[0]) and np.isnan(z[1, 3]) and np.isnan(kl[1])
    z_ref, std_ref = posterior.reparametrize(mu, lv, eps)
    np.testing.assert_allclose(std[:, :3], std_ref[:, :3], rtol=3e-6 if dtype == np.float32 else 1e-14)
