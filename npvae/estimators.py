"""Importance-weighted estimators: ln p(x) and the IWAE bound with its gradient.

With K samples z_k = μ + σ ⊙ ε_k from q(z|x), the log importance weights are

    ln w_k = ln p(x|z_k) + ln p(z_k) − ln q(z_k|x),
    ln q(z_k|x) = ln N(ε_k; 0, I) − Σ_j ln σ_j             (correction L7)

and the importance-weighted bound (Burda, Grosse & Salakhutdinov 2015; correction L8)

    L_K(x) = ln (1/K) Σ_k w_k  ≤  ln p(x),                  L_1 = a one-sample ELBO,

is computed with a log-sum-exp: the weights themselves underflow for any realistic x.
Its expectation rises with K towards ln p(x).

Gradient (ε fixed).  With normalised weights w̃_k = w_k / Σ_l w_l,

    ∂L_K/∂θ = Σ_k w̃_k ∂ ln w_k/∂θ,
    ∂ ln w_k/∂z_k = ∂ ln p(x|z_k)/∂z_k − z_k,
    ∂ ln w_k/∂μ_j = ∂ ln w_k/∂z_kj,
    ∂ ln w_k/∂v_j = ∂ ln w_k/∂z_kj · ½ σ_j ε_kj + ½      (the ½: −∂ ln q/∂v at fixed ε).
"""
from __future__ import annotations

import math

import numpy as np

from . import ops
from .validation import generator, positive_int


def _log_px_rows(model, x_rows, z_rows, ws_dec):
    """ln p(x|z) for matching rows of x and z, through the decoder and the likelihood kernel
    (zero weights: only the per-row values are wanted)."""
    P = model.params
    model._decode_into(P, z_rows, ws_dec)
    nll = ws_dec["nll"]
    zeros = np.zeros(x_rows.shape[0], dtype=model.dtype)
    lik = model._likelihood_params(P)
    scratch = {k: np.empty_like(v) for k, v in lik.items()}
    model.likelihood.loss_and_grad_(x_rows, ws_dec["out"], lik, zeros, nll, scratch)
    return -nll


def log_weights(model, x, eps):
    """ln w (K, B) for data x (B, D) and noise eps (K, B, J); float64."""
    K, B, J = eps.shape
    ws = model._workspace(B)
    model._encode_into(model.params, x, ws)
    mu, lv = ws["mu"], ws["lv"]
    z, _ = ops.reparametrize(mu, lv, eps)
    ws_dec = model._workspace(K * B)
    x_rows = np.broadcast_to(x, (K, B, x.shape[1])).reshape(K * B, -1)
    log_px = _log_px_rows(model, x_rows, z.reshape(K * B, J), ws_dec).reshape(K, B)
    # ln p(z) − ln q(z|x) = ln N(z; 0, I) − ln N(ε; 0, I) + Σ_j v_j / 2
    log_ratio = (ops.standard_normal_log_prob(z.astype(np.float64))
                 - ops.standard_normal_log_prob(eps.astype(np.float64))
                 + 0.5 * lv.astype(np.float64).sum(axis=1))
    return log_px.astype(np.float64) + log_ratio


def log_likelihood(model, x, *, n_samples=5000, rng=None, batch_size=None, return_ess=False,
                   max_elements=1 << 22, progress=False):
    """Importance-sampled ln p(x) ≈ ln (1/K) Σ_k p(x, z_k)/q(z_k|x) per example, in nats.

    Samples are drawn in chunks so that memory stays bounded however large K is (at most
    ``max_elements`` decoder outputs at a time); the log-sum-exp is carried across chunks
    (running maximum and rescaled sums), in float64.  ``rng=None`` uses default_rng(0).
    With ``return_ess`` also returns the effective sample size (Σ w)² / Σ w² per example,
    which lies in [1, K].  ``progress=True`` shows a bar with an ETA on a terminal (tqdm).
    """
    x = model._check_x(x)
    K = positive_int(n_samples, "n_samples")
    rng = np.random.default_rng(0) if rng is None else generator(rng)
    width = max((model.n_inputs,) + model.hidden)
    if batch_size is None:
        batch_size = max(1, min(x.shape[0], max_elements // (width * min(K, 64))))
    batch_size = positive_int(batch_size, "batch_size")
    ll = np.empty(x.shape[0])
    ess = np.empty(x.shape[0])
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=x.shape[0], desc=f"ln p(x), K={K}", unit="ex", leave=False, disable=None)
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        B = xb.shape[0]
        chunk = max(1, min(K, max_elements // (B * width)))
        m = np.full(B, -np.inf)
        s1 = np.zeros(B)
        s2 = np.zeros(B)
        for k0 in range(0, K, chunk):
            kc = min(chunk, K - k0)
            eps = rng.standard_normal((kc, B, model.n_latent), dtype=model.dtype)
            lw = log_weights(model, xb, eps)
            new_m = np.maximum(m, lw.max(axis=0))
            scale = np.exp(m - new_m)
            s1 = s1 * scale + np.exp(lw - new_m).sum(axis=0)
            s2 = s2 * scale ** 2 + np.exp(2 * (lw - new_m)).sum(axis=0)
            m = new_m
        ll[start:start + B] = m + np.log(s1) - math.log(K)
        ess[start:start + B] = s1 ** 2 / s2
        if bar is not None:
            bar.update(B)
    if bar is not None:
        bar.close()
    return (ll, ess) if return_ess else ll


def iwae_loss_and_grad(model, x, eps, out=None):
    """The batch mean of −L_K (the IWAE loss) and its gradient, for eps of shape (K, B, J).

    Returns (loss, grads, parts) like VAE.loss_and_grad; parts hold ``iwae`` (the mean
    bound L_K), ``reconstruction`` (the w̃-weighted −ln p(x|z)), ``kl`` (the analytic KL,
    for reference), ``elbo`` (−reconstruction − kl at the weighted samples) and ``ess``.
    """
    K, B, J = eps.shape
    P = model.params
    G = model._new_grads() if out is None else out
    dt = model.dtype.type
    ws = model._workspace(B)
    h_enc = model._encode_into(P, x, ws)
    mu, lv = ws["mu"], ws["lv"]
    z, std = ops.reparametrize(mu, lv, eps)            # (K, B, J)
    z_rows = np.ascontiguousarray(z.reshape(K * B, J))
    ws_dec = model._workspace(K * B)
    x_rows = np.ascontiguousarray(np.broadcast_to(x, (K, B, x.shape[1])).reshape(K * B, -1))
    h_dec = model._decode_into(P, z_rows, ws_dec)
    saved = [o.copy() for o in ws_dec["out"]]
    lik = model._likelihood_params(P)
    lik_grads = {k: G[f"likelihood.{k}"] for k in lik}
    zeros = np.zeros(K * B, dtype=model.dtype)
    model.likelihood.loss_and_grad_(x_rows, ws_dec["out"], lik, zeros, ws_dec["nll"], lik_grads)
    nll = ws_dec["nll"].reshape(K, B).astype(np.float64)
    lw = (-nll + ops.standard_normal_log_prob(z.astype(np.float64))
          - ops.standard_normal_log_prob(eps.astype(np.float64)) + 0.5 * lv.astype(np.float64).sum(axis=1))
    m = lw.max(axis=0)
    e = np.exp(lw - m)
    bound = m + np.log(e.sum(axis=0)) - math.log(K)    # (B,)
    wn = e / e.sum(axis=0)                             # normalised weights w̃ (K, B)
    rows_w = (wn / B).astype(model.dtype).reshape(K * B)

    # the likelihood again, now with weights w̃/B, on the saved outputs
    for o, s_ in zip(ws_dec["out"], saved):
        o[...] = s_
    model.likelihood.loss_and_grad_(x_rows, ws_dec["out"], lik, rows_w, ws_dec["nll"], lik_grads)
    dz = model._decoder_backward(P, G, ws_dec, z_rows, h_dec).reshape(K, B, J)
    dz = dz + rows_w.reshape(K, B, 1) * z              # −∂ ln p(z)/∂z = z, weighted
    dmu, dlv = ops.reparametrize_backward(dz, eps, std)
    ws["dmu"][...] = dmu
    ws["dlv"][...] = dlv - dt(0.5 / B)                 # −Σ_k w̃_k ½ / B, Σ_k w̃_k = 1
    model._encoder_backward(P, G, ws, x, h_enc)

    kl = ops.kl_normal(mu, lv)
    rec = float((wn * nll).sum(axis=0).mean())
    ess = float((1.0 / (wn ** 2).sum(axis=0)).mean())
    loss = dt(-bound.mean())
    parts = {"iwae": dt(bound.mean()), "reconstruction": dt(rec), "kl": dt(kl.mean()),
             "elbo": dt(-(rec + float(kl.mean()))), "beta": 1.0, "ess": ess}
    return loss, G, parts
