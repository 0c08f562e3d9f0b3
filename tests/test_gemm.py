"""npvae.kernels.gemm.product: npvae's own matrix product for compiled code.

What it promises: c ← a b (or c + a b) for every layout the compiled step passes, each
element one in-order chain of fused multiply-adds over k, so that the tile shape, the
vector width and the operands' layout never change a bit."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from npvae.kernels import gemm

WIDTHS = (128, 256, 512)
_BUILT = {}


def built(bits):
    if bits not in _BUILT:
        _BUILT[bits] = gemm.build(bits)
    return _BUILT[bits]


def operands(rng, m, k, n, ta, tb, dtype):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return (a.T if ta else a), (b.T if tb else b)


shapes = dict(m=st.integers(1, 45), k=st.integers(0, 40), n=st.integers(1, 70), ta=st.booleans(),
              tb=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]), acc=st.booleans(),
              seed=st.integers(0, 2**32 - 1))


@settings(max_examples=80, deadline=None)
@given(**shapes)
def test_the_product_equals_a_float64_product_for_every_layout(m, k, n, ta, tb, dtype, acc, seed):
    """Both operands row-major or transposed (a row-major a with a bᵀ-stored b is the case
    copied first), partial tiles in m and n, k = 0; c's old values are NaN unless added to."""
    rng = np.random.default_rng(seed)
    a, b = operands(rng, m, k, n, ta, tb, dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype) if acc else np.full((m, n), np.nan, dtype)
    c = c0.copy()
    gemm.product(a, b, c, acc)
    want = a.astype(np.float64) @ b.astype(np.float64) + (c0.astype(np.float64) if acc else 0.0)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(c, want, rtol=tol, atol=tol * np.sqrt(k + 1) * max(1.0, np.abs(want).max()))


@pytest.mark.reproducibility
@settings(max_examples=40, deadline=None)
@given(**shapes)
def test_every_vector_width_and_layout_gives_the_same_bits(m, k, n, ta, tb, dtype, acc, seed):
    rng = np.random.default_rng(seed)
    a, b = operands(rng, m, k, n, ta, tb, dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    outs = []
    for bits in WIDTHS:
        c = c0.copy()
        built(bits)(a, b, c, acc)
        outs.append(c)
    # the same numbers stored the other way round: each element's chain is unchanged
    c = c0.copy()
    gemm.product(np.ascontiguousarray(a) if ta else np.asfortranarray(a),
                 np.ascontiguousarray(b) if tb else np.asfortranarray(b), c, acc)
    outs.append(c)
    for other in outs[1:]:
        np.testing.assert_array_equal(other, outs[0])


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 8), k=st.integers(1, 12), n=st.integers(1, 40), ta=st.booleans(), tb=st.booleans(),
       acc=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_each_element_is_one_in_order_chain_of_fused_multiply_adds(m, k, n, ta, tb, acc, seed):
    """float64, checked exactly: s ← fma(a[i, k], b[k, j], s) for k = 0, 1, …, each step
    rounded once (exact rationals, then the nearest double). A kernel that summed in
    another order, or rounded each product before adding it, fails here."""
    rng = np.random.default_rng(seed)
    a, b = operands(rng, m, k, n, ta, tb, np.float64)
    a = a * 10.0 ** rng.integers(-8, 9, a.shape)  # magnitudes apart: the order shows
    c0 = rng.standard_normal((m, n))
    c = c0.copy()
    gemm.product(a, b, c, acc)
    for i in range(m):
        for j in range(n):
            s = float(c0[i, j]) if acc else 0.0
            for kk in range(k):
                s = float(Fraction(float(a[i, kk])) * Fraction(float(b[kk, j])) + Fraction(s))
            assert c[i, j] == s, (i, j, c[i, j], s)


def test_nan_and_infinity_reach_exactly_the_elements_they_touch():
    a = np.ones((13, 9), np.float32)
    b = np.ones((9, 50), np.float32)
    a[4, 2] = np.nan
    b[3, 41] = np.inf
    c = np.empty((13, 50), np.float32)
    gemm.product(a, b, c, False)
    want = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(c), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(c), np.isinf(want))
    assert np.isnan(c[4]).all() and np.isinf(np.delete(c[:, 41], 4)).all()


def test_an_empty_sum_writes_zeros_or_leaves_c():
    a, b = np.empty((5, 0)), np.empty((0, 7))
    c = np.full((5, 7), 3.0)
    gemm.product(a, b, c, True)
    assert (c == 3.0).all()
    gemm.product(a, b, c, False)
    assert (c == 0.0).all()


def test_the_width_is_the_machines_and_others_are_refused():
    assert gemm.VECTOR_BITS in WIDTHS
    with pytest.raises(ValueError, match="vector_bits"):
        gemm.build(384)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 30), k=st.integers(1, 30), n=st.integers(1, 50), pad=st.integers(1, 5),
       acc=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_column_slices_and_c_of_any_strides(m, k, n, pad, acc, seed):
    """Operands that are column slices of wider arrays (row stride larger than the row), and
    c a column slice or the transpose of a row-major array."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k + 2 * pad))[:, pad:pad + k]
    b = rng.standard_normal((k, n + pad))[:, pad:]
    want = a @ b
    wide, row_major_t = np.ones((m, n + pad)), np.ones((n, m))
    for c in (wide[:, pad:], row_major_t.T):
        gemm.product(a, b, c, acc)
        np.testing.assert_allclose(c, want + (1.0 if acc else 0.0), rtol=1e-12, atol=1e-12)
    assert (wide[:, :pad] == 1.0).all()  # the columns left of the slice are untouched


def test_shapes_or_dtypes_that_do_not_match_are_refused():
    a, b = np.ones((3, 4)), np.ones((4, 5))
    for bad_b, c in ((np.ones((5, 5)), np.ones((3, 5))), (b, np.ones((3, 6))), (b, np.ones((2, 5)))):
        with pytest.raises(ValueError, match="shapes do not match"):
            gemm.product(a, bad_b, c, False)
    with pytest.raises(ValueError, match="one dtype"):
        gemm.product(a, b, np.ones((3, 5), np.float32), False)


def test_compiling_a_caller_raises_no_type_safety_warning():
    """Addresses stay unsigned and offsets signed (no unsafe cast for numba to warn about),
    so a user's training prints nothing of the kernel's."""
    import warnings

    from numba.core.errors import NumbaWarning

    @njit
    def caller(a, b, c):
        gemm.product(a[1:], b.T, c[1:], True)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        caller(np.ones((9, 5), np.float32), np.ones((7, 5), np.float32), np.ones((9, 7), np.float32))
    assert not [w for w in seen if issubclass(w.category, NumbaWarning)], [str(w.message) for w in seen]
