"""The engine: one forward and one backward pass of a VAE built from layers, used by
everything that trains or evaluates one.

A :class:`Plan` is the network in order: the encoder's layers (x -> features), the posterior
heads μ and v = ln σ², the decoder's layers (z -> features), the likelihood's output heads,
and the likelihood.  Parameters live in one flat mapping from dotted names
(``encoder.<i>.<name>``, ``encoder.mu.W``, ``decoder.<i>.<name>``, ``decoder.out.b``,
``likelihood.logvar``) to arrays; gradients use the same keys.

The passes, per example (weight 1/B):

    forward   h = encoder(x);  μ, v = heads(h);  z = μ + e^{v/2} ε;  outs = decoder(z)
              loss = −ln p(x|z) + β KL(N(μ, e^v) || N(0, I))                 (ELBO step)
    backward  d outs = ∂(−ln p)/∂outs  (the likelihood)
              dz = decoder backward;  dμ = dz + β μ;  dv = ½ σ ε ⊙ dz + β ½ (e^v − 1)
              encoder backward from dμ, dv

and the importance-weighted step (:func:`iwae_step`) runs the same encoder once and the same
decoder on K samples per example.  A built-in :class:`npvae.layers.Dense` runs fused: the
matrix product into a reused buffer, then one kernel for bias and activation (forward) or
activation derivative and bias gradient (backward), :mod:`npvae.activations`'s (its NumPy
reference on the NumPy backend).  Any other
layer, a user's own included, runs through its ``forward(params, x) -> (y, backward)``:
correct, just slower, and allocating.

Tracing is an option of the same passes: ``record(name, value)`` receives every named
intermediate (see :mod:`npvae.trace` for the names).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import activations, posterior, threads
from .kernels import ACT_CODES
from .layers import Dense


@dataclass
class Stage:
    """One layer of a plan: its parameter prefix, the layer, and its input and output widths.
    ``fused`` holds (weight key, bias key, activation code) for a built-in Dense."""
    prefix: str
    layer: object
    n_in: int
    n_out: int
    names: tuple
    fused: tuple | None = None


def _stage(prefix, layer, n_in, n_out, names):
    fused = None
    if type(layer) is Dense:
        fused = (f"{prefix}.W", f"{prefix}.b", ACT_CODES[layer.activation])
    return Stage(prefix, layer, n_in, n_out, tuple(names), fused)


@dataclass
class Plan:
    """The network of a VAE, in order; built once by the model."""
    encoder: list
    heads: list          # the μ and v heads, each a Stage of an identity Dense
    decoder: list
    outputs: list        # the likelihood's output heads
    likelihood: object
    dtype: np.dtype
    n_inputs: int
    n_latent: int
    likelihood_keys: tuple = ()

    @property
    def h_enc(self):
        return self.encoder[-1].n_out if self.encoder else self.n_inputs

    @property
    def h_dec(self):
        return self.decoder[-1].n_out if self.decoder else self.n_latent

    def likelihood_params(self, P):
        return {k[len("likelihood."):]: P[k] for k in self.likelihood_keys}


def build(rng, *, n_inputs, n_latent, encoder, decoder, likelihood, dtype, head_init):
    """(plan, params): every layer's ``init(rng, n_in)`` called in order (encoder, μ and v
    heads, decoder, output heads), its parameters cast to ``dtype`` under their dotted names."""
    dtype = np.dtype(dtype)
    params = {}

    def chain(prefix, layers, n):
        stages = []
        for i, layer in enumerate(layers):
            n_out, p = layer.init(rng, n)
            n_out = int(n_out)
            if n_out < 1:
                raise ValueError(f"{prefix}.{i} ({layer!r}) has {n_out} outputs")
            for k, v in p.items():
                params[f"{prefix}.{i}.{k}"] = np.asarray(v).astype(dtype, copy=False)
            stages.append(_stage(f"{prefix}.{i}", layer, n, n_out, p))
            n = n_out
        return stages, n

    enc, h = chain("encoder", encoder, n_inputs)
    heads = []
    for head in ("mu", "logvar"):
        layer = Dense(n_latent, init=head_init)
        _, p = layer.init(rng, h)
        for k, v in p.items():
            params[f"encoder.{head}.{k}"] = v.astype(dtype, copy=False)
        heads.append(_stage(f"encoder.{head}", layer, h, n_latent, p))
    dec, h = chain("decoder", decoder, n_latent)
    outs = []
    for head in likelihood.heads:
        layer = Dense(n_inputs, init=head_init)
        _, p = layer.init(rng, h)
        for k, v in p.items():
            params[f"decoder.{head}.{k}"] = v.astype(dtype, copy=False)
        outs.append(_stage(f"decoder.{head}", layer, h, n_inputs, p))
    for k, v in likelihood.init_params(n_inputs, dtype).items():
        params[f"likelihood.{k}"] = v
    plan = Plan(enc, heads, dec, outs, likelihood, dtype, n_inputs, n_latent,
                tuple(k for k in params if k.startswith("likelihood.")))
    return plan, params


# ----------------------------------------------------------------------------------------
# Workspaces: every buffer of a batch size, by name
# ----------------------------------------------------------------------------------------
@dataclass
class Workspace:
    """The reusable buffers of one batch size B (D inputs, J latents)."""
    enc: list                  # each encoder stage's output (B, n_out)
    dec: list
    enc_d: list                # dL/d(output) of each encoder stage
    dec_d: list
    mu: np.ndarray
    lv: np.ndarray
    z: np.ndarray
    std: np.ndarray
    kl: np.ndarray
    dmu: np.ndarray
    dlv: np.ndarray
    dz: np.ndarray
    nll: np.ndarray
    w: np.ndarray              # 1/B per example
    mask: np.ndarray           # free-bits mask per latent dimension
    out: list                  # the likelihood's output heads (B, D)
    tmp_h: np.ndarray
    tmp_e: np.ndarray
    tapes: dict = field(default_factory=dict)  # backward closures of non-fused layers


def workspace(plan: Plan, B: int) -> Workspace:
    dt, J, D = plan.dtype, plan.n_latent, plan.n_inputs
    e = lambda *shape: np.empty(shape, dtype=dt)
    return Workspace(
        enc=[e(B, s.n_out) for s in plan.encoder], dec=[e(B, s.n_out) for s in plan.decoder],
        enc_d=[e(B, s.n_out) for s in plan.encoder], dec_d=[e(B, s.n_out) for s in plan.decoder],
        mu=e(B, J), lv=e(B, J), z=e(B, J), std=e(B, J), kl=e(B), dmu=e(B, J), dlv=e(B, J), dz=e(B, J),
        nll=e(B), w=np.full(B, 1.0 / B, dtype=dt), mask=np.ones(J, dtype=dt),
        out=[e(B, D) for _ in plan.outputs], tmp_h=e(B, plan.h_dec), tmp_e=e(B, plan.h_enc))


class Workspaces:
    """Workspaces kept for reuse, a few batch sizes at most."""

    def __init__(self, plan: Plan, keep: int = 4):
        self.plan, self.keep, self._by_size = plan, keep, {}

    def __call__(self, B: int) -> Workspace:
        ws = self._by_size.get(B)
        if ws is None:
            if len(self._by_size) >= self.keep:
                self._by_size.pop(next(iter(self._by_size)))
            ws = self._by_size[B] = workspace(self.plan, B)
        return ws


# ----------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------
def _forward_chain(P, stages, h, bufs, tape, record):
    for s, buf in zip(stages, bufs):
        if s.fused is not None:
            wk, bk, act = s.fused
            np.matmul(h, P[wk], out=buf)
            if record is not None:
                record(f"{s.prefix}.pre", buf + P[bk])
            activations.bias_activation_inplace(buf, P[bk], act)
        else:
            y, back = s.layer.forward({n: P[f"{s.prefix}.{n}"] for n in s.names}, h)
            y = np.asarray(y)
            if y.shape != buf.shape:
                raise ValueError(f"{s.prefix} ({s.layer!r}) returned shape {y.shape}, expected {buf.shape}")
            buf[...] = y
            tape[s.prefix] = back
        if record is not None:
            record(f"{s.prefix}.out", buf)
        h = buf
    return h


def _heads(P, stages, h, bufs):
    for s, buf in zip(stages, bufs):
        wk, bk, _ = s.fused
        np.matmul(h, P[wk], out=buf)
        activations.bias_activation_inplace(buf, P[bk], 0)


def encode(plan: Plan, P, x, ws: Workspace, record=None):
    """μ and v = ln σ² of q(z|x) into ws.mu, ws.lv; returns the last encoder features."""
    threads.ran_on("blas")  # the products are NumPy's (OpenBLAS on its threads)
    h = _forward_chain(P, plan.encoder, x, ws.enc, ws.tapes, record)
    _heads(P, plan.heads, h, (ws.mu, ws.lv))
    return h


def decode(plan: Plan, P, z, ws: Workspace, record=None):
    """The likelihood's output heads for z into ws.out; returns the last decoder features."""
    threads.ran_on("blas")
    h = _forward_chain(P, plan.decoder, z, ws.dec, ws.tapes, record)
    _heads(P, plan.outputs, h, ws.out)
    if record is not None:
        for s, o in zip(plan.outputs, ws.out):
            record(s.prefix, o)
    return h


# ----------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------
def _backward_chain(P, G, stages, inputs, outputs, grads_in, d, need_dx_first, tapes, record):
    """Back through the stages (in reverse): d holds dL/dy of the last stage's output; each
    step fills its parameters' gradients and returns dL/d(input)."""
    for k in range(len(stages) - 1, -1, -1):
        s = stages[k]
        if record is not None:
            record(f"grad.{s.prefix}.out", d)
        if s.fused is not None:
            wk, bk, act = s.fused
            activations.activation_backward_inplace(d, outputs[k], act, G[bk])
            np.matmul(inputs[k].T, d, out=G[wk])
            if k > 0 or need_dx_first:
                nxt = grads_in[k]
                np.matmul(d, P[wk].T, out=nxt)
                d = nxt
        else:
            dx, grads = tapes[s.prefix](d)
            for n in s.names:  # exact shapes: broadcasting would hide a wrong backward
                g, target = np.asarray(grads[n]), G[f"{s.prefix}.{n}"]
                if g.shape != target.shape:
                    raise ValueError(f"{s.prefix} ({s.layer!r}): the gradient of {n!r} has shape {g.shape}, "
                                     f"the parameter {target.shape}")
                target[...] = g
            if k > 0 or need_dx_first:
                dx = np.asarray(dx)
                if dx.shape != grads_in[k].shape:
                    raise ValueError(f"{s.prefix} ({s.layer!r}): backward returned dx of shape {dx.shape}, "
                                     f"the input is {grads_in[k].shape}")
                grads_in[k][...] = dx
                d = grads_in[k]
    return d


def decoder_backward(plan: Plan, P, G, ws: Workspace, z, h_dec, record=None):
    """From the likelihood's gradient (written over ws.out) back to dL/dz (ws.dz)."""
    dh = None
    for s, d in zip(plan.outputs, ws.out):
        wk, bk, _ = s.fused
        if record is not None:
            record(f"grad.{s.prefix}", d)
        activations.activation_backward_inplace(d, d, 0, G[bk])
        np.matmul(h_dec.T, d, out=G[wk])
        if dh is None:
            dh = ws.dec_d[-1] if plan.decoder else ws.dz
            np.matmul(d, P[wk].T, out=dh)
        else:
            np.matmul(d, P[wk].T, out=ws.tmp_h)
            dh += ws.tmp_h
    return _backward_chain(P, G, plan.decoder, [z] + ws.dec[:-1], ws.dec, [ws.dz] + ws.dec_d[:-1], dh, True,
                           ws.tapes, record)


def encoder_backward(plan: Plan, P, G, ws: Workspace, x, h_enc, record=None):
    """From dL/dμ, dL/dv (ws.dmu, ws.dlv) back through the encoder."""
    for s, d in zip(plan.heads, (ws.dmu, ws.dlv)):
        wk, bk, _ = s.fused
        activations.activation_backward_inplace(d, d, 0, G[bk])
        np.matmul(h_enc.T, d, out=G[wk])
    if plan.encoder:
        dh = ws.enc_d[-1]
        np.matmul(ws.dmu, P["encoder.mu.W"].T, out=dh)
        np.matmul(ws.dlv, P["encoder.logvar.W"].T, out=ws.tmp_e)
        dh += ws.tmp_e
        _backward_chain(P, G, plan.encoder, [x] + ws.enc[:-1], ws.enc, [None] + ws.enc_d[:-1], dh, False,
                        ws.tapes, record)


# ----------------------------------------------------------------------------------------
# The steps
# ----------------------------------------------------------------------------------------
def _record(record, **values):
    if record is not None:
        for name, value in values.items():
            record(name.replace("__", "."), value)


def _posterior_backward(plan, P, G, ws, x, h_enc, record):
    """From dL/dμ, dL/dv in ws (recorded) through the encoder, then every parameter's
    gradient recorded: the common end of both steps."""
    _record(record, grad__mu=ws.dmu, grad__logvar=ws.dlv)
    encoder_backward(plan, P, G, ws, x, h_enc, record)
    if record is not None:
        for k, v in G.items():
            record(f"grad.param.{k}", v)


def elbo_step(plan: Plan, P, G, x, eps, ws: Workspace, *, beta, free_bits=0.0, record=None):
    """(loss, parts): the batch mean of −ln p(x|z) + β KL and its gradient, written into G.

    x (B, D), eps (B, J).  Free bits λ > 0: the KL term is Σ_j max(λ, KL̄_j), KL̄_j the batch
    mean of dimension j, with gradient [KL̄_j > λ] / B."""
    B = x.shape[0]
    dt = plan.dtype.type
    _record(record, x=x, eps=eps)
    h_enc = encode(plan, P, x, ws, record)
    mu, lv, z, std, kl = ws.mu, ws.lv, ws.z, ws.std, ws.kl
    posterior.reparametrize_kl_inplace(mu, lv, eps, z, std, kl)
    _record(record, mu=mu, logvar=lv, sigma=std, z=z)
    h_dec = decode(plan, P, z, ws, record)
    lik_params = plan.likelihood_params(P)
    lik_grads = {k: G[f"likelihood.{k}"] for k in lik_params}
    # the likelihood kernel writes d(loss)/d(out) over the outputs, weight 1/B each
    plan.likelihood.loss_and_grad_(x, ws.out, lik_params, ws.w, ws.nll, lik_grads)
    rec_mean = dt(ws.nll.sum() / dt(B))
    kl_mean = dt(kl.sum() / dt(B))
    mask = ws.mask
    if free_bits > 0:
        kl_dim_mean = posterior.kl_normal_per_dim(mu, lv).mean(axis=0, dtype=plan.dtype)
        kl_term = np.maximum(kl_dim_mean, dt(free_bits)).sum(dtype=plan.dtype)
        mask = (kl_dim_mean > dt(free_bits)).astype(plan.dtype)
    else:
        kl_term = kl_mean
    loss = dt(rec_mean + dt(beta) * kl_term)
    _record(record, reconstruction=ws.nll, kl=kl, loss=np.asarray(loss))

    dz = decoder_backward(plan, P, G, ws, z, h_dec, record)
    _record(record, grad__z=dz)
    posterior.reparametrize_kl_backward_inplace(dz, eps, std, mu, lv, dt(beta / B), mask, ws.dmu, ws.dlv)
    _posterior_backward(plan, P, G, ws, x, h_enc, record)
    parts = {"reconstruction": dt(rec_mean), "kl": dt(kl_mean), "elbo": dt(-(rec_mean + kl_mean)),
             "beta": beta}
    if free_bits > 0:
        parts["kl_objective"] = dt(kl_term)
    return loss, parts


ESTIMATORS = ("iwae", "dreg", "stl")


def iwae_step(plan: Plan, P, G, x, eps, ws: Workspace, ws_rows: Workspace, *, estimator="iwae", record=None):
    """(loss, parts): the batch mean of −L_K, L_K = ln (1/K) Σ_k w_k, and a gradient estimate
    in G.

    x (B, D), eps (K, B, J); ``ws`` is the workspace of B rows, ``ws_rows`` of K·B rows (the
    decoder runs once on all samples).  The encoder runs once.  With normalised weights w̃_k
    and ε fixed, the decoder's (and the likelihood's) gradient is always
    ∂L_K/∂θ = Σ_k w̃_k ∂ ln w_k/∂θ.  The encoder's (φ: μ and v = ln σ²) depends on
    ``estimator`` (docs/math.md, section 8), with g_k = ∂ ln w_k/∂z_k at q's parameters held
    fixed (the path derivative, ln q included):

    * "iwae": the reparametrised gradient, Σ_k w̃_k d ln w_k/dφ (path and score terms);
    * "dreg": doubly reparametrised (Tucker et al. 2018), Σ_k w̃_k² g_k ∂z_k/∂φ, unbiased
      for the "iwae" gradient's expectation;
    * "stl": sticking the landing (Roeder et al. 2017), Σ_k w̃_k g_k ∂z_k/∂φ, the score term
      dropped: unbiased for the ELBO's gradient at K = 1, biased for K > 1.

    Here g_k = −∂(−ln p(x|z_k) − ln p(z_k))/∂z_k − ε_k/σ, since −∂ ln q(z|x)/∂z = (z − μ)/σ² = ε/σ."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    K, B, J = eps.shape
    dt = plan.dtype.type
    _record(record, x=x, eps=eps)
    h_enc = encode(plan, P, x, ws, record)
    mu, lv = ws.mu, ws.lv
    z, std = posterior.reparametrize(mu, lv, eps)            # (K, B, J)
    _record(record, mu=mu, logvar=lv, sigma=std, z=z)
    z_rows = np.ascontiguousarray(z.reshape(K * B, J))
    x_rows = np.ascontiguousarray(np.broadcast_to(x, (K, B, x.shape[1])).reshape(K * B, -1))
    h_dec = decode(plan, P, z_rows, ws_rows, record)
    saved = [o.copy() for o in ws_rows.out]
    lik = plan.likelihood_params(P)
    lik_grads = {k: G[f"likelihood.{k}"] for k in lik}
    zeros = np.zeros(K * B, dtype=plan.dtype)
    plan.likelihood.loss_and_grad_(x_rows, ws_rows.out, lik, zeros, ws_rows.nll, lik_grads)
    nll = ws_rows.nll.reshape(K, B).astype(np.float64)
    lw = (-nll + posterior.standard_normal_log_prob(z.astype(np.float64))
          - posterior.standard_normal_log_prob(eps.astype(np.float64)) + 0.5 * lv.astype(np.float64).sum(axis=1))
    m = lw.max(axis=0)
    e = np.exp(lw - m)
    bound = m + np.log(e.sum(axis=0)) - math.log(K)    # (B,)
    wn = e / e.sum(axis=0)                             # normalised weights w̃ (K, B)
    rows_w = (wn / B).astype(plan.dtype).reshape(K * B)
    loss = dt(-bound.mean())
    _record(record, reconstruction=nll, log_weights=lw, weights=wn, loss=np.asarray(loss))

    # the likelihood again, now with weights w̃/B, on the saved outputs
    for o, s_ in zip(ws_rows.out, saved):
        o[...] = s_
    plan.likelihood.loss_and_grad_(x_rows, ws_rows.out, lik, rows_w, ws_rows.nll, lik_grads)
    dz = decoder_backward(plan, P, G, ws_rows, z_rows, h_dec, record).reshape(K, B, J)
    dz = dz + rows_w.reshape(K, B, 1) * z              # −∂ ln p(z)/∂z = z, weighted
    if estimator != "iwae":
        # the path derivative of −ln w through ln q: ∂ ln q(z|x)/∂z = −ε/σ, weighted
        dz = dz - rows_w.reshape(K, B, 1) * (eps / std)
        if estimator == "dreg":  # weights w̃² instead of w̃: each sample's row times its w̃
            dz = dz * wn.astype(plan.dtype)[:, :, None]
    _record(record, grad__z=dz)
    dmu, dlv = posterior.reparametrize_backward(dz, eps, std)
    ws.dmu[...] = dmu
    # the score term of ln q at fixed ε: −Σ_k w̃_k ½ / B (Σ_k w̃_k = 1); DReG and STL drop it
    ws.dlv[...] = dlv - dt(0.5 / B) if estimator == "iwae" else dlv
    _posterior_backward(plan, P, G, ws, x, h_enc, record)

    kl = posterior.kl_normal(mu, lv)
    rec = float((wn * nll).sum(axis=0).mean())
    ess = float((1.0 / (wn ** 2).sum(axis=0)).mean())
    parts = {"iwae": dt(bound.mean()), "reconstruction": dt(rec), "kl": dt(kl.mean()),
             "elbo": dt(-(rec + float(kl.mean()))), "beta": 1.0, "ess": ess}
    return loss, parts


def log_px_rows(plan: Plan, P, x_rows, z_rows, ws_rows: Workspace):
    """ln p(x|z) for matching rows of x and z, through the decoder and the likelihood kernel
    (zero weights: only the per-row values are wanted)."""
    decode(plan, P, z_rows, ws_rows)
    nll = ws_rows.nll
    zeros = np.zeros(x_rows.shape[0], dtype=plan.dtype)
    lik = plan.likelihood_params(P)
    scratch = {k: np.empty_like(v) for k, v in lik.items()}
    plan.likelihood.loss_and_grad_(x_rows, ws_rows.out, lik, zeros, nll, scratch)
    return -nll


def log_weights(plan: Plan, P, x, eps, ws: Workspace, ws_rows: Workspace):
    """ln w (K, B) = ln p(x|z_k) + ln p(z_k) − ln q(z_k|x) for x (B, D), eps (K, B, J); float64."""
    K, B, J = eps.shape
    encode(plan, P, x, ws)
    mu, lv = ws.mu, ws.lv
    z, _ = posterior.reparametrize(mu, lv, eps)
    x_rows = np.broadcast_to(x, (K, B, x.shape[1])).reshape(K * B, -1)
    log_px = log_px_rows(plan, P, x_rows, z.reshape(K * B, J), ws_rows).reshape(K, B)
    # ln p(z) − ln q(z|x) = ln N(z; 0, I) − ln N(ε; 0, I) + Σ_j v_j / 2
    log_ratio = (posterior.standard_normal_log_prob(z.astype(np.float64))
                 - posterior.standard_normal_log_prob(eps.astype(np.float64))
                 + 0.5 * lv.astype(np.float64).sum(axis=1))
    return log_px.astype(np.float64) + log_ratio


__all__ = ["Plan", "Stage", "Workspace", "Workspaces", "build", "workspace", "encode", "decode",
           "decoder_backward", "encoder_backward", "elbo_step", "iwae_step", "log_px_rows", "log_weights"]
