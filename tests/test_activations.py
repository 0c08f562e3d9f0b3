import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npvae import activations
from npvae.testing import strategies as nst

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
