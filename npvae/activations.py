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
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from .constants import LEAKY_SLOPE


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
