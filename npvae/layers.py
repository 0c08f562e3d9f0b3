"""Layers: small objects with an ``init`` and a ``forward`` that returns (value, backward).

The contract, which a user's own layer follows too (see docs/api.md, "Your own layer"):

    class MyLayer:
        def init(self, rng, n_in):        # -> (n_out, {"name": array, ...})  its parameters
        def forward(self, params, x):     # -> (y, backward)
                                          #    backward(dy) -> (dx, {"name": gradient, ...})
        def config(self):                 # -> dict of JSON values: MyLayer(**config) rebuilds it
                                          #    (needed only to save the model or checkpoints)

Built in: :class:`Dense` (optionally with a fused activation), :class:`Activation` and
:class:`GatedDense`.  Below them, the functional pieces they are made of.

A dense layer computes y = f(x @ W + b) with W of shape (n_in, n_out).  Its backward, from
the output y alone:

    da = dy ⊙ f'(a)        (activations.activation_backward)
    dW = xᵀ da,  db = Σ_batch da,  dx = da Wᵀ

Parameters live in a flat mapping from dotted names to arrays; a layer is identified by its
prefix (``encoder.0``) and reads ``<prefix>.W`` and ``<prefix>.b``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from . import activations
from .kernels import vmath
from .kernels.jit import ELEMENTWISE, jit


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
    y = activations.bias_activation(x @ W, b, activation)

    def backprop(dy):
        da = activations.activation_backward(dy, y, activation)
        dx = da @ W.T if need_dx else None
        return dx, x.T @ da, activations.bias_grad(da)

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



# ----------------------------------------------------------------------------------------
# Layer objects: init(rng, n_in) -> (n_out, params); forward(params, x) -> (y, backward)
# ----------------------------------------------------------------------------------------
class Dense:
    """y = f(x W + b), W (n_in, n_out), b (n_out,); f an activation name ("identity" by
    default).  Backward from the output y alone: da = dy ⊙ f'(y), dW = xᵀ da, db = Σ_batch da,
    dx = da Wᵀ.  ``init``: "fan_in" (U(±1/√n_in), the default), "glorot" or "he"; b = 0.
    In a VAE's plan a Dense runs fused (one kernel for bias and activation)."""

    def __init__(self, n_out: int, activation: str = "identity", *, init: str = "fan_in"):
        if isinstance(n_out, bool) or not isinstance(n_out, (int, np.integer)) or n_out < 1:
            raise ValueError(f"Dense needs a positive number of outputs, got {n_out!r}")
        activations.get(activation)
        if init not in INITIALISERS:
            raise ValueError(f"init must be one of {sorted(INITIALISERS)}, got {init!r}")
        self.n_out, self.activation, self.init_scheme = int(n_out), activation, init

    def init(self, rng, n_in):
        W = INITIALISERS[self.init_scheme](rng, n_in, self.n_out, np.float64)
        return self.n_out, {"W": W, "b": np.zeros(self.n_out)}

    def forward(self, params, x):
        y, bp = dense(x, params["W"], params["b"], self.activation)

        def backward(dy):
            dx, dW, db = bp(dy)
            return dx, {"W": dW, "b": db}
        return y, backward

    def config(self):
        return {"n_out": self.n_out, "activation": self.activation, "init": self.init_scheme}

    def __repr__(self):
        act = "" if self.activation == "identity" else f", {self.activation!r}"
        return f"Dense({self.n_out}{act})"


class Activation:
    """y = f(x) elementwise, no parameters; dx = dy ⊙ f'(y) (:mod:`npvae.activations`)."""

    def __init__(self, name: str):
        activations.get(name)
        self.name = name

    def init(self, rng, n_in):
        return n_in, {}

    def forward(self, params, x):
        act = activations.get(self.name)
        y = act.forward(x)
        return y, lambda dy: (act.backward(dy, y), {})

    def config(self):
        return {"name": self.name}

    def __repr__(self):
        return f"Activation({self.name!r})"


class GatedDense:
    """h = (x W + b) ⊙ σ(x V + c): a linear unit gated by a sigmoid (Dauphin et al. 2017; the
    gated MLP of the published Fashion-MNIST likelihood tables).  Shapes: x (B, n_in), W and V
    (n_in, n_out), b and c (n_out,).

    Backward, with a = x W + b and g = σ(x V + c):
        da = dh ⊙ g,   dĝ = dh ⊙ a ⊙ g (1 − g)          (ĝ = x V + c, σ' = σ (1 − σ))
        dW = xᵀ da, db = Σ da,  dV = xᵀ dĝ, dc = Σ dĝ,  dx = da Wᵀ + dĝ Vᵀ
    """

    def __init__(self, n_out: int, *, init: str = "fan_in"):
        self.linear = Dense(n_out, init=init)
        self.n_out = self.linear.n_out

    def init(self, rng, n_in):
        _, lin = self.linear.init(rng, n_in)
        _, gate = self.linear.init(rng, n_in)
        return self.n_out, {"W": lin["W"], "b": lin["b"], "V": gate["W"], "c": gate["b"]}

    def forward(self, params, x):
        W, b, V, c = params["W"], params["b"], params["V"], params["c"]
        a = x @ W + b
        g = activations.sigmoid(x @ V + c)
        h = a * g

        def backward(dh):
            da = dh * g
            dgate = dh * a * g * (1 - g)
            dx = da @ W.T + dgate @ V.T
            return dx, {"W": x.T @ da, "b": activations.bias_grad(da), "V": x.T @ dgate, "c": activations.bias_grad(dgate)}
        return h, backward

    def config(self):
        return {"n_out": self.n_out, "init": self.linear.init_scheme}

    def __repr__(self):
        return f"GatedDense({self.n_out})"


# The gated dense layer's kernels, which the compiled step runs (its reference is
# GatedDense.forward and its backward above; tests/test_layers.py holds one to the other).
# The two products x W and x V are the step's; these fuse everything after them.
@jit(**ELEMENTWISE)
def gated_dense_forward_(a, b, g, c):
    """g ← σ(g + c), a ← (a + b) ⊙ g: a gated dense layer's output h from its two products
    a = x W and g = x V, in place.  a, g (B, H), b, c (H,)."""
    B, H = a.shape
    for i in range(B):
        for j in range(H):
            v = g[i, j] + c[j]
            e = vmath.exp(-abs(v))
            r = 1.0 / (1.0 + e)
            s = r if v >= 0 else e * r
            g[i, j] = s
            a[i, j] = (a[i, j] + b[j]) * s


@jit(**ELEMENTWISE)
def gated_dense_backward_(d, h, g, dg, db, dc):
    """A gated dense layer's backward from d = dL/dh, h = a ⊙ g, g = σ(ĝ):
    dĝ = dh ⊙ a ⊙ g (1 − g) = dh ⊙ h ⊙ (1 − g) into dg (so a need not be kept), d ← dh ⊙ g
    (= dL/da); db ← Σ_rows dL/da, dc ← Σ_rows dĝ (rows in order).  d, h, g, dg (B, H), db, dc (H,)."""
    B, H = d.shape
    for j in range(H):
        db[j] = 0
        dc[j] = 0
    for i in range(B):
        for j in range(H):
            dh = d[i, j]
            gv = g[i, j]
            v = dh * h[i, j] * (1.0 - gv)
            dg[i, j] = v
            dc[j] += v
            u = dh * gv
            d[i, j] = u
            db[j] += u


BUILT_IN = {"Dense": Dense, "Activation": Activation, "GatedDense": GatedDense}
