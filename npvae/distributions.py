"""The Gaussian posterior q(z|x) = N(μ, diag e^v), the prior N(0, I) and their KL.

Forwards return (value, backprop).  The arithmetic is in :mod:`npvae.posterior`; this module gives
it the layer interface and the densities used by the estimators.

correction L7: the encoder outputs v = ln σ², so σ = exp(v/2).  A sampler that used exp(v) as σ
would pass every finite-difference check and still optimise the wrong objective; the tests
check the sampler's moments and a Monte Carlo KL to catch exactly that.
"""
from __future__ import annotations

import numpy as np

from . import posterior


def reparametrize(mu: np.ndarray, logvar: np.ndarray, eps: np.ndarray):
    """z = μ + exp(v/2) ⊙ ε.  Shapes: mu, logvar (B, J); eps (B, J) or (K, B, J).

    Returns (z, backprop) with ``backprop(dz) -> (dμ, dv)``, dμ = Σ dz, dv = Σ ½ σ ε ⊙ dz.
    """
    z, std = posterior.reparametrize(mu, logvar, eps)

    def backprop(dz):
        return posterior.reparametrize_backward(dz, eps, std)

    return z, backprop


def kl_standard_normal(mu: np.ndarray, logvar: np.ndarray):
    """KL(q || N(0, I)) = ½ Σ_j (μ_j² + e^{v_j} − 1 − v_j) per example, shape (B,).

    Returns (kl, backprop) with ``backprop(dkl) -> (dμ, dv)``: dμ = dkl μ, dv = dkl ½ (e^v − 1).
    """
    kl = posterior.kl_normal(mu, logvar)

    def backprop(dkl):
        return posterior.kl_normal_backward(mu, logvar, dkl)

    return kl, backprop


def kl_standard_normal_per_dim(mu: np.ndarray, logvar: np.ndarray):
    """The KL summands ½ (μ_j² + e^{v_j} − 1 − v_j), shape (B, J), for per-dimension
    objectives such as free bits.  ``backprop(dkl)`` takes weights of shape (B, J)."""
    kl = posterior.kl_normal_per_dim(mu, logvar)

    def backprop(dkl):
        return posterior.kl_normal_backward(mu, logvar, dkl)

    return kl, backprop


def log_q(z: np.ndarray, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """ln q(z|x) = ln N(z; μ, diag e^v), summed over latent dimensions."""
    return posterior.gaussian_log_prob(z, mu, logvar)


def log_prior(z: np.ndarray) -> np.ndarray:
    """ln p(z) = ln N(z; 0, I), summed over latent dimensions."""
    return posterior.standard_normal_log_prob(z)
