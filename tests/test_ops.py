"""Numerical accuracy of the elementwise kernels in npvae.ops."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npvae import ops
from npvae.testing import strategies as nst


def test_bernoulli_nll_is_exact_for_huge_logits():
    logits = np.array([[-1e4, 1e4, -1e4, 1e4, 0.0]])
    x = np.array([[0.0, 1.0, 1.0, 0.0, 1.0]])
    nll, g = ops.bernoulli_nll(logits, x)
    assert nll[0] == pytest.approx(2e4 + math.log(2), rel=1e-15)
    np.testing.assert_array_equal(g, [[0.0, 0.0, -1.0, 1.0, -0.5]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bernoulli_nll_huge_logits_in_both_dtypes(dtype):
    logits = np.array([[-1e4, 1e4, 30.0, -30.0]], dtype=dtype)
    x = np.array([[0.0, 1.0, 1.0, 0.0]], dtype=dtype)
    nll, g = ops.bernoulli_nll(logits, x)
    assert nll.dtype == dtype and g.dtype == dtype
    assert np.isfinite(nll).all() and nll[0] < 1e-12


def test_gaussian_nll_matches_closed_form():
    rng = np.random.default_rng(0)
    m, x = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    s = rng.normal(size=(5, 3))
    nll, dm, ds = ops.gaussian_nll(m, x, s)
    want = -np.sum(-0.5 * np.log(2 * np.pi * np.exp(s)) - (x - m) ** 2 / (2 * np.exp(s)), axis=1)
    np.testing.assert_allclose(nll, want, rtol=1e-13)
    np.testing.assert_allclose(dm, (m - x) / np.exp(s), rtol=1e-13)
    np.testing.assert_allclose(ds, 0.5 - 0.5 * (x - m) ** 2 / np.exp(s), rtol=1e-12, atol=1e-15)


def _direct_log_c(l):
    return np.log(l / np.tanh(l / 2))


def _direct_dlog_c(l):
    return 1 / l - 1 / np.sinh(l)


def test_cb_normaliser_series_matches_closed_form_where_both_are_accurate():
    # On 0.3 <= |l| < 1 the closed forms cancel by at most two digits, so they are a fair
    # float64 reference for the Taylor branch that npvae uses there.
    l = np.concatenate([np.linspace(0.3, 0.999, 50), -np.linspace(0.3, 0.999, 50)])
    log_c, dlog_c = ops.cb_log_normaliser(l)
    np.testing.assert_allclose(log_c, _direct_log_c(l), rtol=1e-14)
    np.testing.assert_allclose(dlog_c, _direct_dlog_c(l), rtol=1e-12)


def test_cb_normaliser_closed_form_branch():
    l = np.array([1.0, 1.5, 3.0, 20.0, 700.0, -2.0, -40.0])
    log_c, dlog_c = ops.cb_log_normaliser(l)
    np.testing.assert_allclose(log_c, _direct_log_c(l), rtol=1e-14)
    np.testing.assert_allclose(dlog_c, _direct_dlog_c(l), rtol=1e-13)


def test_cb_normaliser_near_half_uses_the_taylor_limit():
    # λ = ½ exactly (l = 0): C = 2 and the slope is 0; near it, ln C ≈ ln 2 + l²/12 and
    # d ln C/dl ≈ l/6 − 7 l³/360 (u = l/2: ln(u coth u) = u²/3 − 7u⁴/90 + …), where the closed forms have lost every digit.
    l = np.array([0.0, 1e-300, 1e-12, -1e-8, 1e-4, -1e-3])
    log_c, dlog_c = ops.cb_log_normaliser(l)
    np.testing.assert_allclose(log_c, math.log(2) + l**2 / 12 - 7 * l**4 / 1440, rtol=1e-15)
    np.testing.assert_allclose(dlog_c, l / 6 - 7 * l**3 / 360, rtol=1e-12, atol=0)


@pytest.mark.parametrize("l", [1e4, -1e4, 1e300])
def test_cb_normaliser_is_finite_for_huge_logits(l):
    log_c, dlog_c = ops.cb_log_normaliser(np.array([l]))
    assert log_c[0] == pytest.approx(math.log(abs(l)), rel=1e-12)
    assert dlog_c[0] == pytest.approx(1 / l, rel=1e-12)


def test_cb_normaliser_float32_near_half():
    l64 = np.array([-0.9, -0.1, -1e-3, -1e-6, 0.0, 1e-6, 1e-3, 0.1, 0.9])
    l32 = l64.astype(np.float32)
    c32, d32 = ops.cb_log_normaliser(l32)
    c64, d64 = ops.cb_log_normaliser(l32.astype(np.float64))
    assert c32.dtype == np.float32 and d32.dtype == np.float32
    np.testing.assert_allclose(c32, c64, rtol=1e-6)
    np.testing.assert_allclose(d32, d64, rtol=1e-5, atol=1e-12)


@given(l=st.floats(-30, 30))
def test_cb_normaliser_slope_matches_finite_differences(l):
    h = 1e-4
    f = lambda t: ops.cb_log_normaliser(np.array([t]))[0][0]
    num = (8 * (f(l + h) - f(l - h)) - (f(l + 2 * h) - f(l - 2 * h))) / (12 * h)
    got = ops.cb_log_normaliser(np.array([l]))[1][0]
    assert abs(got - num) <= 1e-9 * max(1.0, abs(got))


def test_cb_mean_matches_its_closed_form_and_limits():
    l = np.array([-700.0, -5.0, -1.0, -0.2, 0.2, 1.0, 5.0, 700.0])
    want = 1 / (1 - np.exp(-l)) - 1 / l
    np.testing.assert_allclose(ops.cb_mean(l), want, rtol=1e-12)
    small = np.array([0.0, 1e-9, -0.05, 0.09])
    np.testing.assert_allclose(ops.cb_mean(small), 0.5 + small / 12 - small**3 / 720 + small**5 / 30240, rtol=1e-14)
    assert ops.cb_mean(np.array([-1e4]))[0] == pytest.approx(1e-4)
    assert ops.cb_mean(np.array([1e4]))[0] == pytest.approx(1 - 1e-4)


@given(data=st.data())
def test_bias_grad_and_activation_backward_shapes(data):
    b, h = data.draw(nst.shapes())
    d = data.draw(nst.arrays((b, h)))
    np.testing.assert_allclose(ops.bias_grad(d), d.sum(axis=0))
