"""Elementwise activations and their hand-derived derivatives.

Every activation is a pair ``forward(a) -> y`` and ``backward(dy, y) -> da`` working on
arrays of any shape.  Each derivative is written from the *output* y alone (``1 - y**2`` for
tanh, ``y (1 - y)`` for sigmoid, as in thinc), so a layer keeps only its output for the
backward pass and never its pre-activation.  That works for every unit here because each f
is monotone with f(a) > 0 exactly when a > 0.  All scalars are cast to the array dtype, so
float32 stays float32.

==========  =======================================  ===================================
name        y = f(a)                                 f'(a), written from y
==========  =======================================  ===================================
identity    a                                        1
relu        max(a, 0)                                [y > 0]
leaky_relu  a if a > 0 else 0.01 a                   1 if y > 0 else 0.01
elu         a if a > 0 else exp(a) - 1               1 if y > 0 else y + 1
tanh        tanh(a)                                  1 - y²
sigmoid     1 / (1 + exp(-a))                        y (1 - y)
softplus    ln(1 + exp(a))                           σ(a) = 1 - e^{-y}
==========  =======================================  ===================================

Each formula is here twice, side by side: the NumPy reference (the table above, and
:func:`bias_activation`, :func:`activation_backward`, :func:`bias_grad` for a dense layer)
and the kernel the compiled step runs (:func:`bias_activation_`,
:func:`activation_backward_bias_grad_`: in place, the activation chosen by its code in
:data:`npvae.kernels.codes.ACT_CODES`).  tests/test_activations.py holds each kernel to its
reference.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from .constants import LEAKY_SLOPE
from .kernels import get_backend, vmath
from .kernels.codes import ACT_NAMES, IDENTITY, LEAKY_RELU, RELU, SIGMOID, SOFTPLUS, TANH
from .kernels.jit import ELEMENTWISE, jit


class Activation(NamedTuple):
    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    backward: Callable[[np.ndarray, np.ndarray], np.ndarray]
    init: str  # "he" for rectifiers, "glorot" for saturating and linear units


def sigmoid(a: np.ndarray) -> np.ndarray:
    """σ(a) = 1/(1 + e^{-a}), evaluated with exp(-|a|) so it never overflows."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)


def softplus(a: np.ndarray) -> np.ndarray:
    """ln(1 + e^a) = max(a, 0) + ln(1 + e^{-|a|}): exact for any a, no overflow."""
    return np.maximum(a, 0) + np.log1p(np.exp(-np.abs(a)))


def _identity(a):
    return a.copy()


def _identity_backward(dy, y):
    return dy.copy()


def _relu(a):
    return np.maximum(a, 0)


def _relu_backward(dy, y):
    return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)


def _leaky_relu(a):
    return np.where(a > 0, a, a * a.dtype.type(LEAKY_SLOPE))


def _leaky_relu_backward(dy, y):
    return np.where(y > 0, dy, dy * dy.dtype.type(LEAKY_SLOPE))


def _elu(a):
    # expm1 of min(a, 0): the unused branch of where() never overflows.
    return np.where(a > 0, a, np.expm1(np.minimum(a, 0)))


def _elu_backward(dy, y):
    return np.where(y > 0, dy, dy * (y + 1))


def _tanh(a):
    return np.tanh(a)


def _tanh_backward(dy, y):
    # (1 − y)(1 + y) rather than 1 − y²: no cancellation as |y| → 1, and no FMA-dependent rounding
    return dy * ((1 - y) * (1 + y))


def _sigmoid_backward(dy, y):
    return dy * y * (1 - y)


def _softplus_backward(dy, y):
    # e^y = 1 + e^a, so σ(a) = 1 - e^{-y}; -expm1(-y) keeps full precision as y -> 0.
    return dy * -np.expm1(-y)


ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (
        Activation("identity", _identity, _identity_backward, "glorot"),
        Activation("relu", _relu, _relu_backward, "he"),
        Activation("leaky_relu", _leaky_relu, _leaky_relu_backward, "he"),
        Activation("elu", _elu, _elu_backward, "he"),
        Activation("tanh", _tanh, _tanh_backward, "glorot"),
        Activation("sigmoid", sigmoid, _sigmoid_backward, "glorot"),
        Activation("softplus", softplus, _softplus_backward, "he"),
    )
}


def get(name: str) -> Activation:
    """The activation called ``name``; a ValueError lists the known names otherwise."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}"
        ) from None


# ----------------------------------------------------------------------------------------
# A dense layer's bias + activation: the references
# ----------------------------------------------------------------------------------------
def bias_activation(a: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
    """y = f(a + b) for a (B, H) = x @ W and b (H,); returns y (B, H)."""
    return get(name).forward(a + b)


def activation_backward(dy: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
    """dL/da = dL/dy ⊙ f'(a), with f' written from the output y (B, H)."""
    return get(name).backward(dy, y)


def bias_grad(d: np.ndarray) -> np.ndarray:
    """dL/db = Σ_batch dL/da, for y = x @ W + b: (B, H) -> (H,)."""
    return d.sum(axis=0)


def bias_activation_inplace(a: np.ndarray, b: np.ndarray, act: int) -> None:
    """a ← f(a + b) in place, f the activation with code ``act``: the engine's call, the
    kernel :func:`bias_activation_` on the numba backend, :func:`bias_activation` on NumPy's."""
    if get_backend() == "numba":
        bias_activation_(a, b, act)
    else:
        a[...] = bias_activation(a, b, ACT_NAMES[act])


def activation_backward_inplace(d: np.ndarray, y: np.ndarray, act: int, db: np.ndarray) -> None:
    """d ← d ⊙ f'(a) (from y = f(a)) and db ← Σ_rows d, in place: the engine's call, the kernel
    :func:`activation_backward_bias_grad_` on the numba backend, the references on NumPy's."""
    if get_backend() == "numba":
        activation_backward_bias_grad_(d, y, act, db)
    else:
        d[...] = activation_backward(d, y, ACT_NAMES[act])
        db[...] = bias_grad(d)


# ----------------------------------------------------------------------------------------
# The kernels the compiled step runs (numba; exp, expm1, log1p and tanh are vmath's, which
# LLVM vectorises)
# ----------------------------------------------------------------------------------------
@jit(**ELEMENTWISE)
def bias_activation_(a, b, act):
    """a ← f(a + b) in place; a (B, H) with contiguous rows, b (H,); ``act`` an activation
    code.  Kernel of :func:`bias_activation`."""
    B, H = a.shape
    if act == IDENTITY:
        for i in range(B):
            for j in range(H):
                a[i, j] = a[i, j] + b[j]
    elif act == RELU:
        for i in range(B):
            for j in range(H):
                v = a[i, j] + b[j]
                a[i, j] = 0 if v <= 0 else v  # NaN stays NaN
    elif act == LEAKY_RELU:
        for i in range(B):
            for j in range(H):
                v = a[i, j] + b[j]
                a[i, j] = v if v > 0 else v * LEAKY_SLOPE
    elif act == TANH:
        # the bias first, then tanh over the rows as one flat run (a's rows are contiguous):
        # rows of 64 kept LLVM's vectorised loop to a third of its speed; float32 layers in
        # float32 arithmetic (vmath.tanh32: 16 lanes to a 512-bit vector, not 8)
        for i in range(B):
            for j in range(H):
                a[i, j] = a[i, j] + b[j]
        flat = a.reshape(-1)
        if a.itemsize == 4:
            for i in range(flat.shape[0]):
                flat[i] = vmath.tanh32(flat[i])
        else:
            for i in range(flat.shape[0]):
                flat[i] = vmath.tanh(flat[i])
    elif act == SIGMOID:  # 1/(1 + e^{−a}) or e^{a}/(1 + e^{a}): e = e^{−|a|} never overflows
        for i in range(B):
            for j in range(H):
                v = a[i, j] + b[j]
                e = vmath.exp(-abs(v))
                r = 1.0 / (1.0 + e)
                a[i, j] = r if v >= 0 else e * r
    elif act == SOFTPLUS:  # max(a, 0) + ln(1 + e^{−|a|})
        for i in range(B):
            for j in range(H):
                v = a[i, j] + b[j]
                a[i, j] = (v if v > 0 else 0.0) + vmath.log1p(vmath.exp(-abs(v)))
    else:  # ELU
        for i in range(B):
            for j in range(H):
                v = a[i, j] + b[j]
                a[i, j] = v if v > 0 else vmath.expm1(v)


@jit(**ELEMENTWISE)
def activation_backward_bias_grad_(d, y, act, db):
    """d ← d ⊙ f'(a), f' written from y = f(a); db ← Σ_rows d (each column summed in row
    order).  d, y (B, H), db (H,).  Kernel of :func:`activation_backward` and
    :func:`bias_grad`.  One loop per activation, chosen outside it: a branch on ``act`` inside
    the loop kept LLVM from vectorising it (4× slower in the 16-64-64-4 step)."""
    B, H = d.shape
    for j in range(H):
        db[j] = 0
    if act == IDENTITY:
        for i in range(B):
            for j in range(H):
                db[j] += d[i, j]
    elif act == RELU:
        for i in range(B):
            for j in range(H):
                v = d[i, j] * (1.0 if y[i, j] > 0 else 0.0)
                d[i, j] = v
                db[j] += v
    elif act == LEAKY_RELU:
        for i in range(B):
            for j in range(H):
                v = d[i, j] * (1.0 if y[i, j] > 0 else LEAKY_SLOPE)
                d[i, j] = v
                db[j] += v
    elif act == TANH:
        for i in range(B):
            for j in range(H):
                yv = y[i, j]
                v = d[i, j] * ((1.0 - yv) * (1.0 + yv))
                d[i, j] = v
                db[j] += v
    elif act == SIGMOID:
        for i in range(B):
            for j in range(H):
                yv = y[i, j]
                v = d[i, j] * (yv * (1.0 - yv))
                d[i, j] = v
                db[j] += v
    elif act == SOFTPLUS:
        for i in range(B):
            for j in range(H):
                v = d[i, j] * -vmath.expm1(-y[i, j])
                d[i, j] = v
                db[j] += v
    else:  # ELU
        for i in range(B):
            for j in range(H):
                yv = y[i, j]
                v = d[i, j] * (1.0 if yv > 0 else yv + 1.0)
                d[i, j] = v
                db[j] += v
