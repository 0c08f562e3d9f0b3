"""The hot elementwise and reduction operations of a VAE training step, in one place.

This module is the NumPy reference for every operation outside the matrix products: bias +
activation, the reparametrisation, the Gaussian KL and each likelihood's loss and gradient.
Layers, distributions and likelihoods call these functions and nothing lower, so a compiled
twin of any of them (see the kernels issue) changes no model code.

Conventions
-----------
* Shapes: ``B`` batch, ``D`` data dimension, ``J`` latent dimension, ``H`` a layer width.
* Every function keeps the dtype of its array inputs; Python scalars are cast to it.
* Per-example losses are returned with shape (B,); gradients are the gradient of the
  per-example loss with respect to each element (shape (B, D)), so that the caller can weight
  examples (1/B for a batch mean, normalised importance weights for IWAE).
"""
from __future__ import annotations

import math

import numpy as np

from . import activations

from .constants import CB_TAYLOR_BELOW, LOG_2, LOG_2PI, SINH_SERIES as _SINH_SERIES


# ----------------------------------------------------------------------------------------
# Dense layers: bias + activation, and the bias gradient
# ----------------------------------------------------------------------------------------
def bias_activation(a: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
    """y = f(a + b) for a (B, H) = x @ W and b (H,); returns y (B, H)."""
    return activations.get(name).forward(a + b)


def activation_backward(dy: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
    """dL/da = dL/dy ⊙ f'(a), with f' written from the output y (B, H)."""
    return activations.get(name).backward(dy, y)


def bias_grad(d: np.ndarray) -> np.ndarray:
    """dL/db = Σ_batch dL/da, for y = x @ W + b: (B, H) -> (H,)."""
    return d.sum(axis=0)


# ----------------------------------------------------------------------------------------
# Gaussian posterior q(z|x) = N(μ, diag e^v) and its KL from N(0, I)   (corrections L6 and L7)
# ----------------------------------------------------------------------------------------
def reparametrize(mu: np.ndarray, logvar: np.ndarray, eps: np.ndarray):
    """z = μ + σ ⊙ ε with σ = exp(v/2) (v = ln σ², correction L7: *not* exp(v)).

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

    correction L6: the lecture's ``+ σ²`` inside −KL is a slip; this form is ≥ 0, and 0 exactly
    at μ = 0, v = 0.  ``expm1(v) − v`` keeps full precision for small v.
    """
    return kl_normal_per_dim(mu, logvar).sum(axis=-1)


def kl_normal_per_dim(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """The KL summands ½ (μ_j² + e^{v_j} − 1 − v_j), shape (B, J)."""
    half = mu.dtype.type(0.5)
    return half * (mu * mu + (np.expm1(logvar) - logvar))


def kl_normal_backward(mu: np.ndarray, logvar: np.ndarray, dkl: np.ndarray):
    """∂KL/∂μ_j = μ_j and ∂KL/∂v_j = ½ (e^{v_j} − 1)  (correction L6).

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


# ----------------------------------------------------------------------------------------
# Likelihoods: per-example −ln p(x|z) in nats and its gradient w.r.t. the decoder outputs
# ----------------------------------------------------------------------------------------
def bernoulli_nll(logits: np.ndarray, x: np.ndarray):
    """−ln p(x|l) = Σ_d [softplus(l_d) − x_d l_d], ∂/∂l_d = σ(l_d) − x_d.

    softplus(l) = max(l, 0) + ln(1 + e^{−|l|}) is exact for any logit, ±1e4 included.
    Shapes: logits, x (B, D) -> nll (B,), dlogits (B, D).
    """
    nll = (activations.softplus(logits) - x * logits).sum(axis=-1)
    return nll, activations.sigmoid(logits) - x


def gaussian_nll(mean: np.ndarray, x: np.ndarray, logvar):
    """−ln N(x; m, e^s) = ½ Σ_d [(x_d − m_d)² e^{−s_d} + s_d + ln 2π].

    ``logvar`` s is a scalar (fixed σ: s = 2 ln σ), shape (D,) (learned per dimension) or
    (B, D) (per example).  ∂/∂m = (m − x) e^{−s};  ∂/∂s = ½ − ½ (x − m)² e^{−s}.
    Returns (nll (B,), dmean (B, D), dlogvar (B, D)).
    """
    dt = mean.dtype.type
    inv_var = np.exp(-np.asarray(logvar, dtype=mean.dtype))
    r = mean - x
    r2w = r * r * inv_var
    s_sum = np.broadcast_to(np.asarray(logvar, dtype=mean.dtype), mean.shape).sum(axis=-1)
    nll = dt(0.5) * (r2w.sum(axis=-1) + s_sum + dt(LOG_2PI) * mean.shape[-1])
    return nll, r * inv_var, dt(0.5) - dt(0.5) * r2w


# Taylor coefficients 1/(2k+3)! of (sinh l − l)/l³ = Σ_k l^{2k}/(2k+3)!, used by the
# continuous Bernoulli near l = 0 (λ = ½).  Eight terms are exact to float64 for |l| ≤ 1.


def _sinh_minus_x_over_x3(t: np.ndarray) -> np.ndarray:
    """P(t) = (sinh t − t)/t³ by its Taylor series (Horner in t²), exact for |t| ≤ 1."""
    t2 = t * t
    acc = np.full_like(t, _SINH_SERIES[-1])
    for c in reversed(_SINH_SERIES[:-1]):
        acc = acc * t2 + t.dtype.type(c)
    return acc


def cb_log_normaliser(logits: np.ndarray):
    """ln C(λ) for the continuous Bernoulli, in logits l = ln(λ/(1−λ)), and d ln C/dl.

    C(λ) = 2 artanh(1 − 2λ)/(1 − 2λ) = l / tanh(l/2), so
    ln C = ln 2 + ln cosh(l/2) − ln(sinh(l/2)/(l/2)),     d ln C/dl = 1/l − 1/sinh(l).
    (ln cosh u is evaluated as log1p(2 sinh²(u/2)).)
    Near λ = ½ (l -> 0) both closed forms cancel catastrophically, so for |l| < 1 they are
    written with the Taylor series P(t) = (sinh t − t)/t³:
        sinh(u)/u = 1 + u² P(u),   1/l − 1/sinh l = l P(l) / (1 + l² P(l)),
    which are exact at l = 0 (ln C = ln 2, slope 0).  For |l| ≥ 1,
    ln C = ln|l| − ln tanh(|l|/2) with ln tanh(a) = log1p(−2/(e^{2a} + 1)), finite for any l.
    Returns (log_c, dlog_c), same shape as logits.
    """
    dt = logits.dtype.type
    a = np.abs(logits)
    small = a < CB_TAYLOR_BELOW
    ls = np.where(small, logits, dt(0))  # series branch, evaluated only where it is valid
    u = ls * dt(0.5)
    sh = np.sinh(u * dt(0.5))  # ln cosh u = log1p(2 sinh²(u/2)): no cancellation near 0
    log_c_small = dt(LOG_2) + np.log1p(dt(2) * sh * sh) - np.log1p(u * u * _sinh_minus_x_over_x3(u))
    p = _sinh_minus_x_over_x3(ls)
    dlog_c_small = ls * p / (dt(1) + ls * ls * p)

    al = np.where(small, dt(1), a)  # closed-form branch, evaluated only where it is valid
    e = np.exp(-al)  # e^{-|l|} in (0, 1/e]: never overflows
    log_c_big = np.log(al) - np.log1p(dt(-2) * e / (dt(1) + e))
    # 1/sinh|l| = 2 e^{-|l|} / (1 − e^{-2|l|}); the sign of l carries through both terms.
    dlog_c_big = np.sign(logits) * (dt(1) / al - dt(2) * e / (dt(1) - e * e))
    return np.where(small, log_c_small, log_c_big), np.where(small, dlog_c_small, dlog_c_big)


def continuous_bernoulli_nll(logits: np.ndarray, x: np.ndarray):
    """−ln p(x|λ) for the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), x ∈ [0, 1].

    p(x|λ) = C(λ) λ^x (1−λ)^{1−x}, so in logits
    −ln p = Σ_d [softplus(l_d) − x_d l_d − ln C(l_d)],
    ∂/∂l_d = σ(l_d) − x_d − d ln C/dl (see :func:`cb_log_normaliser`).
    Shapes: logits, x (B, D) -> nll (B,), dlogits (B, D).
    """
    log_c, dlog_c = cb_log_normaliser(logits)
    nll = (activations.softplus(logits) - x * logits - log_c).sum(axis=-1)
    return nll, activations.sigmoid(logits) - x - dlog_c


def cb_mean(logits: np.ndarray) -> np.ndarray:
    """E[x] of the continuous Bernoulli: 1/(1 − e^{−l}) − 1/l, → ½ + l/12 − l³/720 + l⁵/30240 near 0."""
    dt = logits.dtype.type
    small = np.abs(logits) < dt(0.1)
    ls = np.where(small, logits, dt(0))
    l2 = ls * ls
    series = dt(0.5) + ls * (dt(1 / 12) + l2 * (dt(-1 / 720) + l2 * dt(1 / 30240)))
    lb = np.where(small, dt(1), logits)
    with np.errstate(over="ignore"):  # e^{-l} = inf for l << 0 gives the right limit, 0
        closed = dt(1) / (dt(1) - np.exp(-lb)) - dt(1) / lb
    return np.where(small, series, closed)


# ----------------------------------------------------------------------------------------
# Optimizer updates, in place on the parameter array
# ----------------------------------------------------------------------------------------
def sgd_update(p: np.ndarray, g: np.ndarray, buf, lr: float, momentum: float,
               nesterov: bool, weight_decay: float) -> None:
    """SGD with (Nesterov) momentum, in place (PyTorch's convention):
    g ← g + λ p;  b ← μ b + g;  step = g + μ b (Nesterov) or b;  p ← p − η step.
    ``buf`` is None when momentum = 0."""
    dt = p.dtype.type
    if weight_decay:
        g = g + dt(weight_decay) * p
    if buf is not None:
        buf *= dt(momentum)
        buf += g
        g = g + dt(momentum) * buf if nesterov else buf
    p -= dt(lr) * g


def adam_update(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, step: int,
                lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                decoupled: bool) -> None:
    """Adam (Kingma & Ba 2015) with bias correction, in place; AdamW when ``decoupled``:
    m ← β₁ m + (1−β₁) g;  v ← β₂ v + (1−β₂) g²;  m̂ = m/(1−β₁ᵗ);  v̂ = v/(1−β₂ᵗ);
    p ← p − η m̂/(√v̂ + ε)  [− η λ p (AdamW), or g ← g + λ p beforehand (L2)]."""
    dt = p.dtype.type
    if weight_decay and not decoupled:
        g = g + dt(weight_decay) * p
    m *= dt(beta1)
    m += dt(1 - beta1) * g
    v *= dt(beta2)
    v += dt(1 - beta2) * (g * g)
    c1 = 1 - beta1 ** step
    c2 = 1 - beta2 ** step
    if weight_decay and decoupled:
        p *= dt(1 - lr * weight_decay)
    p -= dt(lr / c1) * m / (np.sqrt(v / dt(c2)) + dt(eps))


def sum_of_squares(g: np.ndarray) -> float:
    """Σ g² in float64, for the global gradient norm."""
    flat = g.reshape(-1)
    return float(np.dot(flat, flat)) if g.dtype == np.float64 else float(np.dot(flat.astype(np.float64), flat))
