"""Sums in one fixed order, whatever the CPU: the compiled step's reductions.

A sum that LLVM may reassociate is vectorised at the CPU's width, so its order (and its last
bits) change between a 512-bit, a 256-bit and a 128-bit machine.  Every sum here is instead
written in LANES running totals (element i goes to total i mod LANES, in order), which are
then added as a fixed tree ((t0 + t1) + (t2 + t3)) + ((t4 + t5) + (t6 + t7)), and the last
n mod LANES elements after it, in order: the same additions in the same order on every CPU,
which LLVM still turns into vector code (the totals are independent, so its SLP vectoriser
packs them into one or two registers).  Compiled without ``reassoc`` (:data:`ELEMENTWISE`),
so LLVM keeps that order.  Each is accumulated in float64, as the gemm kernel's products keep
one order at every width (:mod:`npvae.kernels.gemm`).

- :func:`lane_sum`, :func:`lane_sum_squares`: Σ a, Σ a² of a 1-D array;
- :func:`lane_log1p_sum`: Σ ln(1 + e_j) for e_j ∈ [0, 1], as logarithms of products;
- :func:`row_sums`: a row's terms (a likelihood's −ln p per example); :func:`sum_squares`:
  the global gradient norm's Σ g²; :func:`add_partials`: the row blocks' partial gradients.
"""
from __future__ import annotations

import math

import numpy as np

from .jit import ELEMENTWISE, jit

LANES = 8
"""The running totals of every sum (the tree below is written for eight)."""
# factors multiplied before a logarithm is taken: each lies in [1, 2] and a lane multiplies
# 64 of them (≤ 2^64), the eight lanes' product ≤ 2^512, far inside float64's range
FACTORS_PER_LOG = 512

_inline = jit(inline="always", **ELEMENTWISE)


@_inline
def lane_sum(a):
    """Σ_i a_i in float64, in the fixed order of the module's docstring; a 1-D."""
    n = a.shape[0]
    m = n - n % LANES
    t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = 0.0
    for i in range(0, m, LANES):
        t0 += np.float64(a[i])
        t1 += np.float64(a[i + 1])
        t2 += np.float64(a[i + 2])
        t3 += np.float64(a[i + 3])
        t4 += np.float64(a[i + 4])
        t5 += np.float64(a[i + 5])
        t6 += np.float64(a[i + 6])
        t7 += np.float64(a[i + 7])
    acc = ((t0 + t1) + (t2 + t3)) + ((t4 + t5) + (t6 + t7))
    for i in range(m, n):
        acc += np.float64(a[i])
    return acc


@_inline
def lane_sum_squares(a):
    """Σ_i a_i² in float64, in the fixed order of the module's docstring; a 1-D."""
    n = a.shape[0]
    m = n - n % LANES
    t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = 0.0
    for i in range(0, m, LANES):
        v0, v1, v2, v3 = np.float64(a[i]), np.float64(a[i + 1]), np.float64(a[i + 2]), np.float64(a[i + 3])
        v4, v5, v6, v7 = np.float64(a[i + 4]), np.float64(a[i + 5]), np.float64(a[i + 6]), np.float64(a[i + 7])
        t0 += v0 * v0
        t1 += v1 * v1
        t2 += v2 * v2
        t3 += v3 * v3
        t4 += v4 * v4
        t5 += v5 * v5
        t6 += v6 * v6
        t7 += v7 * v7
    acc = ((t0 + t1) + (t2 + t3)) + ((t4 + t5) + (t6 + t7))
    for i in range(m, n):
        v = np.float64(a[i])
        acc += v * v
    return acc


@_inline
def _lane_product(e, j0, n):
    """Π_{j<n} (1 + e[j0 + j]) in float64, lanes as for the sums; n ≤ FACTORS_PER_LOG."""
    m = n - n % LANES
    p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = 1.0
    for j in range(0, m, LANES):
        k = j0 + j
        p0 *= 1.0 + np.float64(e[k])
        p1 *= 1.0 + np.float64(e[k + 1])
        p2 *= 1.0 + np.float64(e[k + 2])
        p3 *= 1.0 + np.float64(e[k + 3])
        p4 *= 1.0 + np.float64(e[k + 4])
        p5 *= 1.0 + np.float64(e[k + 5])
        p6 *= 1.0 + np.float64(e[k + 6])
        p7 *= 1.0 + np.float64(e[k + 7])
    p = ((p0 * p1) * (p2 * p3)) * ((p4 * p5) * (p6 * p7))
    for j in range(m, n):
        p *= 1.0 + np.float64(e[j0 + j])
    return p


@_inline
def lane_log1p_sum(e):
    """Σ_j ln(1 + e_j) for e_j ∈ [0, 1] (1-D): one logarithm per FACTORS_PER_LOG factors
    (the logarithm of their product) instead of a log1p per element."""
    D = e.shape[0]
    acc = 0.0
    j0 = 0
    while j0 < D:
        acc += math.log(_lane_product(e, j0, min(FACTORS_PER_LOG, D - j0)))
        j0 += FACTORS_PER_LOG
    return acc


@jit(**ELEMENTWISE)
def row_sums(terms, out):
    """out[i] ← Σ_j terms[i, j] in float64 (:func:`lane_sum` of each row); terms (B, D) with
    contiguous rows, out (B,)."""
    for i in range(terms.shape[0]):
        out[i] = lane_sum(terms[i])


@jit(**ELEMENTWISE)
def sum_squares(a):
    """Σ a² in float64 of a 1-D array (:func:`lane_sum_squares`)."""
    return lane_sum_squares(a)


@jit(**ELEMENTWISE)
def add_partials(g, partials):
    """g ← g + Σ_t partials[t] (t in order); returns Σ g² in float64.  g (n,), partials (T, n)."""
    for t in range(partials.shape[0]):
        p = partials[t]
        for i in range(g.shape[0]):
            g[i] += p[i]
    return lane_sum_squares(g)
