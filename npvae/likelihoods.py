"""Decoder likelihoods p(x|z): per-example −ln p(x|z) in nats, every constant included.

A likelihood turns the decoder's output heads into a distribution over x.  Each object has

* ``heads``: the names of the decoder output layers it reads (``("out",)`` or
  ``("out", "out_logvar")``);
* ``init_params(n_inputs, dtype)``: its own free parameters (stored as ``likelihood.<name>``);
* ``nll(x, outputs, params) -> (nll, backprop)`` with nll of shape (B,) and
  ``backprop(dnll) -> (d_outputs, d_params)``, dnll the upstream weight of each example;
* ``mean(outputs, params)`` and ``sample(outputs, params, rng)`` for p(x|z);
* ``check_targets(x)``, which raises ValueError for data outside the support.

The arithmetic lives in :mod:`npvae.ops`.
"""
from __future__ import annotations

import math

import numpy as np

from . import activations, kernels, ops


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
        """The fused kernel: nll (B,) ← −ln p(x|z) per example, each output array ← its
        gradient weighted by w (B,), and each dparams array ← Σ_i of its weighted gradient."""
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def _check_unit_interval(x: np.ndarray, name: str, what: str) -> None:
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{what} targets {name} must lie in [0, 1]; found values in [{lo:g}, {hi:g}]"
        )


class Bernoulli(Likelihood):
    """p(x|z) = Π_d λ_d^{x_d} (1 − λ_d)^{1−x_d}, λ = σ(logits); x ∈ [0, 1] (soft targets allowed)."""

    name = "bernoulli"

    def check_targets(self, x, name="x"):
        _check_unit_interval(x, name, "Bernoulli")

    def nll(self, x, outputs, params):
        (logits,) = outputs
        nll, g = ops.bernoulli_nll(logits, x)

        def backprop(dnll):
            return (g * dnll[:, None],), {}

        return nll, backprop

    def loss_and_grad_(self, x, outputs, params, w, nll, dparams):
        kernels.bernoulli_(outputs[0], x, w, nll)

    def mean(self, outputs, params):
        return activations.sigmoid(outputs[0])

    def sample(self, outputs, params, rng):
        p = self.mean(outputs, params)
        return (rng.random(p.shape) < p).astype(p.dtype)


class ContinuousBernoulli(Likelihood):
    """p(x|z) = Π_d C(λ_d) λ_d^{x_d} (1 − λ_d)^{1−x_d} on x ∈ [0, 1] (Loaiza-Ganem & Cunningham 2019)."""

    name = "continuous_bernoulli"

    def check_targets(self, x, name="x"):
        _check_unit_interval(x, name, "continuous Bernoulli")

    def nll(self, x, outputs, params):
        (logits,) = outputs
        nll, g = ops.continuous_bernoulli_nll(logits, x)

        def backprop(dnll):
            return (g * dnll[:, None],), {}

        return nll, backprop

    def loss_and_grad_(self, x, outputs, params, w, nll, dparams):
        kernels.continuous_bernoulli_(outputs[0], x, w, nll)

    def mean(self, outputs, params):
        return ops.cb_mean(outputs[0])

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
        nll, dmean, dlogvar = ops.gaussian_nll(mean, x, self._logvar(outputs, params, mean.dtype))

        def backprop(dnll):
            w = dnll[:, None]
            if self.sigma == "per_example":
                return (dmean * w, dlogvar * w), {}
            if self.sigma == "learned":
                return (dmean * w,), {"logvar": (dlogvar * w).sum(axis=0)}
            return (dmean * w,), {}

        return nll, backprop

    def loss_and_grad_(self, x, outputs, params, w, nll, dparams):
        if self.sigma == "learned":
            kernels.gaussian_learned_(outputs[0], x, params["logvar"], w, nll, dparams["logvar"])
        elif self.sigma == "per_example":
            kernels.gaussian_per_example_(outputs[0], x, outputs[1], w, nll)
        else:
            kernels.gaussian_fixed_(outputs[0], x, 2.0 * math.log(self.sigma), w, nll)

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
