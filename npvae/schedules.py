"""Learning-rate schedules and β (KL weight) schedules.

Every schedule is a small immutable object, callable at an integer position, with a
``config()`` that rebuilds it; the trainer stores only its position (the optimizer step),
so a resumed run continues the schedule exactly.

Learning rate: ``lr(step)`` with step = 0, 1, ... the number of updates already made.
β: ``beta(step, steps_per_epoch)``; schedules with ``unit="epoch"`` count fractional epochs
t = step / steps_per_epoch, those with ``unit="step"`` count steps.
"""
from __future__ import annotations

import math

from .validation import finite_float, positive_int


def _unit(unit):
    if unit not in ("epoch", "step"):
        raise ValueError(f"unit must be 'epoch' or 'step', got {unit!r}")
    return unit


class Schedule:
    def config(self) -> dict:
        return {"kind": type(self).__name__, **self.__dict__}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.__dict__ == other.__dict__


# ----------------------------------------------------------------------------------------
# Learning rate
# ----------------------------------------------------------------------------------------
class Constant(Schedule):
    """lr(t) = value."""

    def __init__(self, value: float):
        self.value = finite_float(value, "value", min_value=0.0)

    def __call__(self, step, steps_per_epoch=1):
        return self.value


class StepDecay(Schedule):
    """lr(t) = lr · γ^⌊t / every⌋."""

    def __init__(self, lr: float, every: int, gamma: float = 0.1):
        self.lr = finite_float(lr, "lr", min_value=0.0)
        self.every = positive_int(every, "every")
        self.gamma = finite_float(gamma, "gamma", min_value=0.0)

    def __call__(self, step):
        return self.lr * self.gamma ** (step // self.every)


class Cosine(Schedule):
    """lr(t) = lr_min + ½ (lr − lr_min)(1 + cos(π min(t, T)/T)) over T = total steps."""

    def __init__(self, lr: float, total: int, min_lr: float = 0.0):
        self.lr = finite_float(lr, "lr", min_value=0.0)
        self.total = positive_int(total, "total")
        self.min_lr = finite_float(min_lr, "min_lr", min_value=0.0)

    def __call__(self, step):
        t = min(step, self.total) / self.total
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))


class Warmup(Schedule):
    """Linear warm-up over ``steps`` updates, then ``after``: lr(t) = after(t) · min(1, (t+1)/steps)."""

    def __init__(self, after, steps: int):
        self.after = as_lr_schedule(after)
        self.steps = positive_int(steps, "steps")

    def __call__(self, step):
        return self.after(step) * min(1.0, (step + 1) / self.steps)

    def config(self):
        return {"kind": "Warmup", "after": self.after.config(), "steps": self.steps}


def as_lr_schedule(lr) -> Schedule:
    """A float becomes Constant(lr); a schedule passes through."""
    if isinstance(lr, Schedule):
        return lr
    if callable(lr):
        raise TypeError("a learning-rate schedule must be an npvae.schedules object, so it can be saved")
    return Constant(finite_float(lr, "lr", min_value=0.0))


# ----------------------------------------------------------------------------------------
# β
# ----------------------------------------------------------------------------------------
class ConstantBeta(Schedule):
    """β(t) = value."""

    def __init__(self, value: float = 1.0):
        self.value = finite_float(value, "beta", min_value=0.0)

    def __call__(self, step, steps_per_epoch=1):
        return self.value


class LinearBeta(Schedule):
    """The lecture's annealing: β rises linearly from ``start`` to ``stop`` over ``n`` units,
    then stays at ``stop``: β(t) = start + (stop − start) min(1, t/n)."""

    def __init__(self, n, unit: str = "epoch", start: float = 0.0, stop: float = 1.0):
        self.n = finite_float(n, "n", min_value=0.0)
        if self.n <= 0:
            raise ValueError(f"n must be > 0, got {n}")
        self.unit = _unit(unit)
        self.start = finite_float(start, "start", min_value=0.0)
        self.stop = finite_float(stop, "stop", min_value=0.0)

    def __call__(self, step, steps_per_epoch=1):
        t = step / steps_per_epoch if self.unit == "epoch" else step
        return self.start + (self.stop - self.start) * min(1.0, t / self.n)


class CyclicalBeta(Schedule):
    """Cyclical annealing (Fu et al. 2019): ``total`` units split into ``cycles`` equal
    cycles; within each, τ ∈ [0, 1) is the position in the cycle and
    β = min(1, τ / ratio) · stop.  After ``total`` units β stays at ``stop``."""

    def __init__(self, total, cycles: int = 4, ratio: float = 0.5, unit: str = "epoch",
                 stop: float = 1.0):
        self.total = finite_float(total, "total", min_value=0.0)
        if self.total <= 0:
            raise ValueError(f"total must be > 0, got {total}")
        self.cycles = positive_int(cycles, "cycles")
        self.ratio = finite_float(ratio, "ratio", min_value=0.0)
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must lie in (0, 1], got {ratio}")
        self.unit = _unit(unit)
        self.stop = finite_float(stop, "stop", min_value=0.0)

    def __call__(self, step, steps_per_epoch=1):
        t = step / steps_per_epoch if self.unit == "epoch" else step
        if t >= self.total:
            return self.stop
        period = self.total / self.cycles
        tau = (t % period) / period
        return self.stop * min(1.0, tau / self.ratio)


def as_beta_schedule(beta) -> Schedule:
    """A float becomes ConstantBeta(beta); a schedule passes through."""
    if isinstance(beta, Schedule):
        return beta
    if callable(beta):
        raise TypeError("beta must be a number or an npvae.schedules object, so it can be saved")
    return ConstantBeta(beta)


_KINDS = {c.__name__: c for c in (Constant, StepDecay, Cosine, Warmup, ConstantBeta,
                                   LinearBeta, CyclicalBeta)}


def from_config(cfg: dict) -> Schedule:
    """Rebuild a schedule from its ``config()``."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}")
    if kind == "Warmup":
        return Warmup(from_config(cfg["after"]), cfg["steps"])
    return _KINDS[kind](**cfg)
