"""The NumPy backend of :mod:`npvae.kernels`: in-place wrappers around the formula modules' NumPy references.

Every function here has the same signature and in-place semantics as its numba twin in
:mod:`npvae.kernels.numba_impl`; the arithmetic is the readable reference.
Activation and likelihood variants are passed as small integer codes (see CODES).
"""
from __future__ import annotations

import numpy as np

from .. import activations, likelihoods, optim, posterior
from .codes import ACT_NAMES, IDENTITY


def standard_normal_(rng, out):
    """out ← rng.standard_normal(out.shape, out.dtype), in place: rng (a numpy Generator)
    advances as that call advances it, and the numba kernel draws the same numbers."""
    if out.flags.c_contiguous:
        rng.standard_normal(out=out, dtype=out.dtype)
    else:  # NumPy fills only contiguous arrays
        out[...] = rng.standard_normal(out.shape, dtype=out.dtype)


def all_finite(a) -> bool:
    return bool(np.isfinite(a).all())


def sum_squares(a) -> float:
    """Σ a² of a 1-D array, accumulated in float64."""
    return optim.sum_of_squares(a)


def bias_act_(a, b, act):
    """a ← f(a + b) in place; a (B, H) = x @ W, b (H,)."""
    a[...] = activations.get(ACT_NAMES[act]).forward(a + b)


def act_backward_bias_grad_(dy, y, act, db):
    """dy ← dy ⊙ f'(y) in place (= da), and db ← Σ_batch da."""
    if act != IDENTITY:
        dy[...] = activations.get(ACT_NAMES[act]).backward(dy, y)
    db[...] = activations.bias_grad(dy)


def reparam_kl_(mu, lv, eps, z, std, kl):
    """z ← μ + e^{v/2} ε, std ← e^{v/2}, kl ← ½ Σ_j (μ² + e^v − 1 − v) per example."""
    zz, s = posterior.reparametrize(mu, lv, eps)
    z[...] = zz
    std[...] = s
    kl[...] = posterior.kl_normal(mu, lv)


def reparam_kl_backward_(dz, eps, std, mu, lv, wkl, mask, dmu, dlv):
    """dμ ← dz + wkl m_j μ,  dv ← ½ σ ε dz + wkl m_j ½ (e^v − 1), for the KL weight wkl (β/B)
    times mask (J,) (per dimension, free bits)."""
    dm, dv = posterior.reparametrize_backward(dz, eps, std)
    km, kv = posterior.kl_normal_backward(mu, lv, np.broadcast_to(mu.dtype.type(wkl) * mask, mu.shape))
    dmu[...] = dm + km
    dlv[...] = dv + kv


def bernoulli_(logits, x, w, nll):
    """nll ← Σ_d softplus(l) − x l;  logits ← w_i (σ(l) − x) (the weighted gradient)."""
    n, g = likelihoods.bernoulli_nll(logits, x)
    nll[...] = n
    logits[...] = g * w[:, None]


def continuous_bernoulli_(logits, x, w, nll):
    n, g = likelihoods.continuous_bernoulli_nll(logits, x)
    nll[...] = n
    logits[...] = g * w[:, None]


def gaussian_fixed_(mean, x, logvar, w, nll):
    """Fixed σ (scalar log-variance): nll, and mean ← w_i (m − x) e^{−s}."""
    n, dm, _ = likelihoods.gaussian_nll(mean, x, logvar)
    nll[...] = n
    mean[...] = dm * w[:, None]


def gaussian_learned_(mean, x, logvar, w, nll, dlogvar):
    """Per-dimension log-variance s (D,): also dlogvar ← Σ_i w_i (½ − ½ (x − m)² e^{−s})."""
    n, dm, ds = likelihoods.gaussian_nll(mean, x, logvar)
    nll[...] = n
    mean[...] = dm * w[:, None]
    dlogvar[...] = (ds * w[:, None]).sum(axis=0)


def gaussian_per_example_(mean, x, logvar, w, nll):
    """Per-example log-variance (B, D): mean and logvar are overwritten by their gradients."""
    n, dm, ds = likelihoods.gaussian_nll(mean, x, logvar)
    nll[...] = n
    mean[...] = dm * w[:, None]
    logvar[...] = ds * w[:, None]


def binarize_(x, u):
    """x ← [u < x] in place, u uniform on [0, 1)."""
    np.less(u, x, out=x, casting="unsafe")


def adam_(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    optim.adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled)


def sgd_(p, g, buf, lr, momentum, nesterov, weight_decay):
    optim.sgd_update(p, g, None if momentum == 0 else buf, lr, momentum, nesterov, weight_decay)
