import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npvae import activations
from npvae.kernels.codes import ACT_CODES
from npvae.testing import strategies as nst

from helpers import DTYPES, agree, agree_elementwise

NAMES = sorted(activations.ACTIVATIONS)


def numeric_derivative(f, a, h=1e-5):
    return (8 * (f(a + h) - f(a - h)) - (f(a + 2 * h) - f(a - 2 * h))) / (12 * h)


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_backward_matches_finite_differences(name, data):
    shape = data.draw(nst.shapes())
    a = data.draw(nst.arrays(shape, low=-4, high=4))
    if name in ("relu", "leaky_relu", "elu"):
        a = np.where(np.abs(a) < 1e-3, 0.5, a)  # keep the stencil off the kink at 0
    act = activations.get(name)
    dy = data.draw(nst.arrays(shape))
    y = act.forward(a)
    got = act.backward(dy, y)
    want = dy * numeric_derivative(act.forward, a)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(name, dtype):
    act = activations.get(name)
    a = np.linspace(-3, 3, 12, dtype=dtype).reshape(3, 4)
    y = act.forward(a)
    assert y.dtype == dtype
    assert act.backward(np.ones_like(a), y).dtype == dtype


def test_known_values():
    a = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(activations.get("relu").forward(a), [0, 0, 3])
    np.testing.assert_allclose(activations.get("leaky_relu").forward(a), [-0.02, 0, 3])
    np.testing.assert_allclose(activations.get("elu").forward(a), [np.exp(-2) - 1, 0, 3])
    np.testing.assert_allclose(activations.get("sigmoid").forward(a), 1 / (1 + np.exp(-a)))
    np.testing.assert_allclose(activations.get("softplus").forward(a), np.log1p(np.exp(a)))


@pytest.mark.parametrize("name", NAMES)
def test_extreme_inputs_stay_finite(name):
    act = activations.get(name)
    a = np.array([-1e4, -700.0, -50.0, 50.0, 700.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        y = act.forward(a)
        d = act.backward(np.ones_like(a), y)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(d))


def test_softplus_derivative_from_output_is_accurate_in_the_tails():
    a = np.array([-40.0, -10.0, 0.0, 10.0, 40.0])
    y = activations.softplus(a)
    d = activations.get("softplus").backward(np.ones_like(a), y)
    np.testing.assert_allclose(d, activations.sigmoid(a), rtol=1e-12)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="activation must be one of .*relu"):
        activations.get("swish")


# ----------------------------------------------------------------------------------------
# The kernels the compiled step runs, against the references above
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data(), shape=nst.shapes(batch=(1, 30), width=(1, 40)))
def test_bias_activation_kernel_matches_its_reference(dtype, name, data, shape):
    a = data.draw(nst.arrays(shape, low=-12, high=12)).astype(dtype)
    b = data.draw(nst.arrays(shape[1:], low=-3, high=3)).astype(dtype)
    y = a.copy()
    activations.bias_activation_(y, b, ACT_CODES[name])
    # the reference in float64, rounded: the float32 reference has rounding errors of its own
    ref = activations.bias_activation(a.astype(np.float64), b.astype(np.float64), name)
    agree_elementwise(dtype, y, ref.astype(dtype), [a, b + 0 * a, ref])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data(), shape=nst.shapes(batch=(1, 30), width=(1, 40)))
def test_activation_backward_bias_grad_kernel_matches_its_reference(dtype, name, data, shape):
    a = data.draw(nst.arrays(shape, low=-12, high=12)).astype(dtype)
    dy = data.draw(nst.arrays(shape, low=-3, high=3)).astype(dtype)
    y = activations.get(name).forward(a)
    d, db = dy.copy(), np.empty(shape[1], dtype)
    activations.activation_backward_bias_grad_(d, y, ACT_CODES[name], db)
    da = activations.activation_backward(dy, y, name)
    agree(dtype, (d, da))
    agree_elementwise(dtype, db, activations.bias_grad(da), [np.abs(da).sum(axis=0)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_bias_activation_kernel_at_the_edges(dtype, name):
    """±1e4, 0 and NaN: the kernel gives what the reference gives (NaN stays NaN)."""
    a = np.array([[-1e4, -30.0, -0.0, 0.0, 30.0, 1e4, np.nan]], dtype)
    b = np.zeros(a.shape[1], dtype)
    y = a.copy()
    with np.errstate(all="ignore"):
        activations.bias_activation_(y, b, ACT_CODES[name])
        ref = activations.bias_activation(a, b, name)
    np.testing.assert_allclose(y, ref, rtol=2e-6 if dtype == np.float32 else 1e-13, atol=1e-30)
    assert np.isnan(y[0, -1])
