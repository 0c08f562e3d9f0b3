"""The Gaussian posterior q(z|x) = N(μ, diag e^v): the reparametrisation and its KL from the
prior N(0, I), each as a NumPy reference and as the kernel the compiled step runs.

Shapes: ``B`` examples, ``J`` latent dimensions; v = ln σ² is the encoder's second head.

    z = μ + σ ⊙ ε,  σ = e^{v/2}                   ∂z/∂μ = 1,  ∂z/∂v = ½ σ ε
    KL = ½ Σ_j (μ_j² + e^{v_j} − 1 − v_j)          ∂KL/∂μ = μ,  ∂KL/∂v = ½ (e^v − 1)

Two slips of the lecture are corrected here (docs/math.md, sections 2 and 3): σ is e^{v/2},
not e^v (a sampler with e^v passes every gradient check and optimises the wrong objective),
and the KL's e^v enters with a plus sign inside KL, so that KL ≥ 0 with equality exactly at
μ = 0, v = 0.  :mod:`npvae.distributions` gives these formulas the layer interface
(forward returns the value and its backward); tests/test_posterior.py holds each kernel to
its reference, and tests/test_distributions.py the references to finite differences, the
sampler's moments and a Monte Carlo KL.
"""
from __future__ import annotations

import numpy as np

from .constants import LOG_2PI
from .kernels import get_backend, vmath
from .kernels.jit import ELEMENTWISE, jit


# ----------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------
def reparametrize(mu: np.ndarray, logvar: np.ndarray, eps: np.ndarray):
    """z = μ + σ ⊙ ε with σ = exp(v/2) (v = ln σ²: *not* exp(v)).

    Shapes: mu, logvar (B, J); eps (..., B, J) broadcasts (several samples per example).
    Returns (z, std) with std = exp(v/2), shape (B, J), kept for the backward.
    """
    std = np.exp(logvar * logvar.dtype.type(0.5))
    return mu + std * eps, std


def reparametrize_backward(dz: np.ndarray, eps: np.ndarray, std: np.ndarray):
    """∂z/∂μ = 1 and ∂z/∂v = ½ σ ε.  Returns (dμ, dv), shape (B, J), summed over samples."""
    half = std.dtype.type(0.5)
    dv = dz * eps * std * half
    if dz.ndim > std.ndim:  # several samples per example: sum their contributions
        axes = tuple(range(dz.ndim - std.ndim))
        return dz.sum(axis=axes), dv.sum(axis=axes)
    return dz, dv


def kl_normal(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(N(μ, diag e^v) || N(0, I)) = ½ Σ_j (μ_j² + e^{v_j} − 1 − v_j) per example (B,).

    ≥ 0, and 0 exactly at μ = 0, v = 0.  ``expm1(v) − v`` keeps full precision for small v.
    """
    return kl_normal_per_dim(mu, logvar).sum(axis=-1)


def kl_normal_per_dim(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """The KL summands ½ (μ_j² + e^{v_j} − 1 − v_j), shape (B, J)."""
    half = mu.dtype.type(0.5)
    return half * (mu * mu + (np.expm1(logvar) - logvar))


def kl_normal_backward(mu: np.ndarray, logvar: np.ndarray, dkl: np.ndarray):
    """∂KL/∂μ_j = μ_j and ∂KL/∂v_j = ½ (e^{v_j} − 1).

    ``dkl`` is the upstream weight of each example's KL, (B,) or (B, J) for per-dimension
    weights (free bits).  Returns (dμ, dv), shape (B, J).
    """
    w = dkl[:, None] if dkl.ndim == 1 else dkl
    return w * mu, w * (mu.dtype.type(0.5) * np.expm1(logvar))


def gaussian_log_prob(z: np.ndarray, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """ln N(z; μ, diag e^v) = −½ Σ_j [(z_j − μ_j)² e^{−v_j} + v_j + ln 2π], summed on the last axis."""
    half = z.dtype.type(0.5)
    return -half * (
        ((z - mu) ** 2 * np.exp(-logvar) + logvar).sum(axis=-1)
        + z.dtype.type(LOG_2PI) * z.shape[-1]
    )


def standard_normal_log_prob(z: np.ndarray) -> np.ndarray:
    """ln N(z; 0, I) = −½ Σ_j (z_j² + ln 2π), summed on the last axis."""
    half = z.dtype.type(0.5)
    return -half * ((z * z).sum(axis=-1) + z.dtype.type(LOG_2PI) * z.shape[-1])


def reparametrize_kl_inplace(mu, lv, eps, z, std, kl) -> None:
    """z ← μ + σ ε, std ← σ = e^{v/2}, kl ← KL per example, for mu, lv, eps, z, std (B, J) and
    kl (B,): the engine's call, the kernel :func:`reparametrize_kl_` on the numba backend, the
    references on NumPy's."""
    if get_backend() == "numba":
        reparametrize_kl_(mu, lv, eps[None], z, std, kl, np.empty(mu.shape[1]))
    else:
        z[...], std[...] = reparametrize(mu, lv, eps)
        kl[...] = kl_normal(mu, lv)


def reparametrize_kl_backward_inplace(dz, eps, std, mu, lv, wkl, mask, dmu, dlv) -> None:
    """dμ ← dz + wkl m_j μ and dv ← ½ σ ε dz + wkl m_j ½ (e^v − 1), for the KL weight wkl (β/B)
    and the per-dimension mask (J,) of free bits: the engine's call, the kernel
    :func:`reparametrize_kl_backward_` on the numba backend, the references on NumPy's."""
    if get_backend() == "numba":
        dmu[...] = dz
        reparametrize_kl_backward_(dmu, eps, std, mu, lv, wkl, mask, dlv)
    else:
        dm, dv = reparametrize_backward(dz, eps, std)
        km, kv = kl_normal_backward(mu, lv, np.broadcast_to(mu.dtype.type(wkl) * mask, mu.shape))
        dmu[...] = dm + km
        dlv[...] = dv + kv


def log_prior_over_posterior(z: np.ndarray, eps: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """ln p(z) − ln q(z|x) for z = μ + σ ε: ln N(z; 0, I) − ln N(ε; 0, I) + ½ Σ_j v_j (the
    Jacobian of ε ↦ z), summed on the last axis, in float64; z, eps (..., J), logvar (..., J)
    broadcasting."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)
    return (standard_normal_log_prob(f64(z)) - standard_normal_log_prob(f64(eps))
            + 0.5 * f64(logvar).sum(axis=-1))


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------
@jit(**ELEMENTWISE)
def log_prior_over_posterior_(z, r, eps, k, i, lv, il):
    """ln p(z) − ln q(z|x) = ½ Σ_j (ε_j² − z_j²) + ½ Σ_j v_j (the ln 2π terms cancel) of the
    sample z[r] = μ + σ ε[k, i], v = lv[il], in float64: kernel of
    :func:`log_prior_over_posterior` (the sums over j in order).  The arrays whole and their
    rows by index: a row view per sample costs reference counts that the threads share."""
    sz = 0.0
    hv = 0.0
    for j in range(z.shape[1]):
        zv = np.float64(z[r, j])
        ev = np.float64(eps[k, i, j])
        sz += ev * ev - zv * zv
        hv += 0.5 * lv[il, j]
    return 0.5 * sz + hv



@jit(**ELEMENTWISE)
def reparametrize_kl_(mu, lv, eps, z, std, kl, kl_dim):
    """σ = e^{v/2}, z = μ + σ ε for each of K samples, KL_i = ½ Σ_j (μ² + e^v − 1 − v): kernel
    of :func:`reparametrize` and :func:`kl_normal`.  mu, lv, std (B, J); eps (K, B, J); z
    (B·K, J), example i's sample k at row i·K + k (K = 1: z is (B, J) row for row); kl (B,)
    (any float dtype), each row's terms summed in float64, in order j = 0, 1, …; kl_dim (J,)
    float64 ← Σ_i KL_ij, each dimension's sum over the rows in order (:func:`kl_normal_per_dim`
    summed: free bits' batch means)."""
    B, J = mu.shape
    K = eps.shape[0]
    for j in range(J):
        kl_dim[j] = 0.0
    for i in range(B):
        acc = 0.0
        for j in range(J):
            vj = lv[i, j]
            s = vmath.exp(0.5 * vj)
            std[i, j] = s
            for k in range(K):
                z[i * K + k, j] = mu[i, j] + s * eps[k, i, j]
            t = mu[i, j] * mu[i, j] + (vmath.expm1(vj) - vj)
            acc += t
            kl_dim[j] += 0.5 * t
        kl[i] = 0.5 * acc


@jit(**ELEMENTWISE)
def reparametrize_kl_backward_(d, eps, std, mu, lv, wkl, mask, dlv):
    """From d = dL/dz: dL/dv = ½ d ε σ + wkl m_j · ½ (e^v − 1) into dlv, then
    d ← d + wkl m_j μ (= dL/dμ, in place): kernel of :func:`reparametrize_backward` and
    :func:`kl_normal_backward`, with every example's KL weighted by ``wkl`` (β/B) and
    dimension j's by mask[j] (1, or 0 where free bits hold the KL at its floor).
    d, eps, std, mu, lv, dlv (B, J) with contiguous rows; mask (J,)."""
    B, J = mu.shape
    for i in range(B):
        for j in range(J):
            w = wkl * mask[j]
            di = d[i, j]
            dlv[i, j] = 0.5 * di * eps[i, j] * std[i, j] + w * (0.5 * vmath.expm1(lv[i, j]))
            d[i, j] = di + w * mu[i, j]
