"""Gradient-flow inspection: every named intermediate of one training step.

``VAE.loss_and_grad(x, eps=..., trace=True)`` runs the step through the readable building
blocks (``layers.dense``, ``distributions``, ``likelihoods``: closures, one per operation)
instead of the fused kernels, and records each forward value and each backward gradient
under a name.  The loss and gradients it returns equal the fast path's (a test checks it to
1e-12 in float64), so the trace is a faithful picture of what training computes.

Names, in the order they are computed:

    x, eps                                   the inputs
    <layer>.pre, <layer>.out                 a = h W + b and f(a), for every hidden layer
    mu, logvar, sigma, z                     the posterior and the sample z = μ + σ ε
    decoder.out (and decoder.out_logvar)     the decoder's output heads
    reconstruction, kl                       per example: −ln p(x|z) and KL(q || p)
    loss                                     mean(reconstruction) + β mean(kl)
    grad.decoder.out, ...                    dL/d(output heads)
    grad.<layer>.out                         dL/d(layer output), backwards
    grad.z, grad.mu, grad.logvar             through the sample and the KL
    grad.param.<name>                        dL/d(parameter)
"""
from __future__ import annotations

import numpy as np

from . import distributions
from .layers import dense


class Trace(dict):
    """An ordered mapping name -> array, printed as a table of names, shapes and values."""

    def __str__(self):
        lines = []
        with np.printoptions(precision=6, suppress=True, linewidth=100):
            for name, value in self.items():
                arr = np.asarray(value)
                body = np.array2string(arr, prefix=" " * 40)
                lines.append(f"{name:28s} {str(arr.shape):10s} {body}")
        return "\n".join(lines)

    def names(self):
        return list(self)


def traced_loss_and_grad(model, x, eps, beta):
    """(loss, grads, parts, trace) through the closure-based building blocks."""
    P = model.params
    T = Trace(x=x.copy(), eps=eps.copy())
    B = x.shape[0]
    dt = model.dtype.type

    def chain(prefix, h):
        bps = []
        for i in range(len(model.hidden)):
            name = f"{prefix}.{i}"
            T[f"{name}.pre"] = h @ P[f"{name}.W"] + P[f"{name}.b"]
            h, bp = dense(h, P[f"{name}.W"], P[f"{name}.b"], model.activation)
            T[f"{name}.out"] = h.copy()
            bps.append((name, bp))
        return h, bps

    h_enc, enc_bps = chain("encoder", x)
    mu, mu_bp = dense(h_enc, P["encoder.mu.W"], P["encoder.mu.b"])
    lv, lv_bp = dense(h_enc, P["encoder.logvar.W"], P["encoder.logvar.b"])
    z, z_bp = distributions.reparametrize(mu, lv, eps)
    T.update(mu=mu.copy(), logvar=lv.copy(), sigma=np.exp(lv * dt(0.5)), z=z.copy())
    h_dec, dec_bps = chain("decoder", z)
    outs, out_bps = [], []
    for head in model.likelihood.heads:
        o, bp = dense(h_dec, P[f"decoder.{head}.W"], P[f"decoder.{head}.b"])
        T[f"decoder.{head}"] = o.copy()
        outs.append(o)
        out_bps.append((head, bp))
    lik_params = model._likelihood_params(P)
    rec, rec_bp = model.likelihood.nll(x, tuple(outs), lik_params)
    kl, kl_bp = distributions.kl_standard_normal(mu, lv)
    rec_mean, kl_mean = dt(rec.sum() / dt(B)), dt(kl.sum() / dt(B))
    loss = dt(rec_mean + dt(beta) * kl_mean)
    T.update(reconstruction=rec.copy(), kl=kl.copy(), loss=np.asarray(loss))

    grads = {}
    d_outs, g_lik = rec_bp(np.full(B, 1.0 / B, dtype=model.dtype))
    dh = None
    for (head, bp), d in zip(out_bps, d_outs):
        T[f"grad.decoder.{head}"] = d.copy()
        dhi, grads[f"decoder.{head}.W"], grads[f"decoder.{head}.b"] = bp(d)
        dh = dhi if dh is None else dh + dhi
    for name, bp in reversed(dec_bps):
        T[f"grad.{name}.out"] = dh.copy()
        dh, grads[f"{name}.W"], grads[f"{name}.b"] = bp(dh)
    T["grad.z"] = dh.copy()
    dmu, dlv = z_bp(dh)
    kmu, klv = kl_bp(np.full(B, beta / B, dtype=model.dtype))
    dmu, dlv = dmu + kmu, dlv + klv
    T.update({"grad.mu": dmu.copy(), "grad.logvar": dlv.copy()})
    dh_mu, grads["encoder.mu.W"], grads["encoder.mu.b"] = mu_bp(dmu)
    dh_lv, grads["encoder.logvar.W"], grads["encoder.logvar.b"] = lv_bp(dlv)
    dh = dh_mu + dh_lv
    for name, bp in reversed(enc_bps):
        T[f"grad.{name}.out"] = dh.copy()
        dh, grads[f"{name}.W"], grads[f"{name}.b"] = bp(dh)
    for k, v in g_lik.items():
        grads[f"likelihood.{k}"] = v
    grads = {k: grads[k] for k in P}
    for k, v in grads.items():
        T[f"grad.param.{k}"] = v
    parts = {"reconstruction": rec_mean, "kl": kl_mean, "elbo": dt(-(rec_mean + kl_mean)), "beta": beta}
    return loss, grads, parts, T
