"""Optimizers written by hand: ``init(params) -> state`` and ``update(params, grads, state)``.

The state is a flat dict of NumPy arrays (``"step"``, ``"m.<param>"``, ...), so it saves to
``.npz`` as it is and is restored bit for bit.  ``update`` changes the parameter arrays and
the state's moment arrays in place (the fused kernels need that) and returns the state.
Each update rule is written here twice, side by side: the NumPy reference
(:func:`sgd_update`, :func:`adam_update`) and the kernel that runs (:func:`sgd_update_`,
:func:`adam_update_`, one fused pass over flat buffers); tests/test_optim.py holds each kernel
to its reference.
"""
from __future__ import annotations

import math
import operator
import weakref

import numpy as np

from . import schedules, threads
from .kernels import get_backend
from .kernels.jit import ELEMENTWISE, jit
from .kernels.sums import sum_squares
from .validation import finite_float


# ----------------------------------------------------------------------------------------
# References: one update, in place on the parameter array
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


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------
ADAM_CONSTANTS = ("lr/c1", "beta1", "beta2", "1-beta1", "1-beta2", "1/c2", "eps", "decay", "l2")
"""What :func:`adam_constants` returns, in order (c₁ = 1 − β₁ᵗ, c₂ = 1 − β₂ᵗ)."""


def adam_constants(step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                   decoupled: bool) -> tuple:
    """The nine numbers of :func:`adam_update_` for update number ``step`` (from 1), in
    float64: η/c₁, β₁, β₂, 1 − β₁, 1 − β₂, 1/c₂, ε, the decoupled decay factor 1 − η λ (or 1)
    and the L2 coefficient λ (or 0).  The caller stores them in the parameters' dtype."""
    c1 = 1 - beta1 ** step
    c2 = 1 - beta2 ** step
    decay = (1 - lr * weight_decay) if (weight_decay and decoupled) else 1.0
    l2 = weight_decay if (weight_decay and not decoupled) else 0.0
    return (lr / c1, beta1, beta2, 1 - beta1, 1 - beta2, 1 / c2, eps, decay, l2)


@jit(**ELEMENTWISE)
def adam_update_(p, g, m, v, c):
    """Adam over flat buffers p, g, m, v (n,) in place, c (9,) :func:`adam_constants` in their
    dtype: kernel of :func:`adam_update`.
    g ← g + l2 p (only when l2 ≠ 0: 0 · p would turn an inf weight into NaN moments);
    m ← β₁ m + (1−β₁) g;  v ← β₂ v + (1−β₂) g²;  p ← decay p − (η/c₁) m / (√(v/c₂) + ε)."""
    lr_c1, beta1, beta2, ob1, ob2, inv_c2, eps, decay, l2 = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
    for i in range(p.shape[0]):
        gi = g[i] + l2 * p[i] if l2 != 0 else g[i]
        mi = beta1 * m[i] + ob1 * gi
        vi = beta2 * v[i] + ob2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - lr_c1 * mi / (math.sqrt(vi * inv_c2) + eps)


@jit(**ELEMENTWISE)
def sgd_update_(p, g, buf, lr, momentum, nesterov, weight_decay):
    """SGD with (Nesterov) momentum over flat buffers in place (buf empty when momentum = 0):
    kernel of :func:`sgd_update`.  g ← g + λ p;  b ← μ b + g;  p ← p − η (g + μ b or b)."""
    for i in range(p.shape[0]):
        gi = g[i] + weight_decay * p[i]
        if momentum != 0:
            b = momentum * buf[i] + gi
            buf[i] = b
            gi = gi + momentum * b if nesterov else b
        p[i] -= lr * gi


def flat_base(arrays) -> np.ndarray | None:
    """The 1-D buffer that ``arrays`` are consecutive, contiguous views of, in order and
    covering it exactly; None when they are not (then updates go array by array)."""
    arrays = list(arrays)
    if not arrays:
        return None
    base = arrays[0].base
    if base is None or base.ndim != 1 or not base.flags.c_contiguous:
        return None
    ptr = start = base.__array_interface__["data"][0]
    for a in arrays:
        if a.base is not base or not a.flags.c_contiguous or a.__array_interface__["data"][0] != ptr:
            return None
        ptr += a.nbytes
    return base if ptr == start + base.nbytes else None


def flat_like(params: dict) -> dict:
    """Zeroed arrays shaped like ``params``, all views into one new flat buffer."""
    dtype = next(iter(params.values())).dtype if params else np.float64
    flat = np.zeros(sum(p.size for p in params.values()), dtype=dtype)
    out, offset = {}, 0
    for name, p in params.items():
        out[name] = flat[offset:offset + p.size].reshape(p.shape)
        offset += p.size
    return out


class _FlatCache:
    """Remembers, by identity (weakly), which groups of arrays are views of one flat buffer,
    group by group: the parameters and moments stay the same arrays from step to step, the
    gradients of a user's loop are new views each step, and only they are looked at again."""

    def __init__(self):
        self._groups = []  # per group: (weak references to its arrays, its flat base or None)

    def bases(self, *groups):
        out = []
        for i, group in enumerate(groups):
            group = list(group)
            if i == len(self._groups):
                self._groups.append(((), None))
            key, base = self._groups[i]
            # the identity check runs every step: map/all keep it in C (~1 µs for 60 arrays);
            # weakref.ref.__call__ rather than operator.call, which needs Python 3.11
            if len(key) != len(group) or not all(map(operator.is_, map(weakref.ref.__call__, key), group)):
                base = flat_base(group)
                self._groups[i] = (tuple(weakref.ref(a) for a in group), base)
            out.append(base)
        return tuple(out)


def clip_grad_norm(grads: dict, max_norm: float | None, *, flat=None, norm=None):
    """Scale all gradients by min(1, max_norm / ‖g‖), ‖g‖ the global L2 norm over every
    parameter (accumulated in float64).  Returns (grads, norm); scaled in place.
    ``flat``: the flat buffer the gradients are views of; ``norm``: ‖g‖, when the caller
    already knows them."""
    if flat is None:
        flat = flat_base(grads.values())
    if norm is not None:
        pass
    elif flat is not None:
        norm = math.sqrt(sum_squares(flat))
    else:
        norm = math.sqrt(sum(sum_squares(g.reshape(-1)) for g in grads.values()))
    if max_norm is not None and norm > max_norm:
        scale = max_norm / norm
        for g in ([flat] if flat is not None else grads.values()):
            g *= g.dtype.type(scale)
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

    _SLOTS: tuple[str, ...] = ()

    def _flat_state(self, params, state):
        for slot in self._SLOTS:
            flat = flat_like(params)
            for name in params:
                state[f"{slot}.{name}"] = flat[name]
        return state

    def update(self, params: dict, grads: dict, state: dict, *, grad_norm=None) -> dict:
        """One step: clip, then update every parameter (and the state's moments) in place.
        When params, grads and every moment are views of flat buffers (as for a VAE), the
        update is one fused kernel call over all parameters; otherwise one per array.
        ``grad_norm``: the global gradient norm, when the caller has computed it already.
        Runs under the training thread settings (:mod:`npvae.threads`), in a user's loop too:
        on the pool of the step that made the gradients (:func:`npvae.threads.update_limits`)."""
        with threads.limited(**threads.update_limits()):
            return self._update(params, grads, state, grad_norm)

    def _update(self, params, grads, state, grad_norm):
        step = int(state["step"])
        lr = self.lr(step)
        if not hasattr(self, "_flat_cache"):
            self._flat_cache = _FlatCache()
        names = tuple(params)
        if getattr(self, "_slot_keys", (None,))[0] != names:
            self._slot_keys = (names, [[f"{s}.{n}" for n in names] for s in self._SLOTS])
        slots = [list(map(state.__getitem__, keys)) for keys in self._slot_keys[1]]
        bases = self._flat_cache.bases(params.values(), map(grads.__getitem__, names), *slots)
        _, norm = clip_grad_norm(grads, self.clip_norm, flat=bases[1], norm=grad_norm)
        if all(b is not None for b in bases) and len({b.size for b in bases}) == 1:
            self._update_arrays(*bases, step=step + 1, lr=lr)
        else:
            for i, n in enumerate(names):
                self._update_arrays(params[n], grads[n], *(sl[i] for sl in slots), step=step + 1, lr=lr)
        state["step"] = np.asarray(step + 1, dtype=np.int64)
        state["grad_norm"] = np.asarray(norm, dtype=np.float64)
        return state

    def config(self) -> dict:
        cfg = {k: v for k, v in self.__dict__.items() if k != "lr" and not k.startswith("_")}
        cfg["lr"] = self.lr.config()
        return {"kind": type(self).__name__, **cfg}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if not k.startswith("_"))
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

    @property
    def _SLOTS(self):
        return ("momentum",) if self.momentum else ()

    def init(self, params):
        return self._flat_state(params, super().init(params))

    def _update_arrays(self, p, g, buf=None, *, step, lr):
        if get_backend() != "numba":
            return sgd_update(p, g, buf if self.momentum else None, lr, self.momentum, self.nesterov,
                              self.weight_decay)
        t = p.dtype.type
        b = buf.reshape(-1) if buf is not None else p.reshape(-1)[:0]
        sgd_update_(p.reshape(-1), g.reshape(-1), b, t(lr), t(self.momentum), self.nesterov, t(self.weight_decay))


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
        self._constants = {}  # the kernel's constants per dtype, reused from update to update

    _SLOTS = ("m", "v")

    def init(self, params):
        return self._flat_state(params, super().init(params))

    def _update_arrays(self, p, g, m, v, *, step, lr):
        if get_backend() != "numba":
            return adam_update(p, g, m, v, step, lr, self.betas[0], self.betas[1], self.eps, self.weight_decay,
                               self.decoupled)
        c = self._constants.get(p.dtype)
        if c is None:
            c = self._constants[p.dtype] = np.empty(len(ADAM_CONSTANTS), dtype=p.dtype)
        c[:] = adam_constants(step, lr, self.betas[0], self.betas[1], self.eps, self.weight_decay, self.decoupled)
        adam_update_(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), c)


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
