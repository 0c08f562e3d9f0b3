"""Diagnostics of a VAE and of its training: latent usage, gradient flow, dead units.

* ``active_units``: unit j is active when Cov_x(E_q[z_j | x]) = Var_x(μ_j(x)) > 0.01
  (Burda, Grosse & Salakhutdinov 2015).
* ``kl_per_dim``: the mean over the data of ½ (μ_j² + e^{v_j} − 1 − v_j).
* ``layer_grad_norms``: ‖∂L/∂W‖ and ‖∂L/∂b‖ together, per layer.
* ``activation_stats``: per hidden layer, the mean output and the fraction of dead units
  (zero output on every example given; for rectifiers only).
* ``update_ratios``: ‖Δθ‖ / ‖θ‖ per layer for one optimizer step.
* ``check_posterior_collapse``: warns (PosteriorCollapseWarning) when every dimension's
  KL is below a floor (z carries no information).

``fit(..., diagnostics=x_sample)`` records all of them in the History every epoch.
"""
from __future__ import annotations

import warnings

import numpy as np

from . import layers, ops

ACTIVE_THRESHOLD = 0.01


class PosteriorCollapseWarning(UserWarning):
    """The approximate posterior has collapsed onto the prior."""


def active_units(model, x, *, threshold: float = ACTIVE_THRESHOLD):
    """(number of active units, Var_x(μ_j) per latent dimension (J,))."""
    mu, _ = model.encode(x)
    var = mu.astype(np.float64).var(axis=0)
    return int(np.sum(var > threshold)), var


def kl_per_dim(model, x) -> np.ndarray:
    """The mean KL of each latent dimension over the data, (J,), in nats."""
    mu, lv = model.encode(x)
    return ops.kl_normal_per_dim(mu.astype(np.float64), lv.astype(np.float64)).mean(axis=0)


def _layer_names(params):
    names = []
    for k in params:
        prefix = k.rsplit(".", 1)[0]
        if prefix not in names:
            names.append(prefix)
    return names


def layer_grad_norms(grads: dict) -> dict:
    """‖gradient‖ per layer (W and b together; ``likelihood`` parameters as one group)."""
    out = {}
    for layer in _layer_names(grads):
        sq = sum(ops.sum_of_squares(g) for k, g in grads.items() if k.rsplit(".", 1)[0] == layer)
        out[layer] = float(np.sqrt(sq))
    return out


def update_ratios(before: dict, after: dict) -> dict:
    """‖θ_after − θ_before‖ / ‖θ_before‖ per layer (a healthy step is around 1e-3)."""
    out = {}
    for layer in _layer_names(before):
        keys = [k for k in before if k.rsplit(".", 1)[0] == layer]
        num = sum(ops.sum_of_squares((after[k] - before[k]).astype(np.float64)) for k in keys)
        den = sum(ops.sum_of_squares(before[k].astype(np.float64)) for k in keys)
        out[layer] = float(np.sqrt(num / den)) if den > 0 else float("inf") if num > 0 else 0.0
    return out


def activation_stats(model, x) -> dict:
    """Per hidden layer: {"mean": mean output, "dead": fraction of units that output 0 for
    every example in x} (dead is None for layers whose units cannot die: only a ReLU can)."""
    layers_by_prefix = {s.prefix: s.layer for s in model.plan.encoder + model.plan.decoder}
    out = {}
    for prefix, h in model.features(x).items():
        layer = layers_by_prefix[prefix]
        can_die = getattr(layer, "activation", None) == "relu" or (
            isinstance(layer, layers.Activation) and layer.name == "relu")
        dead = float(np.mean(np.all(h <= 0, axis=0))) if can_die else None
        out[prefix] = {"mean": float(h.mean()), "dead": dead}
    return out


def check_posterior_collapse(model, x, *, kl_floor: float = 0.01, warn: bool = True) -> bool:
    """True (and a PosteriorCollapseWarning) when every latent dimension's mean KL is below
    ``kl_floor`` nats: q(z|x) is then the prior for every x, and z carries no information.

    The active-unit count is not the criterion: its threshold Var_x(μ_j) > 0.01 assumes a
    posterior as wide as the prior, and a latent that spreads μ over ±0.05 with σ = 0.001
    carries several nats while counting as inactive."""
    kl = kl_per_dim(model, x)
    collapsed = bool(np.all(kl < kl_floor))
    if collapsed and warn:
        n_active, _ = active_units(model, x)
        warnings.warn(
            f"posterior collapse: {n_active} of {model.n_latent} latent units active, KL per "
            f"dimension {np.round(kl, 4).tolist()} nats; try β annealing or free bits",
            PosteriorCollapseWarning, stacklevel=2)
    return collapsed


def summary(model, x, grads=None, before=None) -> dict:
    """Every diagnostic in one dict of plain Python values (for the History)."""
    n_active, var = active_units(model, x)
    out = {"active_units": n_active, "mu_variance": var.tolist(), "kl_per_dim": kl_per_dim(model, x).tolist(),
           "activations": activation_stats(model, x)}
    if grads is not None:
        out["grad_norms"] = layer_grad_norms(grads)
    if before is not None:
        out["update_ratios"] = update_ratios(before, model.params)
    return out
