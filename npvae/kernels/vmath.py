"""exp, expm1, log1p and tanh written as plain arithmetic, so that LLVM vectorises the loops
that call them (numba's ``math.exp`` is a scalar libm call: ~11 ns an element against
NumPy's SIMD ~0.7 ns, measured on these machines, and numba's SVML path needs an llvmlite
that PyPI does not ship).

Every function computes in float64 whatever its argument's type, and is accurate to a few
units in the last place of float64, so a float32 caller rounds once at the end.

    exp(x)    = 2^k · p(r),  k = round(x / ln 2),  r = x − k ln 2 ∈ [−ln2/2, ln2/2]
              p the degree-13 Taylor polynomial of e^r (remainder < |r|^14/14! < 4e-18);
              2^k is built from its bits (k + 1023) << 52 by a bit cast, which LLVM vectorises
    expm1(x)  = 2^k q(r) + (2^k − 1),  k and r as for exp,  q(r) = r + r²/2! + … + r¹³/13!
              (k = 0 for |x| < ln2/2: the polynomial of x itself, no cancellation; elsewhere
              |2^k − 1| ≥ 1/2 and the sum loses nothing); one polynomial, not two
    log1p(t)  for 0 ≤ t ≤ 1 (the case of ln(1 + e^{−|a|})): u = 1 + t = 2^k m, m ∈ [1/√2, √2];
              ln m = 2 atanh(s) = 2 (s + s³/3 + … + s²³/23), s = (m − 1)/(m + 1), |s| < 0.172;
              ln(1 + t) = k ln 2 + ln m + (t − (u − 1))/u, the last term the rounding of 1 + t
    tanh(a)   = −sign(a) · e/(2 + e),  e = expm1(−2|a|)

and one in float32 arithmetic, for float32 layers (16 lanes to a 512-bit vector, not 8; a
third of the time of ``tanh`` on float32 data, within 1.3 units in the last place of float32
of the exact value, where ``tanh`` rounded to float32 is within 0.5):

    tanh32(a) = sign(a) · (x + x³ P(x²))           for x = |a| < 0.875, P a least-squares fit
                                                   of degree 6 in x² (relative error < 3e-9)
              = sign(a) · (1 − 2e/(1 + e)),  e = e^{−2 min(x, 9.5)}   elsewhere (2e/(1+e) ≤ 0.3:
                                                   its rounding is under half a unit of the sum)
    with e^t = 2^k · (1 + t' + … + t'⁷/7!),  t' = t − k ln 2 ∈ [−ln2/2, ln2/2] (remainder < 6e-9),
    and tanh32 = ±1 beyond |a| = 9.5, where 1 − tanh(a) < 2^−25 rounds to 1 anyway

That e^t is ``exp32`` (t ≤ 0, within 0.9 units of float32's last place): with ``log1p32``
(0 ≤ t ≤ 1, the atanh series above cut at s⁹, within 3.3 units) the Bernoulli likelihood of
float32 models in the compiled step; alone, the factors e^{−|l|} of ln p(x)'s estimator,
whose logarithms are taken in float64.

Arguments below −708 give exp = 0 (the true value is below 3e-308); NaN propagates.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import config as numba_config
from numba.extending import intrinsic

from .jit import ELEMENTWISE, jit

LN2_HI = 6.93147180369123816490e-01   # ln 2 split so that k·LN2_HI is exact for |k| < 2^11
LN2_LO = 1.90821492927058770002e-10
INV_LN2 = 1.44269504088896338700
LN2 = 0.6931471805599453
SQRT2 = 1.4142135623730951
EXP_MIN = -708.0                      # e^-708 ≈ 3.3e-308, the smallest normal float64 near
EXP_MAX = 709.0

# the inline flags of every helper: they are called from kernels' inner loops
_inline = jit(inline="always", **ELEMENTWISE)


# float32 constants of tanh32
_F1, _F2, _HALF = np.float32(1.0), np.float32(2.0), np.float32(0.5)
_LN2_HI_32 = np.float32(0.693359375)       # 8 significant bits: k·_LN2_HI_32 exact for |k| < 2^16
_LN2_LO_32 = np.float32(-2.12194440e-4)
_INV_LN2_32 = np.float32(1.44269504)
_TANH32_SMALL = np.float32(0.875)          # below: the odd polynomial; above: the exponential
_TANH32_FLAT = np.float32(9.5)             # above: tanh rounds to 1 in float32
# tanh(x) = x + x³ P(x²) on [0, 0.875], P's coefficients from the constant term up: a
# least-squares fit of (tanh x − x)/x³ weighted for tanh's relative error, rounded to float32
_TANH32_P = (np.float32(-0.3333333134651184), np.float32(0.13333207368850708),
             np.float32(-0.05394911393523216), np.float32(0.021742258220911026),
             np.float32(-0.008422385901212692), np.float32(0.002738116541877389),
             np.float32(-0.0005152330850251019))
_EXP32_MIN = np.float32(-87.0)
_SQRT2_32 = np.float32(1.4142135)
_LN2_32 = np.float32(0.6931472)
_ATANH32_P = tuple(np.float32(1.0 / n) for n in (9, 7, 5, 3, 1))  # atanh(s)/s in s², 1/9 first
_EXP32_P = tuple(np.float32(1.0 / math.factorial(n)) for n in range(7, -1, -1))  # 1/7!, …, 1/0!


def _bitcast(to, frm, lltype):
    """An intrinsic that reinterprets a ``frm`` integer's bits as a ``to`` float (LLVM
    ``bitcast``, which LLVM vectorises); under ``NUMBA_DISABLE_JIT=1`` the same as NumPy's
    ``view``, so that every kernel still runs as plain Python."""
    if numba_config.DISABLE_JIT:
        np_from, np_to = np.dtype(str(frm)), np.dtype(str(to))
        return lambda bits: np.array(bits).astype(np_from).view(np_to)[()]

    @intrinsic
    def bits_to_float(typingctx, bits):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], lltype)
        return to(frm), codegen
    return bits_to_float


_bits_to_float32 = _bitcast(types.float32, types.int32, ir.FloatType())
_bits_to_float64 = _bitcast(types.float64, types.int64, ir.DoubleType())


@_inline
def _taylor_from_half(r):
    # Horner form of 1/2! + r/3! + … + r¹¹/13!, the tail that e^r and e^r − 1 share
    p = 1.6059043836821613e-10          # 1/13!
    p = p * r + 2.08767569878681e-09    # 1/12!
    p = p * r + 2.505210838544172e-08   # 1/11!
    p = p * r + 2.755731922398589e-07   # 1/10!
    p = p * r + 2.7557319223985893e-06  # 1/9!
    p = p * r + 2.48015873015873e-05    # 1/8!
    p = p * r + 0.0001984126984126984   # 1/7!
    p = p * r + 0.001388888888888889    # 1/6!
    p = p * r + 0.008333333333333333    # 1/5!
    p = p * r + 0.041666666666666664    # 1/4!
    p = p * r + 0.16666666666666666     # 1/3!
    return p * r + 0.5


@_inline
def _exp_poly(r):
    # Horner form of Σ_{n≤13} r^n / n!
    return (_taylor_from_half(r) * r + 1.0) * r + 1.0


@_inline
def exp(x):
    """e^x in float64 arithmetic; 0 below −708, inf above 709, NaN stays NaN."""
    x = float(x)
    xc = min(max(x, EXP_MIN), EXP_MAX)
    k = math.floor(xc * INV_LN2 + 0.5)
    r = (xc - k * LN2_HI) - k * LN2_LO
    y = _exp_poly(r) * _bits_to_float64(np.int64(k + 1023.0) << 52)
    y = 0.0 if x < EXP_MIN else y
    y = math.inf if x > EXP_MAX else y
    return x if x != x else y


@_inline
def _expm1_poly(r):
    # e^r − 1 = r + r²/2! + … + r¹³/13!, Horner form, no cancellation near 0
    return _taylor_from_half(r) * r * r + r


@_inline
def expm1(x):
    """e^x − 1, accurate near 0: with x = k ln 2 + r, e^x − 1 = 2^k (e^r − 1) + (2^k − 1), one
    polynomial for e^r − 1 (|r| ≤ ln2/2); for |x| < ln2/2, k = 0 and it is the polynomial of x
    itself (no cancellation), elsewhere |2^k − 1| ≥ 1/2 carries the sum."""
    x = float(x)
    xc = min(max(x, EXP_MIN), EXP_MAX)
    k = math.floor(xc * INV_LN2 + 0.5)
    r = (xc - k * LN2_HI) - k * LN2_LO
    s = _bits_to_float64(np.int64(k + 1023.0) << 52)
    y = s * _expm1_poly(r) + (s - 1.0)
    y = -1.0 if x < EXP_MIN else y
    y = math.inf if x > EXP_MAX else y
    return x if x != x else y


@_inline
def log1p(t):
    """ln(1 + t) for 0 ≤ t ≤ 1."""
    t = float(t)
    u = 1.0 + t
    big = u > SQRT2
    m = u * 0.5 if big else u
    k = 1.0 if big else 0.0
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    p = 1.0 / 23
    p = p * s2 + 1.0 / 21
    p = p * s2 + 1.0 / 19
    p = p * s2 + 1.0 / 17
    p = p * s2 + 1.0 / 15
    p = p * s2 + 1.0 / 13
    p = p * s2 + 1.0 / 11
    p = p * s2 + 1.0 / 9
    p = p * s2 + 1.0 / 7
    p = p * s2 + 1.0 / 5
    p = p * s2 + 1.0 / 3
    p = p * s2 + 1.0
    return k * LN2 + 2.0 * s * p + (t - (u - 1.0)) / u


@_inline
def tanh(a):
    a = float(a)
    e = expm1(-2.0 * abs(a))
    y = -e / (2.0 + e)
    return -y if a < 0 else y


@_inline
def exp32(t):
    """e^t of a float32 in float32 arithmetic, for t ≤ 0: 2^k (1 + r + … + r⁷/7!), within a
    few units in the last place of float32; t below −87 is taken as −87 (e^−87 ≈ 1.6e−38, the
    bottom of float32's normal range), and so is NaN: callers that may see NaN carry it
    another way (a float-to-integer conversion of NaN would be undefined)."""
    t = np.float32(t)
    t = t if t > _EXP32_MIN else _EXP32_MIN
    k = np.floor(t * _INV_LN2_32 + _HALF)
    r = (t - k * _LN2_HI_32) - k * _LN2_LO_32
    q = _EXP32_P
    e = q[0]
    for n in range(1, 8):
        e = e * r + q[n]
    return e * _bits_to_float32((np.int32(k) + np.int32(127)) << 23)


@_inline
def log1p32(t):
    """ln(1 + t) of a float32 0 ≤ t ≤ 1 in float32 arithmetic, within a few units in the last
    place of float32: u = 1 + t = 2^k m, m ∈ [1/√2, √2], ln m = 2 atanh(s) = 2 (s + s³/3 +
    … + s⁹/9), s = (m − 1)/(m + 1), |s| < 0.172 (remainder < 2 s¹¹/11 < 1e−9), plus
    (t − (u − 1))/u, the rounding of 1 + t."""
    t = np.float32(t)
    u = _F1 + t
    big = u > _SQRT2_32
    m = u * _HALF if big else u
    s = (m - _F1) / (m + _F1)
    s2 = s * s
    q = _ATANH32_P
    p = q[0]
    for n in range(1, 5):
        p = p * s2 + q[n]
    k = _LN2_32 if big else np.float32(0.0)
    return k + (s + s) * p + (t - (u - _F1)) / u


@_inline
def tanh32(a):
    """tanh of a float32, in float32 arithmetic, within 1.3 units in the last place of
    float32 (see the module's docstring); NaN stays NaN, ±inf gives ±1."""
    a = np.float32(a)
    x = abs(a)
    s = x * x
    c = _TANH32_P
    p = c[6]
    p = p * s + c[5]
    p = p * s + c[4]
    p = p * s + c[3]
    p = p * s + c[2]
    p = p * s + c[1]
    p = p * s + c[0]
    small = x + x * s * p
    e = exp32(-_F2 * min(x, _TANH32_FLAT))             # t ∈ [−19, −1.75] where used
    big = _F1 - _F2 * e / (_F1 + e)
    y = small if x < _TANH32_SMALL else big
    y = a if a != a else y
    return -y if a < 0 else y
