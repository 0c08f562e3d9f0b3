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

from . import compiled, engine, mpi, threads
from .kernels import arrays
from . import progress as progress_bars
from .validation import generator, positive_int


def log_weights(model, x, eps):
    """ln w (K, B) for data x (B, D) and noise eps (K, B, J); float64."""
    K, B, _ = eps.shape
    return engine.log_weights(model.plan, model.params, x, eps, model.workspaces(B), model.workspaces(K * B))


def log_likelihood(model, x, *, n_samples=5000, rng=None, batch_size=None, return_ess=False,
                   max_elements=1 << 22, progress="auto", comm="auto"):
    """Importance-sampled ln p(x) ≈ ln (1/K) Σ_k p(x, z_k)/q(z_k|x) per example, in nats.

    Samples are drawn in chunks so that memory stays bounded however large K is (at most
    ``max_elements`` decoder outputs at a time); the log-sum-exp is carried across chunks
    (running maximum and rescaled sums), in float64.  ``rng=None`` uses default_rng(0).
    With ``return_ess`` also returns the effective sample size (Σ w)² / Σ w² per example,
    which lies in [1, K].  ``progress``: a bar with an ETA on a terminal (tqdm): ``"auto"``
(the default) once the call has lasted 2 s, True at once, False never (:mod:`npvae.progress`).

    The examples are cut into blocks of ``batch_size``, each with its own random stream
    spawned from ``rng``.  Under MPI (``comm``, see :mod:`npvae.parallel`; "auto" under
    ``mpiexec``) the ranks compute whole blocks and every rank receives every result: the
    same numbers as one process.  Every rank passes the same x.
    """
    x = model.check_inputs(x)
    K = positive_int(n_samples, "n_samples")
    rng = np.random.default_rng(0) if rng is None else generator(rng)
    width = max([model.n_inputs] + [s.n_out for s in model.plan.encoder + model.plan.decoder])
    if batch_size is None:
        batch_size = max(1, min(x.shape[0], max_elements // (width * min(K, 64))))
    batch_size = positive_int(batch_size, "batch_size")
    comm = mpi.world(comm)
    progress = progress_bars.setting(progress)  # checked on every rank before any waits for another
    with threads.limited():
        ll, ess = _log_likelihood(model, x, K, rng, batch_size, max_elements, width,
                                  progress if mpi.rank_of(comm) == 0 else False, comm)
    return (ll, ess) if return_ess else ll


def _log_likelihood(model, x, K, rng, batch_size, max_elements, width, progress, comm):
    # a model the compiled path takes: each chunk's ln w in one compiled call (both cores)
    weights = compiled.log_weights if compiled.unsupported(model) is None else log_weights
    ll = np.zeros(x.shape[0])
    ess = np.zeros(x.shape[0])
    n_blocks = -(-x.shape[0] // batch_size)
    streams = mpi.block_streams(rng, n_blocks)
    mine = mpi.my_blocks(n_blocks, comm)
    examples = min(x.shape[0], mine.stop * batch_size) - mine.start * batch_size
    bar = progress_bars.bar(progress, examples * K, f"ln p(x), K={K}", "sample", unit_scale=True)
    try:
        for j in mine:
            start, rng = j * batch_size, streams[j]
            xb = x[start:start + batch_size]
            B = xb.shape[0]
            chunk = max(1, min(K, max_elements // (B * width)))
            m = np.full(B, -np.inf)
            s1 = np.zeros(B)
            s2 = np.zeros(B)
            eps_buf = np.empty((min(chunk, K), B, model.n_latent), model.dtype)
            for k0 in range(0, K, chunk):
                eps = eps_buf[:min(chunk, K - k0)]
                arrays.standard_normal_(rng, eps)  # rng.standard_normal's numbers, drawn faster
                lw = weights(model, xb, eps)
                bar.update(B * eps.shape[0])  # samples: a block of few examples and a large K still moves
                new_m = np.maximum(m, lw.max(axis=0))
                scale = np.exp(m - new_m)
                s1 = s1 * scale + np.exp(lw - new_m).sum(axis=0)
                s2 = s2 * scale ** 2 + np.exp(2 * (lw - new_m)).sum(axis=0)
                m = new_m
            ll[start:start + B] = m + np.log(s1) - math.log(K)
            ess[start:start + B] = s1 ** 2 / s2
    finally:
        bar.close()
    # every rank's blocks to every rank: the others' entries are zeros, so the sum is exact
    mpi.sum_in_place(comm, ll)
    mpi.sum_in_place(comm, ess)
    return ll, ess


def iwae_loss_and_grad(model, x, eps, out=None):
    """The batch mean of −L_K (the IWAE loss) and its gradient, for eps of shape (K, B, J):
    the engine's IWAE step (:func:`npvae.engine.iwae_step`), on checked arguments.

    Returns (loss, grads, parts) like VAE.loss_and_grad; parts hold ``iwae`` (the mean
    bound L_K), ``reconstruction`` (the w̃-weighted −ln p(x|z)), ``kl`` (the analytic KL,
    for reference), ``elbo`` (−reconstruction − kl at the weighted samples) and ``ess``.
    """
    K, B, _ = eps.shape
    G = model.new_grads() if out is None else out
    loss, parts = engine.iwae_step(model.plan, model.params, G, x, eps, model.workspaces(B),
                                   model.workspaces(K * B))
    return loss, G, parts
