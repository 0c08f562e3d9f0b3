"""Optimizers written by hand: ``init(params) -> state`` and ``update(params, grads, state)``.

The state is a flat dict of NumPy arrays (``"step"``, ``"m.<param>"``, ...), so it saves to
``.npz`` as it is and is restored bit for bit.  ``update`` changes the parameter arrays and
the state's moment arrays in place (the fused kernels need that) and returns the state.
The arithmetic is in :mod:`npvae.ops`.
"""
from __future__ import annotations

import math

import numpy as np

from . import ops, schedules
from .validation import finite_float


def clip_grad_norm(grads: dict, max_norm: float | None):
    """Scale all gradients by min(1, max_norm / ‖g‖), ‖g‖ the global L2 norm over every
    parameter.  Returns (grads, norm); the arrays are scaled in place."""
    norm = math.sqrt(sum(ops.sum_of_squares(g) for g in grads.values()))
    if max_norm is not None and norm > max_norm:
        for g in grads.values():
            g *= g.dtype.type(max_norm / norm)
    return grads, norm


class Optimizer:
    def __init__(self, lr, clip_norm, weight_decay):
        self.lr = schedules.as_lr_schedule(lr)
        self.clip_norm = None if clip_norm is None else finite_float(clip_norm, "clip_norm", min_value=0.0)
        if self.clip_norm == 0.0:
            raise ValueError("clip_norm must be > 0 (or None for no clipping)")
        self.weight_decay = finite_float(weight_decay, "weight_decay", min_value=0.0)

    def init(self, params: dict) -> dict:
        return {"step": np.zeros((), dtype=np.int64), "grad_norm": np.zeros((), dtype=np.float64)}

    def learning_rate(self, state) -> float:
        """The learning rate the next update will use."""
        return self.lr(int(state["step"]))

    def update(self, params: dict, grads: dict, state: dict) -> dict:
        _, norm = clip_grad_norm(grads, self.clip_norm)
        step = int(state["step"])
        lr = self.lr(step)
        for name, p in params.items():
            self._update_one(name, p, grads[name], state, step + 1, lr)
        state["step"] = np.asarray(step + 1, dtype=np.int64)
        state["grad_norm"] = np.asarray(norm, dtype=np.float64)
        return state

    def config(self) -> dict:
        cfg = {k: v for k, v in self.__dict__.items() if k != "lr"}
        cfg["lr"] = self.lr.config()
        return {"kind": type(self).__name__, **cfg}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay."""

    def __init__(self, lr=1e-2, momentum=0.0, nesterov=False, weight_decay=0.0, clip_norm=None):
        super().__init__(lr, clip_norm, weight_decay)
        self.momentum = finite_float(momentum, "momentum", min_value=0.0)
        if self.momentum >= 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)

    def init(self, params):
        state = super().init(params)
        if self.momentum:
            for name, p in params.items():
                state[f"momentum.{name}"] = np.zeros_like(p)
        return state

    def _update_one(self, name, p, g, state, t, lr):
        ops.sgd_update(p, g, state.get(f"momentum.{name}"), lr, self.momentum, self.nesterov,
                       self.weight_decay)


class Adam(Optimizer):
    """Adam with bias correction; ``decoupled=True`` (or :class:`AdamW`) applies the weight
    decay to the parameters directly (Loshchilov & Hutter 2019) instead of adding λp to g."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled=False, clip_norm=None):
        super().__init__(lr, clip_norm, weight_decay)
        b1, b2 = (finite_float(b, "betas", min_value=0.0) for b in betas)
        if not (b1 < 1 and b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        self.betas = (b1, b2)
        self.eps = finite_float(eps, "eps", min_value=0.0)
        self.decoupled = bool(decoupled)

    def init(self, params):
        state = super().init(params)
        for name, p in params.items():
            state[f"m.{name}"] = np.zeros_like(p)
            state[f"v.{name}"] = np.zeros_like(p)
        return state

    def _update_one(self, name, p, g, state, t, lr):
        ops.adam_update(p, g, state[f"m.{name}"], state[f"v.{name}"], t, lr, self.betas[0],
                        self.betas[1], self.eps, self.weight_decay, self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (default λ = 1e-2)."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, clip_norm=None):
        super().__init__(lr, betas, eps, weight_decay, decoupled=True, clip_norm=clip_norm)

    def config(self):
        cfg = super().config()
        cfg.pop("decoupled")
        return cfg


def from_config(cfg: dict) -> Optimizer:
    """Rebuild an optimizer from its ``config()``."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    classes = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}
    if kind not in classes:
        raise ValueError(f"unknown optimizer kind {kind!r}")
    cfg["lr"] = schedules.from_config(cfg["lr"])
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    return classes[kind](**cfg)
