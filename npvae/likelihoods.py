"""Decoder likelihoods p(x|z): per-example −ln p(x|z) in nats, every constant included.

A likelihood turns the decoder's output heads into a distribution over x.  Each object has

* ``heads``: the names of the decoder output layers it reads (``("out",)`` or
  ``("out", "out_logvar")``);
* ``init_params(n_inputs, dtype)``: its own free parameters (stored as ``likelihood.<name>``);
* ``nll(x, outputs, params) -> (nll, backprop)`` with nll of shape (B,) and
  ``backprop(dnll) -> (d_outputs, d_params)``, dnll the upstream weight of each example;
* ``mean(outputs, params)`` and ``sample(outputs, params, rng)`` for p(x|z);
* ``check_targets(x)``, which raises ValueError for data outside the support.

Each likelihood's formula is written here twice, side by side: the NumPy reference
(:func:`bernoulli_nll`, :func:`gaussian_nll`, :func:`continuous_bernoulli_nll`, each returning
the per-example −ln p and its gradient) and the kernel the compiled step runs
(:func:`bernoulli_nll_`, :func:`gaussian_nll_`, :func:`continuous_bernoulli_nll_`: the terms
of −ln p element by element, the weighted gradient written over the decoder's output), with
the value-only kernels of ln p(x)'s estimator (:func:`bernoulli_log_lik_row_`,
:func:`gaussian_log_lik_row_`, :func:`row_log_lik`).  tests/test_likelihoods.py holds each
kernel to its reference.
"""
from __future__ import annotations

import math

import numpy as np

from . import activations
from .constants import CB_TAYLOR_BELOW, LOG_2, LOG_2PI, SINH_SERIES as _SINH_SERIES
from .kernels import get_backend, vmath
from .kernels.jit import ELEMENTWISE, jit
from .kernels.sums import lane_log1p_sum, lane_sum, row_sums

# ----------------------------------------------------------------------------------------
# References: per-example −ln p(x|z) in nats (B,) and its gradient w.r.t. the decoder outputs
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
# Kernels: the terms of −ln p element by element into ``terms`` (B, D), the gradient of
# example i's −ln p times its weight w[i] written over the decoder's output (B, D)
# ----------------------------------------------------------------------------------------
@jit(**ELEMENTWISE)
def bernoulli_nll_(logits, x, w, terms):
    """terms ← softplus(l) − x l = max(l, 0) + ln(1 + e^{−|l|}) − x l;  logits ← w_i (σ(l) − x).
    Kernel of :func:`bernoulli_nll`; logits, x, terms (B, D), w (B,)."""
    B, D = logits.shape
    if logits.itemsize == 4:
        # float32 logits (terms is float32 too): in float32 arithmetic (vmath.exp32 and
        # log1p32, 16 lanes to a 512-bit vector, not 8; within a few units in float32's last
        # place, the size of the logits' own rounding); a loop that mixed float32 and
        # float64 ran at float64's 8 lanes, 2x slower
        zero = np.float32(0.0)
        for i in range(B):
            wf = np.float32(w[i])
            for j in range(D):
                l = logits[i, j]
                xv = x[i, j]
                e = vmath.exp32(-abs(l))
                r = np.float32(1.0) / (np.float32(1.0) + e)
                terms[i, j] = ((l if l > 0 else zero) - xv * l) + vmath.log1p32(e)
                g = wf * ((r if l >= 0 else e * r) - xv)
                logits[i, j] = g if l == l else l  # NaN stays NaN (exp32 does not carry it)
        return
    for i in range(B):
        wi = w[i]
        for j in range(D):
            l = logits[i, j]
            xv = x[i, j]
            e = vmath.exp(-abs(l))
            terms[i, j] = (l if l > 0 else 0.0) + vmath.log1p(e) - xv * l
            r = 1.0 / (1.0 + e)
            logits[i, j] = wi * ((r if l >= 0 else e * r) - xv)


@jit(**ELEMENTWISE)
def gaussian_nll_(mean, x, logvar, per_row, w, terms, dlogvar, mode):
    """terms ← ½ (r² e^{−s} + s + ln 2π), r = mean − x, s = ln σ²; mean ← w_i r e^{−s}: kernel
    of :func:`gaussian_nll`.  logvar (1, D) or (B, D) (``per_row``); ``mode`` 0: no ln σ²
    gradient, 1: Σ_rows into dlogvar (D,) of dL/ds = w_i ½ (1 − r² e^{−s}) (rows in order),
    2: row-wise, written over logvar (B, D) after use."""
    B, D = mean.shape
    if mode == 1:
        for j in range(D):
            dlogvar[j] = 0
    for i in range(B):
        li = i if per_row else 0
        wi = w[i]
        for j in range(D):
            s = logvar[li, j]
            inv = vmath.exp(-s)
            r = mean[i, j] - x[i, j]
            r2w = r * r * inv
            terms[i, j] = 0.5 * (r2w + s + LOG_2PI)
            mean[i, j] = wi * r * inv
            g = wi * (0.5 - 0.5 * r2w)
            if mode == 1:
                dlogvar[j] += g
            elif mode == 2:
                logvar[i, j] = g


_SINH_SERIES_ARRAY = np.array(_SINH_SERIES)


@jit(**ELEMENTWISE)
def _sinh_series(t):
    t2 = t * t
    acc = _SINH_SERIES_ARRAY[7]
    for k in range(6, -1, -1):
        acc = acc * t2 + _SINH_SERIES_ARRAY[k]
    return acc


@jit(**ELEMENTWISE)
def cb_log_normaliser_(l):
    """(ln C, d ln C/dl) of one logit: kernel of :func:`cb_log_normaliser` (same branches)."""
    a = abs(l)
    if a < CB_TAYLOR_BELOW:
        u = 0.5 * l
        sh = math.sinh(0.5 * u)
        log_c = LOG_2 + math.log1p(2.0 * sh * sh) - math.log1p(u * u * _sinh_series(u))
        p = _sinh_series(l)
        return log_c, l * p / (1.0 + l * l * p)
    e = math.exp(-a)
    log_c = math.log(a) - math.log1p(-2.0 * e / (1.0 + e))
    d = 1.0 / a - 2.0 * e / (1.0 - e * e)
    return log_c, d if l > 0 else -d


@jit(**ELEMENTWISE)
def continuous_bernoulli_nll_(logits, x, w, terms):
    """terms ← softplus(l) − x l − ln C(l);  logits ← w_i (σ(l) − x − d ln C/dl): kernel of
    :func:`continuous_bernoulli_nll`; logits, x, terms (B, D), w (B,)."""
    B, D = logits.shape
    for i in range(B):
        wi = w[i]
        for j in range(D):
            l = logits[i, j]
            xv = x[i, j]
            log_c, dlog_c = cb_log_normaliser_(l)
            e = math.exp(-abs(l))
            r = 1.0 / (1.0 + e)
            terms[i, j] = (l if l > 0 else 0.0) + math.log1p(e) - xv * l - log_c
            logits[i, j] = wi * ((r if l >= 0 else e * r) - xv - dlog_c)


# ln p(x)'s estimator needs the values alone, for K samples of each example: these kernels
# skip the gradient and take the logarithms of products (one per FACTORS_PER_LOG outputs)
@jit(**ELEMENTWISE)
def gaussian_log_lik_row_(per_example, out, out2, ro, x, i, lik_logvar, tr):
    """tr ← ln N(x_i; out[ro], e^s) by elements, in float64, s from out2[ro] (a per-example
    ln σ² head's output, ``per_example``) or lik_logvar (D,) (the arrays whole and their rows
    by index: a row view per decoder row cost reference counts shared by the threads)."""
    for j in range(x.shape[1]):
        s = out2[ro, j] if per_example else lik_logvar[j]
        r = out[ro, j] - x[i, j]
        tr[j] = -0.5 * (r * r * vmath.exp(-s) + s + LOG_2PI)


@jit(**ELEMENTWISE)
def bernoulli_log_lik_row_(out, ro, x, i, lin, e):
    """lin ← x l − max(l, 0) (exact for x of 0 and 1) and e ← e^{−|l|} for the Bernoulli
    logits l = out[ro] of example i, in the logits' dtype: float32 logits in float32
    arithmetic (vmath.exp32: twice the lanes, within a unit of float32's last place, below
    the logits' own rounding), in a loop of one width, which LLVM runs at its lanes.
    ln p(x|z) = Σ_j lin_j − Σ_j ln(1 + e_j) (:func:`row_log_lik`)."""
    zero = np.float32(0.0)  # (a zero of out's dtype, out[ro, 0] * 0, made the loop 1.4x slower)
    if out.itemsize == 4:
        for j in range(x.shape[1]):
            l = out[ro, j]
            lin[j] = x[i, j] * l - (l if l > 0 else zero)
            e[j] = vmath.exp32(-abs(l))
    else:
        for j in range(x.shape[1]):
            l = out[ro, j]
            lin[j] = x[i, j] * l - (l if l > 0 else zero)
            e[j] = vmath.exp(-abs(l))


@jit(**ELEMENTWISE)
def row_log_lik(bernoulli, tr, lin, e):
    """ln p(x|z) of one decoder row in float64 from :func:`bernoulli_log_lik_row_`'s or
    :func:`gaussian_log_lik_row_`'s scratch: Bernoulli, Σ_j lin_j − Σ_j ln(1 + e_j), the
    logarithms taken of products (:func:`npvae.kernels.sums.lane_log1p_sum`: one logarithm
    per 512 outputs instead of a log1p per output); Gaussian, Σ tr.  Each sum in one fixed
    order on every CPU (:mod:`npvae.kernels.sums`)."""
    if bernoulli:
        return lane_sum(lin) - lane_log1p_sum(e)
    return lane_sum(tr)


class Likelihood:
    name = "likelihood"
    heads: tuple[str, ...] = ("out",)

    def init_params(self, n_inputs: int, dtype) -> dict[str, np.ndarray]:
        return {}

    def check_targets(self, x: np.ndarray, name: str = "x") -> None:
        pass

    def options(self) -> dict:
        """The keyword arguments that rebuild this likelihood (saved in checkpoints)."""
        return {}

    def loss_and_grad_(self, x, outputs, params, w, nll, dparams) -> None:
        """The engine's call, in place: nll (B,) ← −ln p(x|z) per example, each output array ←
        its gradient weighted by w (B,), and each dparams array ← Σ_i of its weighted
        gradient.  The built-in likelihoods run their kernel on the numba backend and their
        reference on NumPy's; this default runs :meth:`nll` and its backprop."""
        value, backprop = self.nll(x, outputs, params)
        nll[...] = value
        d_outputs, d_params = backprop(w)
        for out, d in zip(outputs, d_outputs):
            out[...] = d
        for k, d in d_params.items():
            dparams[k][...] = d

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


_SCRATCH: dict = {}


def _scratch(slot: str, shape, dtype) -> np.ndarray:
    """A reusable buffer per (slot, shape, dtype): the engine's steps allocate nothing in
    steady state."""
    key = (slot, shape, np.dtype(dtype).str)
    buf = _SCRATCH.get(key)
    if buf is None:
        if len(_SCRATCH) > 64:
            _SCRATCH.clear()
        buf = _SCRATCH[key] = np.empty(shape, dtype=dtype)
    return buf


def _nll_from_terms(terms, nll):
    """nll ← each row's Σ terms (in float64, :func:`npvae.kernels.sums.row_sums`)."""
    sums = _scratch("sums", terms.shape[:1], np.float64)
    row_sums(terms, sums)
    nll[...] = sums


def _check_unit_interval(x: np.ndarray, name: str, what: str) -> None:
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{what} targets {name} must lie in [0, 1]; found values in [{lo:g}, {hi:g}]"
        )


class _OnLogits(Likelihood):
    """A likelihood of targets in [0, 1] read from one head of logits: its reference
    ``_reference(logits, x) -> (nll, dlogits)`` and its kernel ``_kernel(logits, x, w, terms)``
    (staticmethods of the subclass), and the name its targets are checked under."""

    _what = ""

    def check_targets(self, x, name="x"):
        _check_unit_interval(x, name, self._what)

    def nll(self, x, outputs, params):
        (logits,) = outputs
        nll, g = self._reference(logits, x)

        def backprop(dnll):
            return (g * dnll[:, None],), {}

        return nll, backprop

    def loss_and_grad_(self, x, outputs, params, w, nll, dparams):
        if get_backend() == "numba":
            terms = _scratch("terms", outputs[0].shape, outputs[0].dtype)
            self._kernel(outputs[0], x, w, terms)
            _nll_from_terms(terms, nll)
        else:
            super().loss_and_grad_(x, outputs, params, w, nll, dparams)


class Bernoulli(_OnLogits):
    """p(x|z) = Π_d λ_d^{x_d} (1 − λ_d)^{1−x_d}, λ = σ(logits); x ∈ [0, 1] (soft targets allowed)."""

    name = "bernoulli"
    _what = "Bernoulli"
    _reference = staticmethod(bernoulli_nll)
    _kernel = staticmethod(bernoulli_nll_)

    def mean(self, outputs, params):
        return activations.sigmoid(outputs[0])

    def sample(self, outputs, params, rng):
        p = self.mean(outputs, params)
        return (rng.random(p.shape) < p).astype(p.dtype)


class ContinuousBernoulli(_OnLogits):
    """p(x|z) = Π_d C(λ_d) λ_d^{x_d} (1 − λ_d)^{1−x_d} on x ∈ [0, 1] (Loaiza-Ganem & Cunningham 2019)."""

    name = "continuous_bernoulli"
    _what = "continuous Bernoulli"
    _reference = staticmethod(continuous_bernoulli_nll)
    _kernel = staticmethod(continuous_bernoulli_nll_)

    def mean(self, outputs, params):
        return cb_mean(outputs[0])

    def sample(self, outputs, params, rng):
        """Inverse CDF: x = ln(1 + u (e^l − 1)) / l, written so that no branch overflows."""
        logits = outputs[0]
        dt = logits.dtype.type
        u = rng.random(logits.shape).astype(logits.dtype)
        tiny = np.abs(logits) < dt(1e-6)
        l = np.where(tiny, dt(1), logits)
        pos = l > 0
        lp = np.where(pos, l, dt(1))
        ln_ = np.where(pos, dt(-1), l)
        # l > 0: ln(1 + u(e^l − 1)) = l + ln(u + (1 − u) e^{−l});  l < 0: log1p(u expm1(l)).
        x_pos = dt(1) + np.log(u + (dt(1) - u) * np.exp(-lp)) / lp
        x_neg = np.log1p(u * np.expm1(ln_)) / ln_
        x = np.where(pos, x_pos, x_neg)
        x = np.where(tiny, u, x)
        return np.clip(x, 0, 1).astype(logits.dtype, copy=False)


class Gaussian(Likelihood):
    """p(x|z) = N(x; m(z), diag σ²), with σ fixed, learned per dimension, or per example.

    * ``sigma=<float>``: fixed σ, ln σ² = 2 ln σ.
    * ``sigma="learned"``: a free log-variance per data dimension, ``likelihood.logvar`` (D,).
    * ``sigma="per_example"``: the decoder has a second head ``decoder.out_logvar``.
    """

    name = "gaussian"

    def __init__(self, sigma=1.0):
        if isinstance(sigma, str):
            if sigma not in ("learned", "per_example"):
                raise ValueError(
                    f"sigma must be a positive number, 'learned' or 'per_example', got {sigma!r}"
                )
        else:
            try:
                ok = math.isfinite(float(sigma)) and float(sigma) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok or isinstance(sigma, bool):
                raise ValueError(
                    f"sigma must be a positive number, 'learned' or 'per_example', got {sigma!r}"
                )
            sigma = float(sigma)
        self.sigma = sigma
        self.heads = ("out", "out_logvar") if sigma == "per_example" else ("out",)

    def options(self):
        return {"sigma": self.sigma}

    def init_params(self, n_inputs, dtype):
        if self.sigma == "learned":
            return {"logvar": np.zeros(n_inputs, dtype=dtype)}
        return {}

    def _logvar(self, outputs, params, dtype):
        if self.sigma == "learned":
            return params["logvar"]
        if self.sigma == "per_example":
            return outputs[1]
        return dtype.type(2.0 * math.log(self.sigma))

    def nll(self, x, outputs, params):
        mean = outputs[0]
        nll, dmean, dlogvar = gaussian_nll(mean, x, self._logvar(outputs, params, mean.dtype))

        def backprop(dnll):
            w = dnll[:, None]
            if self.sigma == "per_example":
                return (dmean * w, dlogvar * w), {}
            if self.sigma == "learned":
                return (dmean * w,), {"logvar": (dlogvar * w).sum(axis=0)}
            return (dmean * w,), {}

        return nll, backprop

    def loss_and_grad_(self, x, outputs, params, w, nll, dparams):
        if get_backend() != "numba":
            return super().loss_and_grad_(x, outputs, params, w, nll, dparams)
        mean = outputs[0]
        terms = _scratch("terms", mean.shape, mean.dtype)
        if self.sigma == "learned":  # Σ_rows of the ln σ² gradient into dparams
            gaussian_nll_(mean, x, params["logvar"].reshape(1, -1), False, w, terms, dparams["logvar"], 1)
        elif self.sigma == "per_example":  # the ln σ² head's gradient written over it, row by row
            gaussian_nll_(mean, x, outputs[1], True, w, terms, outputs[1][0], 2)
        else:
            s = _scratch("logvar", (1, mean.shape[1]), mean.dtype)
            s[...] = 2.0 * math.log(self.sigma)
            gaussian_nll_(mean, x, s, False, w, terms, s[0], 0)
        _nll_from_terms(terms, nll)

    def mean(self, outputs, params):
        return outputs[0].copy()

    def sample(self, outputs, params, rng):
        mean = outputs[0]
        std = np.exp(np.asarray(self._logvar(outputs, params, mean.dtype)) * mean.dtype.type(0.5))
        noise = rng.standard_normal(mean.shape).astype(mean.dtype)
        return mean + std * noise


LIKELIHOODS = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "continuous_bernoulli": ContinuousBernoulli,
}


def make(name: str, **options) -> Likelihood:
    """The likelihood called ``name`` with its options (only ``gaussian`` takes ``sigma``)."""
    if name not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {sorted(LIKELIHOODS)}, got {name!r}")
    cls = LIKELIHOODS[name]
    options = {k: v for k, v in options.items() if v is not None}
    if cls is Gaussian:
        return Gaussian(**options)
    unknown = set(options)
    if unknown:
        raise ValueError(f"likelihood {name!r} takes no options, got {sorted(unknown)}")
    return cls()
