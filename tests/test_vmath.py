"""npvae.kernels.vmath: exp, expm1, log1p and tanh written as vectorisable arithmetic, each
within a few units in the last place of float64 of NumPy's, on drawn arguments, at the
edges of their ranges, and with NaN and infinities propagating as NumPy's do."""
import functools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import npvae

pytestmark = pytest.mark.skipif(npvae.get_backend() != "numba", reason="vmath is compiled code")

FASTMATH = {"contract", "nsz", "arcp"}  # as the compiled step's elementwise loops


@functools.lru_cache(maxsize=None)
def compiled(fn_name):
    import numba
    from npvae.kernels import vmath
    f = getattr(vmath, fn_name)

    @numba.njit(fastmath=FASTMATH, error_model="numpy")
    def apply(a, out):
        for i in range(a.shape[0]):
            out[i] = f(a[i])
    return apply


FUNCTIONS = {"exp": (np.exp, (-708.0, 709.0)), "expm1": (np.expm1, (-50.0, 50.0)),
             "log1p": (np.log1p, (0.0, 1.0)), "tanh": (np.tanh, (-30.0, 30.0))}
ULPS = {"exp": 2, "expm1": 3, "log1p": 3, "tanh": 3}


def ulp_error(got, ref):
    spacing = np.spacing(np.maximum(np.abs(ref), np.finfo(np.float64).tiny))
    return np.abs(got - ref) / spacing


@pytest.mark.parametrize("name", FUNCTIONS)
def test_on_a_million_arguments_over_the_range_and_near_zero(name):
    ref_fn, (lo, hi) = FUNCTIONS[name]
    rng = np.random.default_rng(7)
    a = np.concatenate([rng.uniform(lo, hi, 10**6), rng.uniform(max(lo, -1e-8), 1e-8, 10**5),
                        [lo, hi, 0.0, min(hi, 0.34657359), max(lo, -0.34657359), min(hi, np.sqrt(2) - 1)]])
    out = np.empty_like(a)
    compiled(name)(a, out)
    err = ulp_error(out, ref_fn(a))
    assert err.max() <= ULPS[name], (a[err.argmax()], out[err.argmax()], err.max())


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(FUNCTIONS)), st.data())
def test_drawn_arguments(name, data):
    ref_fn, (lo, hi) = FUNCTIONS[name]
    x = data.draw(st.floats(lo, hi, allow_nan=False))
    out = np.empty(1)
    compiled(name)(np.array([x]), out)
    assert ulp_error(out, ref_fn(np.array([x])))[0] <= ULPS[name], (x, out[0])


def test_special_values_behave_as_numpys():
    specials = np.array([np.nan, np.inf, -np.inf, -800.0, 800.0, -708.5, 0.0, -0.0])
    for name in ("exp", "expm1", "tanh"):
        out = np.empty_like(specials)
        compiled(name)(specials, out)
        with np.errstate(all="ignore"):
            ref = FUNCTIONS[name][0](specials)
        for got, want, x in zip(out, ref, specials):
            if np.isnan(want):
                assert np.isnan(got), (name, x)
            elif name == "exp" and x < -708:  # below the smallest normal: 0 (NumPy: subnormal)
                assert got == 0.0 and want < 3e-308
            else:
                assert got == want or abs(got - want) <= 1e-300 or ulp_error(np.array([got]), np.array([want]))[0] <= 3, (name, x, got, want)
    out = np.empty(2)
    compiled("log1p")(np.array([np.nan, 0.0]), out)
    assert np.isnan(out[0]) and out[1] == 0.0
