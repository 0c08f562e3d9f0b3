"""Importance weighting: the weights' normalisation and the bound by log-sum-exp, as a NumPy
reference and as the kernel the compiled importance-weighted step runs.

With K samples z_k ~ q(z|x) and log weights ln w_k = ln p(x|z_k) + ln p(z_k) − ln q(z_k|x)
(:func:`npvae.posterior.log_prior_over_posterior` gives the last two terms),

    L_K = ln (1/K) Σ_k w_k = m + ln Σ_k e^{ln w_k − m} − ln K,   m = max_k ln w_k,
    w̃_k = e^{ln w_k − m} / Σ_k' e^{ln w_k' − m}      (the normalised weights, Σ_k w̃_k = 1)

in float64: the weights themselves underflow even in float64 (ln w of −500 nats), their
differences from the largest do not.  ∂L_K/∂θ = Σ_k w̃_k ∂ ln w_k/∂θ with ε fixed, so the
normalised weights are what the gradient needs (docs/math.md, sections 7 and 8).
tests/test_importance.py holds the kernel to the reference.
"""
from __future__ import annotations

import math

import numpy as np

from .kernels import vmath
from .kernels.jit import ELEMENTWISE, jit


def log_mean_exp(log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L_K, w̃) for log weights (K, B): L_K = ln (1/K) Σ_k w_k (B,) and the normalised
    weights (K, B), both in float64."""
    log_w = np.asarray(log_w, dtype=np.float64)
    m = log_w.max(axis=0)
    e = np.exp(log_w - m)
    total = e.sum(axis=0)
    return m + np.log(total) - math.log(log_w.shape[0]), e / total


@jit(**ELEMENTWISE)
def log_mean_exp_(log_w):
    """L_K = ln (1/K) Σ_k w_k of one example's K log weights (K,) float64, and log_w ←
    the normalised weights w̃_k, in place: kernel of :func:`log_mean_exp` (the sums over k
    in order)."""
    K = log_w.shape[0]
    m = -math.inf
    for k in range(K):
        m = max(m, log_w[k])
    total = 0.0
    for k in range(K):
        e = vmath.exp(log_w[k] - m)
        log_w[k] = e
        total += e
    for k in range(K):
        log_w[k] = log_w[k] / total
    return m + math.log(total) - math.log(K)
