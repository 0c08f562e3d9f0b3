"""Dense layers and the MLP container, each a forward that returns (value, backprop).

A dense layer computes y = f(x @ W + b) with W of shape (n_in, n_out).  Its backward, from
the output y alone:

    da = dy ⊙ f'(a)        (ops.activation_backward)
    dW = xᵀ da,  db = Σ_batch da,  dx = da Wᵀ

Parameters live in a flat mapping from dotted names to arrays; a layer is identified by its
prefix (``encoder.0``) and reads ``<prefix>.W`` and ``<prefix>.b``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from . import activations, ops


def glorot_uniform(rng: np.random.Generator, n_in: int, n_out: int, dtype) -> np.ndarray:
    """W ~ U(−a, a), a = √(6/(n_in + n_out)) (Glorot & Bengio 2010): Var W = 2/(n_in + n_out)."""
    limit = math.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, size=(n_in, n_out)).astype(dtype)


def he_normal(rng: np.random.Generator, n_in: int, n_out: int, dtype) -> np.ndarray:
    """W ~ N(0, 2/n_in) (He et al. 2015), for rectifier units."""
    return (rng.standard_normal((n_in, n_out)) * math.sqrt(2.0 / n_in)).astype(dtype)


def fan_in_uniform(rng: np.random.Generator, n_in: int, n_out: int, dtype) -> np.ndarray:
    """W ~ U(−1/√n_in, 1/√n_in): Var W = 1/(3 n_in), PyTorch's default for nn.Linear
    (Kaiming-uniform with a = √5)."""
    limit = 1.0 / math.sqrt(n_in)
    return rng.uniform(-limit, limit, size=(n_in, n_out)).astype(dtype)


INITIALISERS = {"glorot": glorot_uniform, "he": he_normal, "fan_in": fan_in_uniform}


def init_dense(rng, n_in: int, n_out: int, *, init: str = "glorot", dtype=np.float32):
    """A fresh (W, b): W from the named initialiser, b = 0."""
    try:
        draw = INITIALISERS[init]
    except KeyError:
        raise ValueError(f"init must be one of {sorted(INITIALISERS)}, got {init!r}") from None
    return draw(rng, n_in, n_out, dtype), np.zeros(n_out, dtype=dtype)


def dense(x: np.ndarray, W: np.ndarray, b: np.ndarray, activation: str = "identity",
          *, need_dx: bool = True):
    """y = f(x @ W + b).  Shapes: x (B, n_in), W (n_in, n_out), b (n_out,) -> y (B, n_out).

    Returns (y, backprop) with ``backprop(dy) -> (dx, dW, db)``; dx is None when
    ``need_dx`` is False (the first layer of a network needs no input gradient).
    """
    y = ops.bias_activation(x @ W, b, activation)

    def backprop(dy):
        da = ops.activation_backward(dy, y, activation)
        dx = da @ W.T if need_dx else None
        return dx, x.T @ da, ops.bias_grad(da)

    return y, backprop


class MLP:
    """A chain of dense layers ``<prefix>.<name>`` with their activations.

    ``layers`` is a sequence of (name, n_in, n_out, activation).  ``forward(params, x)``
    returns (y, backprop) with ``backprop(dy) -> (dx, grads)``; grads maps every parameter
    name of the chain to its gradient.  Calling the layers' callbacks in reverse order is
    the chain rule.
    """

    def __init__(self, prefix: str, layers: Sequence[tuple[str, int, int, str]]):
        self.prefix = prefix
        self.layers = [(f"{prefix}.{name}", n_in, n_out, act) for name, n_in, n_out, act in layers]
        for _, _, _, act in self.layers:
            activations.get(act)

    def init(self, rng: np.random.Generator, dtype, init: str = "auto") -> dict[str, np.ndarray]:
        """Fresh parameters; ``init="auto"`` picks each activation's own (He for rectifiers,
        Glorot otherwise), any other name from INITIALISERS applies to every layer."""
        params = {}
        for name, n_in, n_out, act in self.layers:
            scheme = activations.get(act).init if init == "auto" else init
            W, b = init_dense(rng, n_in, n_out, init=scheme, dtype=dtype)
            params[f"{name}.W"], params[f"{name}.b"] = W, b
        return params

    def forward(self, params, x, *, need_dx: bool = True):
        callbacks = []
        h = x
        for i, (name, _, _, act) in enumerate(self.layers):
            h, bp = dense(h, params[f"{name}.W"], params[f"{name}.b"], act,
                          need_dx=need_dx or i > 0)
            callbacks.append((name, bp))

        def backprop(dy):
            grads = {}
            for name, bp in reversed(callbacks):
                dy, grads[f"{name}.W"], grads[f"{name}.b"] = bp(dy)
            return dy, grads

        return h, backprop

    def __repr__(self) -> str:
        body = ", ".join(f"{n}: {i}->{o} {a}" for n, i, o, a in self.layers)
        return f"MLP({body})"
