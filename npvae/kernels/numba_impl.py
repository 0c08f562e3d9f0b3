"""The numba backend of :mod:`npvae.kernels`: the engine path's in-place operations, each a
thin call of the kernel that the compiled step runs too (the formula modules' ``*_`` kernels:
:mod:`npvae.activations`, :mod:`npvae.posterior`, :mod:`npvae.likelihoods`, :mod:`npvae.optim`),
with the engine's calling convention (per-example weights, nll in the model's dtype), and the
few operations that are not a formula (finiteness, the normal draws, binarisation).  Same
signatures as :mod:`npvae.kernels.numpy_impl`.  Under ``NUMBA_DISABLE_JIT=1`` every kernel runs as
the plain Python it is written in.
"""
from __future__ import annotations

import math

import numpy as np

from .. import activations, likelihoods, optim, posterior
from .jit import ELEMENTWISE, jit as cached_jit
from .sums import row_sums, sum_squares as _sum_squares

jit = cached_jit(**ELEMENTWISE)


def bias_act_(a, b, act):
    activations.bias_activation_(a, b, act)


def act_backward_bias_grad_(dy, y, act, db):
    activations.activation_backward_bias_grad_(dy, y, act, db)


def reparam_kl_(mu, lv, eps, z, std, kl):
    posterior.reparametrize_kl_(mu, lv, eps, z, std, kl)


def reparam_kl_backward_(dz, eps, std, mu, lv, wkl, mask, dmu, dlv):
    dmu[...] = dz
    posterior.reparametrize_kl_backward_(dmu, eps, std, mu, lv, wkl, mask, dlv)


_SCRATCH: dict = {}


def _scratch(slot: str, shape, dtype) -> np.ndarray:
    """A reusable buffer per (slot, shape, dtype): no allocation in steady state."""
    key = (slot, shape, np.dtype(dtype).str)
    buf = _SCRATCH.get(key)
    if buf is None:
        if len(_SCRATCH) > 64:
            _SCRATCH.clear()
        buf = _SCRATCH[key] = np.empty(shape, dtype=dtype)
    return buf


def _nll_from_terms(terms, nll):
    sums = _scratch("sums", terms.shape[:1], np.float64)
    row_sums(terms, sums)
    nll[...] = sums


def bernoulli_(logits, x, w, nll):
    terms = _scratch("terms", logits.shape, logits.dtype)
    likelihoods.bernoulli_nll_(logits, x, w, terms)
    _nll_from_terms(terms, nll)


def continuous_bernoulli_(logits, x, w, nll):
    terms = _scratch("terms", logits.shape, logits.dtype)
    likelihoods.continuous_bernoulli_nll_(logits, x, w, terms)
    _nll_from_terms(terms, nll)


def _gaussian(mean, x, logvar2d, per_row, w, nll, dlogvar, mode):
    terms = _scratch("terms", mean.shape, mean.dtype)
    likelihoods.gaussian_nll_(mean, x, logvar2d, per_row, w, terms, dlogvar, mode)
    _nll_from_terms(terms, nll)


def gaussian_fixed_(mean, x, logvar, w, nll):
    s = np.full((1, mean.shape[1]), logvar, dtype=mean.dtype)
    _gaussian(mean, x, s, False, w, nll, s[0], 0)


def gaussian_learned_(mean, x, logvar, w, nll, dlogvar):
    _gaussian(mean, x, logvar.reshape(1, -1), False, w, nll, dlogvar, 1)


def gaussian_per_example_(mean, x, logvar, w, nll):
    # the gradient w.r.t. logvar is written over logvar itself, element by element after use
    _gaussian(mean, x, logvar, True, w, nll, logvar[0], 2)


def sum_squares(a) -> float:
    return float(_sum_squares(a))


def adam_(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    """One fused pass of Adam / AdamW over flat views of p, g, m, v (see optim.adam_update)."""
    c = _scratch("adam", (9,), p.dtype)
    c[:] = optim.adam_constants(step, lr, beta1, beta2, eps, weight_decay, decoupled)
    optim.adam_update_(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), c)


def sgd_(p, g, buf, lr, momentum, nesterov, weight_decay):
    dt = p.dtype.type
    b = buf.reshape(-1) if buf is not None else p.reshape(-1)[:0]
    optim.sgd_update_(p.reshape(-1), g.reshape(-1), b, dt(lr), dt(momentum), bool(nesterov), dt(weight_decay))


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


