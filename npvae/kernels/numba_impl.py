"""The numba backend of :mod:`npvae.kernels`: compiled twins of numpy_impl, same signatures.

Each kernel is written once as plain Python over a range of rows (``*_rows``), compiled
and cached on disk (:mod:`npvae.kernels.jit` says where) so a second process loads it.  Large arrays are split into
row chunks run in parallel by a ``*_par`` driver (``prange`` over chunks); reductions over
the batch (bias gradients, the learned Gaussian variance) write one partial sum per chunk
and add them afterwards, so no two threads ever write the same element.  Under
``NUMBA_DISABLE_JIT=1`` every kernel runs as the plain Python it is written in.

fastmath flags live in FASTMATH: contraction to FMA, no signed zeros, reciprocal
approximations and reassociation; never nnan / ninf, so NaNs and infs still surface.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from .codes import ELU, IDENTITY, LEAKY_RELU, RELU, SIGMOID, SOFTPLUS, TANH
from .jit import jit as cached_jit

FASTMATH = {"contract", "nsz", "arcp", "reassoc"}
from ..constants import CB_TAYLOR_BELOW, LEAKY_SLOPE, LOG_2, LOG_2PI, SINH_SERIES
# Work below this many elements runs on one thread: waking the pool costs more.
PARALLEL_MIN_ELEMENTS = 1 << 15

# error_model="numpy": a float division by zero gives inf / nan as in NumPy instead of a
# Python ZeroDivisionError check per element, which also blocked SIMD vectorisation of
# every loop with a division (measured: Adam over 0.65 M float32 1.24 ms -> 0.37 ms).
jit = cached_jit(fastmath=FASTMATH, nogil=True, error_model="numpy")
jit_par = cached_jit(fastmath=FASTMATH, parallel=True, nogil=True, error_model="numpy")


def n_chunks(rows: int, size: int) -> int:
    if size < PARALLEL_MIN_ELEMENTS:
        return 1
    return max(1, min(numba.get_num_threads(), rows))


@jit
def _bounds(rows, nchunks, c):
    per = (rows + nchunks - 1) // nchunks
    r0 = c * per
    r1 = min(rows, r0 + per)
    return r0, r1


# ----------------------------------------------------------------------------------------
# Scalar helpers
# ----------------------------------------------------------------------------------------
@jit
def sigmoid(a):
    if a >= 0:
        return 1.0 / (1.0 + math.exp(-a))
    e = math.exp(a)
    return e / (1.0 + e)


@jit
def softplus(a):
    return max(a, 0.0) + math.log1p(math.exp(-abs(a)))


@jit
def act_forward(a, act):
    if act == IDENTITY:
        return a
    if act == RELU:
        return 0.0 if a <= 0 else a  # +0.0 as np.maximum(a, 0); NaN stays NaN, as there
    if act == LEAKY_RELU:
        return a if a > 0 else a * LEAKY_SLOPE
    if act == ELU:
        return a if a > 0 else math.expm1(a)
    if act == TANH:
        return math.tanh(a)
    if act == SIGMOID:
        return sigmoid(a)
    return softplus(a)


@jit
def act_derivative(y, act):
    """f'(a) written from y = f(a) (see npvae.activations)."""
    if act == IDENTITY:
        return 1.0
    if act == RELU:
        return 1.0 if y > 0 else 0.0
    if act == LEAKY_RELU:
        return 1.0 if y > 0 else LEAKY_SLOPE
    if act == ELU:
        return 1.0 if y > 0 else y + 1.0
    if act == TANH:
        return (1.0 - y) * (1.0 + y)
    if act == SIGMOID:
        return y * (1.0 - y)
    return -math.expm1(-y)


# ----------------------------------------------------------------------------------------
# Dense layers
# ----------------------------------------------------------------------------------------
@jit
def _bias_act_rows(a, b, act, r0, r1):
    # one loop per activation, so the branch is not inside the element loop
    H = a.shape[1]
    if act == IDENTITY:
        for i in range(r0, r1):
            for j in range(H):
                a[i, j] = a[i, j] + b[j]
    elif act == RELU:
        for i in range(r0, r1):
            for j in range(H):
                v = a[i, j] + b[j]
                a[i, j] = 0 if v <= 0 else v  # not "v if v > 0 else 0": that turns NaN into 0
    elif act == LEAKY_RELU:
        for i in range(r0, r1):
            for j in range(H):
                v = a[i, j] + b[j]
                a[i, j] = v if v > 0 else v * LEAKY_SLOPE
    else:
        for i in range(r0, r1):
            for j in range(H):
                a[i, j] = act_forward(a[i, j] + b[j], act)


@jit_par
def _bias_act_par(a, b, act, nchunks):
    for c in prange(nchunks):
        r0, r1 = _bounds(a.shape[0], nchunks, c)
        _bias_act_rows(a, b, act, r0, r1)


_SCRATCH: dict = {}


def _scratch(slot: int, shape, dtype) -> np.ndarray:
    """A reusable buffer per (slot, shape, dtype): no allocation in steady state."""
    key = (slot, shape, np.dtype(dtype).str)
    buf = _SCRATCH.get(key)
    if buf is None:
        if len(_SCRATCH) > 64:
            _SCRATCH.clear()
        buf = _SCRATCH[key] = np.empty(shape, dtype=dtype)
    return buf


def _exp_neg_abs(a, out):
    """out ← e^{−|a|} with NumPy's SIMD exp (numba's scalar libm exp is ~10× slower here)."""
    np.abs(a, out=out)
    np.negative(out, out=out)
    np.exp(out, out=out)


@jit
def _sigmoid_from_e(a, e):
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            ei = e[i, j]
            a[i, j] = 1 / (1 + ei) if a[i, j] >= 0 else ei / (1 + ei)


@jit
def _softplus_from_lp(a, lp):
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            v = a[i, j]
            a[i, j] = (v if v > 0 else 0) + lp[i, j]


def bias_act_(a, b, act):
    """Rectifiers and identity: one fused numba pass.  tanh, sigmoid and softplus: the
    exp / tanh / log1p go through NumPy's SIMD ufuncs in place (measured ~10× faster than
    numba's scalar calls on these machines), the rest is fused in numba."""
    if act == TANH:
        np.add(a, b, out=a)
        np.tanh(a, out=a)
        return
    if act in (SIGMOID, SOFTPLUS):
        np.add(a, b, out=a)
        e = _scratch(0, a.shape, a.dtype)
        _exp_neg_abs(a, e)
        if act == SIGMOID:
            _sigmoid_from_e(a, e)
        else:
            np.log1p(e, out=e)
            _softplus_from_lp(a, e)
        return
    nc = n_chunks(a.shape[0], a.size)
    if nc == 1:
        _bias_act_rows(a, b, act, 0, a.shape[0])
    else:
        _bias_act_par(a, b, act, nc)


@jit
def _act_bwd_rows(dy, y, act, partial, r0, r1):
    H = dy.shape[1]
    if act == IDENTITY:
        for i in range(r0, r1):
            for j in range(H):
                partial[j] += dy[i, j]
    elif act == RELU:
        for i in range(r0, r1):
            for j in range(H):
                d = dy[i, j] if y[i, j] > 0 else 0
                dy[i, j] = d
                partial[j] += d
    elif act == TANH:
        for i in range(r0, r1):
            for j in range(H):
                yv = y[i, j]
                d = dy[i, j] * ((1 - yv) * (1 + yv))
                dy[i, j] = d
                partial[j] += d
    else:
        for i in range(r0, r1):
            for j in range(H):
                d = dy[i, j] * act_derivative(y[i, j], act)
                dy[i, j] = d
                partial[j] += d


@jit_par
def _act_bwd_par(dy, y, act, partials, nchunks):
    for c in prange(nchunks):
        r0, r1 = _bounds(dy.shape[0], nchunks, c)
        _act_bwd_rows(dy, y, act, partials[c], r0, r1)


@jit
def _sum_rows_into(partials, out):
    for j in range(out.shape[0]):
        s = partials[0, j]
        for c in range(1, partials.shape[0]):
            s += partials[c, j]
        out[j] = s


def act_backward_bias_grad_(dy, y, act, db):
    nc = n_chunks(dy.shape[0], dy.size)
    if nc == 1:
        db[:] = 0
        _act_bwd_rows(dy, y, act, db, 0, dy.shape[0])
    else:
        partials = np.zeros((nc, dy.shape[1]), dtype=dy.dtype)
        _act_bwd_par(dy, y, act, partials, nc)
        _sum_rows_into(partials, db)


# ----------------------------------------------------------------------------------------
# Reparametrisation and KL
# ----------------------------------------------------------------------------------------
@jit
def reparam_kl_(mu, lv, eps, z, std, kl):
    for i in range(mu.shape[0]):
        acc = 0.0
        for j in range(mu.shape[1]):
            v = lv[i, j]
            s = math.exp(0.5 * v)
            std[i, j] = s
            z[i, j] = mu[i, j] + s * eps[i, j]
            acc += mu[i, j] * mu[i, j] + (math.expm1(v) - v)
        kl[i] = 0.5 * acc


@jit
def reparam_kl_backward_(dz, eps, std, mu, lv, w, mask, dmu, dlv):
    for i in range(mu.shape[0]):
        for j in range(mu.shape[1]):
            wk = w[i] * mask[j]
            d = dz[i, j]
            dmu[i, j] = d + wk * mu[i, j]
            dlv[i, j] = 0.5 * d * eps[i, j] * std[i, j] + wk * (0.5 * math.expm1(lv[i, j]))


# ----------------------------------------------------------------------------------------
# Likelihoods: nll per example, the weighted gradient written over the decoder output
# ----------------------------------------------------------------------------------------
@jit
def _bernoulli_rows(logits, x, w, nll, e, lp, r0, r1):
    for i in range(r0, r1):
        acc = 0.0
        wi = w[i]
        for j in range(logits.shape[1]):
            l = logits[i, j]
            xv = x[i, j]
            ej = e[i, j]
            acc += (l if l > 0 else 0) + lp[i, j] - xv * l
            r = 1 / (1 + ej)
            sig = r if l >= 0 else ej * r
            logits[i, j] = wi * (sig - xv)
        nll[i] = acc


@jit_par
def _bernoulli_par(logits, x, w, nll, e, lp, nchunks):
    for c in prange(nchunks):
        r0, r1 = _bounds(logits.shape[0], nchunks, c)
        _bernoulli_rows(logits, x, w, nll, e, lp, r0, r1)


def bernoulli_(logits, x, w, nll):
    """softplus(l) − x l and σ(l) − x from e = e^{−|l|}: the exp and log1p through NumPy's
    SIMD ufuncs, the fused sums and the gradient in numba."""
    e = _scratch(1, logits.shape, logits.dtype)
    lp = _scratch(2, logits.shape, logits.dtype)
    _exp_neg_abs(logits, e)
    np.log1p(e, out=lp)
    nc = n_chunks(logits.shape[0], logits.size)
    if nc == 1:
        _bernoulli_rows(logits, x, w, nll, e, lp, 0, logits.shape[0])
    else:
        _bernoulli_par(logits, x, w, nll, e, lp, nc)


# Taylor coefficients 1/(2k+3)! (see npvae.constants and ops.cb_log_normaliser)
_SINH_SERIES = np.array(SINH_SERIES)


@jit
def _sinh_series(t):
    t2 = t * t
    acc = _SINH_SERIES[7]
    for k in range(6, -1, -1):
        acc = acc * t2 + _SINH_SERIES[k]
    return acc


@jit
def cb_log_normaliser(l):
    """(ln C, d ln C/dl) of the continuous Bernoulli, as ops.cb_log_normaliser."""
    a = abs(l)
    if a < CB_TAYLOR_BELOW:
        u = 0.5 * l
        sh = math.sinh(0.5 * u)
        log_c = LOG_2 + math.log1p(2.0 * sh * sh) - math.log1p(u * u * _sinh_series(u))
        p = _sinh_series(l)
        return log_c, l * p / (1.0 + l * l * p)
    e = math.exp(-a)
    log_c = math.log(a) - math.log1p(-2.0 * e / (1.0 + e))
    d = 1.0 / a - 2.0 * e / (1.0 - e * e)
    return log_c, d if l > 0 else -d


@jit
def _cb_rows(logits, x, w, nll, r0, r1):
    for i in range(r0, r1):
        acc = 0.0
        wi = w[i]
        for j in range(logits.shape[1]):
            l = logits[i, j]
            xv = x[i, j]
            log_c, dlog_c = cb_log_normaliser(l)
            acc += softplus(l) - xv * l - log_c
            logits[i, j] = wi * (sigmoid(l) - xv - dlog_c)
        nll[i] = acc


@jit_par
def _cb_par(logits, x, w, nll, nchunks):
    for c in prange(nchunks):
        r0, r1 = _bounds(logits.shape[0], nchunks, c)
        _cb_rows(logits, x, w, nll, r0, r1)


def continuous_bernoulli_(logits, x, w, nll):
    nc = n_chunks(logits.shape[0], logits.size)
    if nc == 1:
        _cb_rows(logits, x, w, nll, 0, logits.shape[0])
    else:
        _cb_par(logits, x, w, nll, nc)


@jit
def _gaussian_rows(mean, x, logvar, per_row, w, nll, dlogvar, write_dlv, r0, r1):
    """logvar is (1, D) broadcast over rows (per_row False) or (B, D).  write_dlv: 0 none,
    1 accumulate Σ_i into dlogvar[0, :] (a per-chunk partial), 2 write row-wise."""
    D = mean.shape[1]
    inv_row = np.empty(D, dtype=mean.dtype)
    if not per_row:
        for j in range(D):
            inv_row[j] = math.exp(-logvar[0, j])
    for i in range(r0, r1):
        acc = 0.0
        wi = w[i]
        li = i if per_row else 0
        for j in range(D):
            s = logvar[li, j]
            inv = math.exp(-s) if per_row else inv_row[j]
            r = mean[i, j] - x[i, j]
            r2w = r * r * inv
            acc += r2w + s
            mean[i, j] = wi * r * inv
            if write_dlv == 1:
                dlogvar[0, j] += wi * (0.5 - 0.5 * r2w)
            elif write_dlv == 2:
                dlogvar[i, j] = wi * (0.5 - 0.5 * r2w)
        nll[i] = 0.5 * (acc + LOG_2PI * D)


@jit_par
def _gaussian_par(mean, x, logvar, per_row, w, nll, partials, write_dlv, nchunks):
    for c in prange(nchunks):
        r0, r1 = _bounds(mean.shape[0], nchunks, c)
        if write_dlv == 1:
            _gaussian_rows(mean, x, logvar, per_row, w, nll, partials[c:c + 1], 1, r0, r1)
        else:
            _gaussian_rows(mean, x, logvar, per_row, w, nll, partials, write_dlv, r0, r1)


def _gaussian(mean, x, logvar2d, per_row, w, nll, dlv, mode):
    nc = n_chunks(mean.shape[0], mean.size)
    if nc == 1:
        if mode == 1:
            dlv[:] = 0
        _gaussian_rows(mean, x, logvar2d, per_row, w, nll, dlv, mode, 0, mean.shape[0])
    elif mode == 1:
        partials = np.zeros((nc, mean.shape[1]), dtype=mean.dtype)
        _gaussian_par(mean, x, logvar2d, per_row, w, nll, partials, 1, nc)
        _sum_rows_into(partials, dlv[0])
    else:
        _gaussian_par(mean, x, logvar2d, per_row, w, nll, dlv, mode, nc)


def gaussian_fixed_(mean, x, logvar, w, nll):
    s = np.full((1, mean.shape[1]), logvar, dtype=mean.dtype)
    _gaussian(mean, x, s, False, w, nll, s, 0)


def gaussian_learned_(mean, x, logvar, w, nll, dlogvar):
    _gaussian(mean, x, logvar.reshape(1, -1), False, w, nll, dlogvar.reshape(1, -1), 1)


def gaussian_per_example_(mean, x, logvar, w, nll):
    # the gradient w.r.t. logvar is written over logvar itself, element by element after use
    _gaussian(mean, x, logvar, True, w, nll, logvar, 2)


# ----------------------------------------------------------------------------------------
# Data, checks and optimizers (flat, in place)
# ----------------------------------------------------------------------------------------
@jit
def _count_nonfinite(a):
    # a count, not a loop that stops at the first: the count vectorises (7x faster here)
    n = 0
    for i in range(a.shape[0]):
        n += 0 if math.isfinite(a[i]) else 1
    return n


def all_finite(a) -> bool:
    a = np.asarray(a)
    if a.dtype.kind != "f" or not a.flags.c_contiguous:
        return bool(np.isfinite(a).all())
    return _count_nonfinite(a.reshape(-1)) == 0


@jit
def _sum_squares(a):
    acc = 0.0
    for i in range(a.shape[0]):
        v = np.float64(a[i])
        acc += v * v
    return acc


def sum_squares(a) -> float:
    return float(_sum_squares(a))


# without fastmath: the ziggurat's accept/reject tests must round as NumPy's C code does
# (a fused multiply-add there could flip a decision and shift every later number)
_jit_exact = cached_jit(nogil=True)


@_jit_exact
def _standard_normal_fill32(rng, flat):
    # numba's Generator methods are ports of NumPy's: the same ziggurat on the same bits, so
    # the same numbers in the same order (tests/test_kernels.py checks it); faster, because
    # the bit generator is called directly rather than per element through NumPy's wrapper
    flat[:] = rng.standard_normal(size=flat.shape[0], dtype=np.float32)


@_jit_exact
def _standard_normal_fill64(rng, flat):
    flat[:] = rng.standard_normal(size=flat.shape[0], dtype=np.float64)


# below this many numbers NumPy's own call is faster (numba unboxes a Generator in ~6 µs)
NORMALS_COMPILED_FROM = 4096


def standard_normal_(rng, out):
    """out ← rng.standard_normal(out.shape, out.dtype), in place, the same numbers and the
    generator left in the same state; from NORMALS_COMPILED_FROM numbers of a contiguous
    float32 or float64 ``out`` up by compiled code (1.8x faster in float32, 3.3x in float64),
    holding the bit generator's lock as NumPy does."""
    if not out.flags.c_contiguous:  # NumPy fills only contiguous arrays
        out[...] = rng.standard_normal(out.shape, dtype=out.dtype)
    elif out.size < NORMALS_COMPILED_FROM or out.dtype not in (np.float32, np.float64):
        rng.standard_normal(out=out, dtype=out.dtype)
    else:
        fill = _standard_normal_fill32 if out.dtype == np.float32 else _standard_normal_fill64
        with rng.bit_generator.lock:  # the compiled fill releases the GIL
            fill(rng, out.reshape(-1))


@jit
def _binarize_flat(x, u):
    for i in range(x.shape[0]):
        x[i] = 1.0 if u[i] < x[i] else 0.0


def binarize_(x, u):
    _binarize_flat(x.reshape(-1), u.reshape(-1))


@jit
def adam_rows(p, g, m, v, lr_c1, beta1, beta2, ob1, ob2, inv_c2, eps, decay, l2, r0, r1):
    # slices first: a loop from 0 over fixed bases is what LLVM vectorises (~3x here)
    P, G, M, V = p[r0:r1], g[r0:r1], m[r0:r1], v[r0:r1]
    for i in range(P.shape[0]):
        # L2 only when asked: 0 · p would turn a NaN or inf weight into NaN moments, which the
        # reference (that never adds the term) keeps finite
        gi = G[i] + l2 * P[i] if l2 != 0 else G[i]
        mi = beta1 * M[i] + ob1 * gi
        vi = beta2 * V[i] + ob2 * gi * gi
        M[i] = mi
        V[i] = vi
        P[i] = P[i] * decay - lr_c1 * mi / (math.sqrt(vi * inv_c2) + eps)


@jit_par
def _adam_par(p, g, m, v, lr_c1, beta1, beta2, ob1, ob2, inv_c2, eps, decay, l2, nchunks):
    for c in prange(nchunks):
        r0, r1 = _bounds(p.shape[0], nchunks, c)
        adam_rows(p, g, m, v, lr_c1, beta1, beta2, ob1, ob2, inv_c2, eps, decay, l2, r0, r1)


def adam_(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    """One fused pass of Adam / AdamW over flat views of p, g, m, v (see ops.adam_update)."""
    dt = p.dtype.type
    c1 = 1 - beta1 ** step
    c2 = 1 - beta2 ** step
    decay = dt(1 - lr * weight_decay) if (weight_decay and decoupled) else dt(1)
    l2 = dt(weight_decay) if (weight_decay and not decoupled) else dt(0)
    args = (dt(lr / c1), dt(beta1), dt(beta2), dt(1 - beta1), dt(1 - beta2), dt(1 / c2),
            dt(eps), decay, l2)
    pf, gf, mf, vf = p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)
    nc = n_chunks(pf.shape[0], pf.shape[0])
    if nc == 1:
        adam_rows(pf, gf, mf, vf, *args, 0, pf.shape[0])
    else:
        _adam_par(pf, gf, mf, vf, *args, nc)


@jit
def _sgd_flat(p, g, buf, lr, momentum, nesterov, wd):
    for i in range(p.shape[0]):
        gi = g[i] + wd * p[i]
        if momentum != 0:
            b = momentum * buf[i] + gi
            buf[i] = b
            gi = gi + momentum * b if nesterov else b
        p[i] -= lr * gi


def sgd_(p, g, buf, lr, momentum, nesterov, weight_decay):
    dt = p.dtype.type
    b = buf.reshape(-1) if buf is not None else p.reshape(-1)[:0]
    _sgd_flat(p.reshape(-1), g.reshape(-1), b, dt(lr), dt(momentum), bool(nesterov), dt(weight_decay))
