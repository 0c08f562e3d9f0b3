"""The whole training step as one compiled function, several steps per call.

For a VAE whose every layer is a built-in :class:`npvae.layers.Dense` or
:class:`npvae.layers.GatedDense`, one call of
:func:`adam_steps` (or :func:`adam_steps_blocks`, the batch in row blocks on numba's
threads) runs S steps, each: gather the batch, binarise it (dynamic binarisation), the
forward pass, the likelihood, the KL (or the importance weights of :func:`iwae_forward_backward`),
the backward pass, the global gradient norm (and the check that every gradient is finite),
clipping, and Adam, in place on the flat parameter, gradient and moment buffers.  Python is
entered once per S steps.  :func:`log_weights` is the forward pass of ln p(x)'s estimator.
The ELBO's mathematics is :func:`npvae.engine.elbo_step`'s, term for term:

    h = encoder(x);  μ, v = heads(h);  σ = e^{v/2};  z = μ + σ ε;  outs = decoder(z)
    loss = (1/B) Σ_i [−ln p(x_i|z_i) + β KL_i],  KL_i = ½ Σ_j (μ² + e^v − 1 − v)
    dμ = dz + (β/B) μ;  dv = ½ σ ε dz + (β/B) ½ (e^v − 1)

Matrix products are called from inside the compiled code (:func:`npvae.kernels.blas.gemm`:
npvae's own kernel, :mod:`npvae.kernels.gemm`, on CPUs with 256-bit vectors or wider; else
NumPy's bundled OpenBLAS where it is found, else numba's ``np.dot`` through SciPy's BLAS); exp, log1p and tanh are :mod:`npvae.kernels.vmath`'s, which LLVM vectorises.
Constant arguments of the shared functions are passed as ``np.int64(·)`` or ``np.bool_(·)``:
a bare literal makes numba compile a copy of the function for it (a slower first start);
except :func:`gaussian`'s, whose literal mode lets LLVM drop the branches from its
per-element loop (measured: 16-64-64-4 steps 7% faster).  No loop here is compiled with ``reassoc`` (it would undo vmath's careful rounding); the
sums that want it (a row's negative log-likelihood) are separate functions.  Adam is the
engine's own kernel (``numba_impl.adam_rows``).

Layer lists (numba typed lists, all in one order): the encoder's stages, the μ head, the v
head, the decoder's stages, the output head(s).  ``H[k]`` is stage k's output (B, n_out),
``dH[k]`` the gradient of the loss with respect to it, and stage k reads stage k − 1's
output; except that a gated dense layer is two stages, its gate (code GATE: ``H[k]`` holds
g = σ(x V + c), ``dH[k]`` dL/dĝ) and then its linear part (code GATED: ``H[k + 1]`` holds the
layer's output h = (x W + b) ⊙ g), both reading the layer's input.  The last stage of a chain
is never a GATE, so the encoder's (decoder's) output is always its last stage's H.

Likelihood codes: 0 Bernoulli (logits), 1 Gaussian with fixed ln σ² (``lik_logvar``),
2 Gaussian with a per-example ln σ² head (a second output head), 3 Gaussian with a learned
ln σ² per dimension (the vector ``lik_logvar``, its gradient into ``lik_dlogvar``), 4 the
continuous Bernoulli (logits).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ..activations import activation_backward_bias_grad_, bias_activation_
from ..layers import gated_dense_backward_, gated_dense_forward_
from ..likelihoods import (bernoulli_log_lik_row_, bernoulli_nll_, continuous_bernoulli_nll_, gaussian_log_lik_row_,
                           gaussian_nll_, row_log_lik)
from ..optim import adam_update_, sgd_update_
from ..importance import log_mean_exp_
from ..posterior import log_prior_over_posterior_, reparametrize_kl_, reparametrize_kl_backward_
from .codes import IDENTITY
from . import blas, vmath
from .blas import gemm, gemm_acc
from .blas import SOURCE_ID as BLAS_SOURCE_ID
from .jit import ELEMENTWISE, jit, sources_id
from .sums import add_partials, row_sums, sum_squares

BERNOULLI, GAUSSIAN_FIXED, GAUSSIAN_PER_EXAMPLE, GAUSSIAN_LEARNED, CONTINUOUS_BERNOULLI = 0, 1, 2, 3, 4
# what a step does after its gradient: nothing (the gradient alone), Adam's or SGD's update
NO_UPDATE, ADAM, SGD = 0, 1, 2
# the encoder's gradient estimator of the importance-weighted step (npvae.engine.iwae_step)
PLAIN, DREG, STL = 0, 1, 2
# a gated dense layer (npvae.layers.GatedDense) is two stages in the lists, both reading the
# layer's input: the gate's product (code GATE; its H holds g = σ(x V + c)), then the linear
# part (code GATED; its H holds the layer's output h = (x W + b) ⊙ g)
GATE, GATED = 100, 101
# parameters below which the gradient reduction and Adam run on the calling thread (a model
# size, not a thread count: the sums' order, and so the result, depends on it alone)
SERIAL_BELOW = 1 << 16

# compiled code calls one of three products (npvae.kernels.blas), and is cached per product
# (npvae's own kernel: per vector width and version of its source and blas.py's, inlined here)
# (and of the sources of the kernels it links in from other files: numba checks a cached
# function's own file only, so a change to vmath.py alone would otherwise load stale code)
CACHE = "blas-" + blas.BLAS + (f"-{BLAS_SOURCE_ID}" if blas.BLAS == "npvae" else "") + f"-{sources_id()}"

# the kernels' arithmetic (npvae.kernels.jit.ELEMENTWISE: the same rounding on every CPU)
_elementwise = jit(cache_subfolder=CACHE, **ELEMENTWISE)


@_elementwise
def add_into(a, b):
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            a[i, j] += b[i, j]


@_elementwise
def scale(a, s):
    for i in range(a.shape[0]):
        a[i] = a[i] * s


@_elementwise
def gather_binarize(X, rows, u, dynamic, xb):
    """xb ← X[rows], then xb ← [u < xb] when dynamic."""
    for i in range(rows.shape[0]):
        r = rows[i]
        for j in range(X.shape[1]):
            xv = X[r, j]
            if dynamic:
                xv = 1.0 if u[i, j] < xv else 0.0
            xb[i, j] = xv


@_elementwise
def chain_forward(h, Ws, bs, acts, H, k0, k1, r0, r1):
    """Stages k0..k1−1 on rows r0:r1: H[k] ← f(h W + b) (a GATE and its GATED partner: the
    gated layer's g and h); returns the last output (or h)."""
    for k in range(k0, k1):
        y = H[k][r0:r1]
        gemm(h, Ws[k], y)
        act = acts[k]
        if act == GATE:  # the gate's product; its partner, the next stage, reads the same h
            continue
        if act == GATED:
            gated_dense_forward_(y, bs[k], H[k - 1][r0:r1], bs[k - 1])
        else:
            bias_activation_(y, bs[k], act)
        h = y
    return h


@_elementwise
def heads_forward(h, Ws, bs, H, k0, n, r0, r1):
    """The n linear heads from stage k0 on, all reading h."""
    for k in range(k0, k0 + n):
        y = H[k][r0:r1]
        gemm(h, Ws[k], y)
        bias_activation_(y, bs[k], np.int64(IDENTITY))


@_elementwise
def chain_backward(Ws, GWs, Gbs, acts, H, dH, k0, k1, hin0, dx0, need_dx0, r0, r1):
    """Back through stages k1−1..k0 on rows r0:r1, from dH[k1−1]: each stage's weight and
    bias gradients, and dL/d(input) into the previous stage's dH (or dx0 for the first, when
    needed).  A GATED stage k takes its GATE k − 1 along: dx = da Wᵀ + dĝ Vᵀ."""
    k = k1 - 1
    while k >= k0:
        d = dH[k][r0:r1]
        gated = acts[k] == GATED
        kin = k - 2 if gated else k - 1  # the stage whose output is this one's input
        dg = dH[k - 1][r0:r1] if gated else d
        if gated:
            gated_dense_backward_(d, H[k][r0:r1], H[k - 1][r0:r1], dg, Gbs[k], Gbs[k - 1])
        else:
            activation_backward_bias_grad_(d, H[k][r0:r1], acts[k], Gbs[k])
        hin = H[kin][r0:r1] if kin >= k0 else hin0
        gemm(hin.T, d, GWs[k])
        if gated:
            gemm(hin.T, dg, GWs[k - 1])
        if kin >= k0 or need_dx0:
            dx = dH[kin][r0:r1] if kin >= k0 else dx0
            gemm(d, Ws[k].T, dx)
            if gated:
                gemm_acc(dg, Ws[k - 1].T, dx)
        k = kin


@_elementwise
def heads_backward(h, Ws, GWs, Gbs, H, k0, n, dh, tmp, r0, r1):
    """The n linear heads from stage k0 on (their gradients written over H[k] rows): the
    weight and bias gradients, and dL/dh = Σ_heads d Wᵀ into dh (tmp a scratch of its shape)."""
    for k in range(k0, k0 + n):
        d = H[k][r0:r1]
        activation_backward_bias_grad_(d, d, np.int64(IDENTITY), Gbs[k])
        gemm(h.T, d, GWs[k])
        if k == k0:
            gemm(d, Ws[k].T, dh)
        else:
            gemm(d, Ws[k].T, tmp)
            add_into(dh, tmp)


@_elementwise
def likelihood_rows(lik, out, x, w, terms, nll, H, io, r0, r1, lik_logvar, lik_dlogvar):
    """−ln p(x|z) per row into nll (float64) and its gradient, weight w, over the outputs."""
    wr = np.full(out.shape[0], w)
    if lik == BERNOULLI:
        bernoulli_nll_(out, x, wr, terms)
    elif lik == CONTINUOUS_BERNOULLI:
        continuous_bernoulli_nll_(out, x, wr, terms)
    elif lik == GAUSSIAN_FIXED:
        gaussian_nll_(out, x, lik_logvar.reshape((1, -1)), False, wr, terms, lik_dlogvar, 0)
    elif lik == GAUSSIAN_PER_EXAMPLE:
        gaussian_nll_(out, x, H[io + 1][r0:r1], True, wr, terms, lik_dlogvar, 2)
    else:
        gaussian_nll_(out, x, lik_logvar.reshape((1, -1)), False, wr, terms, lik_dlogvar, 1)
    row_sums(terms, nll)


@_elementwise
def forward_backward(X, rows, U, E, dynamic, Ws, bs, GWs, Gbs, acts, n_enc, n_dec, H, dH, xb, z, std, kl,
                     terms, nll, tmp_dec, tmp_enc, lik, lik_logvar, lik_dlogvar, beta, w, r0, r1, free_bits):
    """One ELBO step's forward and backward pass over the batch rows r0:r1 (every buffer is
    the whole batch's, sliced here; rows, U, E this step's).  The weight and bias gradients
    of these rows go to GWs, Gbs (and a learned ln σ²'s to lik_dlogvar): the gradients
    themselves, or one block's partial sums.  w = 1/B of the whole batch.  Returns the rows'
    Σ (−ln p(x|z) + β KL), Σ −ln p(x|z) and Σ KL.

    Free bits λ > 0 (the whole batch in one block: the floor is on the batch means): the
    objective's KL term is Σ_j max(λ, KL̄_j), KL̄_j the batch mean of dimension j, and
    dimension j's KL gradient is masked by [KL̄_j > λ] (docs/math.md, "Free bits")."""
    iv = n_enc + 1
    d0 = n_enc + 2
    io = d0 + n_dec
    n_out = len(Ws) - io
    x = xb[r0:r1]
    gather_binarize(X, rows[r0:r1], U[r0:r1], dynamic, x)
    eps = E[0][r0:r1]
    zr, sr, klr, nr = z[r0:r1], std[r0:r1], kl[r0:r1], nll[r0:r1]
    h_enc = chain_forward(x, Ws, bs, acts, H, np.int64(0), n_enc, r0, r1)
    heads_forward(h_enc, Ws, bs, H, n_enc, np.int64(2), r0, r1)
    mu, lv = H[n_enc][r0:r1], H[iv][r0:r1]
    J = mu.shape[1]
    kl_dim = np.empty(J)
    reparametrize_kl_(mu, lv, E[:, r0:r1], zr, sr, klr, kl_dim)
    h_dec = chain_forward(zr, Ws, bs, acts, H, d0, io, r0, r1)
    heads_forward(h_dec, Ws, bs, H, io, n_out, r0, r1)
    likelihood_rows(lik, H[io][r0:r1], x, w, terms[r0:r1], nr, H, io, r0, r1, lik_logvar, lik_dlogvar)
    rec = 0.0
    klsum = 0.0
    for i in range(r1 - r0):
        rec += nr[i]
        klsum += klr[i]
    mask = np.ones(J)
    kl_objective = klsum  # the objective's KL term, summed over the rows
    if free_bits > 0.0:
        floored = 0.0
        for j in range(J):
            mean = kl_dim[j] * w
            mask[j] = 1.0 if mean > free_bits else 0.0
            floored += max(free_bits, mean)
        kl_objective = floored / w
    # backward; dL/dz shares dμ's buffer: reparam_kl_backward reads it before writing dμ
    dmu, dlv = dH[n_enc][r0:r1], dH[iv][r0:r1]
    dh = dH[io - 1][r0:r1] if n_dec > 0 else dmu
    heads_backward(h_dec, Ws, GWs, Gbs, H, io, n_out, dh, tmp_dec[r0:r1], r0, r1)
    chain_backward(Ws, GWs, Gbs, acts, H, dH, d0, io, zr, dmu, np.bool_(True), r0, r1)
    reparametrize_kl_backward_(dmu, eps, sr, mu, lv, beta * w, mask, dlv)
    posterior_backward(x, h_enc, Ws, GWs, Gbs, acts, H, dH, n_enc, tmp_enc, r0, r1)
    return rec + beta * kl_objective, rec, klsum


@_elementwise
def posterior_backward(x, h_enc, Ws, GWs, Gbs, acts, H, dH, n_enc, tmp_enc, r0, r1):
    """From dμ, dv (dH[n_enc], dH[n_enc + 1] rows) through the heads and the encoder."""
    iv = n_enc + 1
    dmu, dlv = dH[n_enc][r0:r1], dH[iv][r0:r1]
    activation_backward_bias_grad_(dmu, dmu, np.int64(IDENTITY), Gbs[n_enc])
    activation_backward_bias_grad_(dlv, dlv, np.int64(IDENTITY), Gbs[iv])
    gemm(h_enc.T, dmu, GWs[n_enc])
    gemm(h_enc.T, dlv, GWs[iv])
    if n_enc > 0:
        de = dH[n_enc - 1][r0:r1]
        te = tmp_enc[r0:r1]
        gemm(dmu, Ws[n_enc].T, de)
        gemm(dlv, Ws[iv].T, te)
        add_into(de, te)
        chain_backward(Ws, GWs, Gbs, acts, H, dH, np.int64(0), n_enc, x, x, np.bool_(False), r0, r1)


@_elementwise
def iwae_forward_backward(X, rows, U, E, dynamic, Ws, bs, GWs, Gbs, acts, n_enc, n_dec, H, dH, xb, z, std, kl,
                          terms, nll, tmp_dec, tmp_enc, lik, lik_logvar, lik_dlogvar, w, r0, r1, K, xk, lw, dzk,
                          est):
    """One importance-weighted step (K samples per example) over the batch rows r0:r1, as
    :func:`npvae.engine.iwae_step`: L_K = ln (1/K) Σ_k w_k, ln w_k = ln p(x|z_k) + ln p(z_k)
    − ln q(z_k|x); gradient Σ_k w̃_k ∂ ln w_k/∂θ with ε fixed, w̃ the normalised weights.
    The decoder runs on K·B rows, example i's samples at rows iK..iK+K−1 (z, xk, terms,
    nll, dzk, the decoder's buffers); E is (K, B, J); lw (B, K) float64.  Returns the rows'
    Σ −L_K, Σ_k w̃_k (−ln p(x|z_k)) and Σ KL.  (A learned ln σ² per dimension is not
    taken here: its gradient would need the weights before they exist.)  ``est``: the
    encoder's gradient, PLAIN (reparametrised), DREG (weights w̃², no score term) or STL (no
    score term), the path derivative through ln q being −ε/σ (see the engine's iwae_step)."""
    iv = n_enc + 1
    d0 = n_enc + 2
    io = d0 + n_dec
    n_out = len(Ws) - io
    J = std.shape[1]
    D = xb.shape[1]
    R0, R1 = r0 * K, r1 * K
    x = xb[r0:r1]
    gather_binarize(X, rows[r0:r1], U[r0:r1], dynamic, x)
    h_enc = chain_forward(x, Ws, bs, acts, H, np.int64(0), n_enc, r0, r1)
    heads_forward(h_enc, Ws, bs, H, n_enc, np.int64(2), r0, r1)
    mu, lv = H[n_enc][r0:r1], H[iv][r0:r1]
    sr = std[r0:r1]
    reparametrize_kl_(mu, lv, E[:, r0:r1], z[R0:R1], sr, kl[r0:r1], np.empty(J))
    klsum = 0.0
    for i in range(r1 - r0):
        klsum += kl[r0 + i]
        for k in range(K):
            r = (r0 + i) * K + k
            for j in range(D):
                xk[r, j] = x[i, j]
    zr = z[R0:R1]
    h_dec = chain_forward(zr, Ws, bs, acts, H, d0, io, R0, R1)
    heads_forward(h_dec, Ws, bs, H, io, n_out, R0, R1)
    # the likelihood with weight 1: −ln p(x|z_k) per row, and its unweighted gradient
    nr = nll[R0:R1]
    likelihood_rows(lik, H[io][R0:R1], xk[R0:R1], 1.0, terms[R0:R1], nr, H, io, R0, R1, lik_logvar,
                    lik_dlogvar)
    # ln w, the bound and the normalised weights, in float64
    loss = 0.0
    rec = 0.0
    for i in range(r1 - r0):
        row = lw[r0 + i]
        for k in range(K):
            r = (r0 + i) * K + k
            row[k] = -nll[r] + log_prior_over_posterior_(z, r, E, k, r0 + i, lv, i)
        loss -= log_mean_exp_(row)  # row ← the normalised weights w̃_k
        for k in range(K):
            r = (r0 + i) * K + k
            rec += row[k] * nll[r]
            row[k] = row[k] * w  # the row's weight in the gradient: w̃_k / B
    # the likelihood's gradient rows (and a per-example ln σ² head's) times their weight
    for i in range(r1 - r0):
        for k in range(K):
            r = (r0 + i) * K + k
            rho = lw[r0 + i, k]
            for h in range(io, io + n_out):
                g = H[h]
                for j in range(g.shape[1]):
                    g[r, j] = g[r, j] * rho
    # backward: the decoder on K·B rows, to dL/dz (in the heads' scratch rows: dzk)
    dz_rows = dzk[R0:R1]
    dh = dH[io - 1][R0:R1] if n_dec > 0 else dz_rows
    heads_backward(h_dec, Ws, GWs, Gbs, H, io, n_out, dh, tmp_dec[R0:R1], R0, R1)
    chain_backward(Ws, GWs, Gbs, acts, H, dH, d0, io, zr, dz_rows, np.bool_(True), R0, R1)
    # −∂ ln p(z)/∂z = z, weighted; then through z = μ + σ ε, summed over the K samples
    dmu, dlv = dH[n_enc][r0:r1], dH[iv][r0:r1]
    for i in range(r1 - r0):
        for j in range(J):
            a = 0.0
            b = 0.0
            for k in range(K):
                r = (r0 + i) * K + k
                rho = lw[r0 + i, k]
                d = dz_rows[r - R0, j] + rho * z[r, j]
                if est != PLAIN:  # the path derivative through ln q: −ε/σ, weighted
                    d -= rho * (E[k, r0 + i, j] / sr[i, j])
                    if est == DREG:  # weights w̃² instead of w̃
                        d *= rho / w
                a += d
                b += d * E[k, r0 + i, j]
            dmu[i, j] = a
            # the score term of ln q at fixed ε, −Σ_k w̃_k ½ / B (Σ_k w̃_k = 1); DReG and STL drop it
            dlv[i, j] = 0.5 * b * sr[i, j] - (0.5 * w if est == PLAIN else 0.0)
    posterior_backward(x, h_enc, Ws, GWs, Gbs, acts, H, dH, n_enc, tmp_enc, r0, r1)
    return loss, rec, klsum


@_elementwise
def update_parameters(update, P, G, M, V, c):
    """The optimizer's update over flat buffers: ADAM, c its nine constants
    (:func:`npvae.optim.adam_constants`), M, V its moments; SGD, c = (η, μ, Nesterov 1 or 0, λ),
    M its momentum buffer (empty without momentum)."""
    if update == ADAM:
        adam_update_(P, G, M, V, c)
    else:
        sgd_update_(P, G, M, c[0], c[1], c[2] != 0, c[3])


@_elementwise
def record(s, loss, rec, klsum, B, sq, losses, recs, kls, norms):
    """Record step s's means and gradient norm (from Σ g²); True when they are finite."""
    losses[s] = loss / B
    recs[s] = rec / B
    kls[s] = klsum / B
    norms[s] = math.sqrt(sq)
    return math.isfinite(losses[s]) and math.isfinite(norms[s])


@_elementwise
def clip_factor(norm, clip):
    """min(1, clip/‖g‖), 1 without clipping."""
    return clip / norm if clip > 0 and norm > clip else 1.0


@_elementwise
def step_block(K, est, free_bits, X, rows, U, E, dynamic, Ws, bs, GWs, Gbs, acts, n_enc, n_dec, H, dH, xb, z, std, kl, terms, nll,
               tmp_dec, tmp_enc, lik, lik_logvar, lik_dlogvar, beta, w, r0, r1, xk, lw, dzk):
    """The ELBO step (``lw`` None; E (1, B, J)) or the K-sample importance-weighted step
    (E (K, B, J)) over the rows r0:r1; returns their Σ loss, Σ reconstruction, Σ KL.

    ``lw is None`` is decided when numba compiles: a None argument prunes the other branch,
    so an ELBO run does not compile the importance-weighted step (3 s of a cold start)."""
    if lw is None:
        return forward_backward(X, rows, U, E, dynamic, Ws, bs, GWs, Gbs, acts, n_enc, n_dec, H, dH, xb, z, std,
                                kl, terms, nll, tmp_dec, tmp_enc, lik, lik_logvar, lik_dlogvar, beta, w, r0, r1,
                                free_bits)
    return iwae_forward_backward(X, rows, U, E, dynamic, Ws, bs, GWs, Gbs, acts, n_enc, n_dec, H, dH, xb, z, std,
                                 kl, terms, nll, tmp_dec, tmp_enc, lik, lik_logvar, lik_dlogvar, w, r0, r1, K, xk,
                                 lw, dzk, est)


@jit(cache_subfolder=CACHE, **ELEMENTWISE)
def adam_steps(K, est, free_bits, X, idx, U, E, dynamic, Ws, bs, GWs, Gbs, acts, n_enc, n_dec, H, dH, xb, z, std, kl,
               terms, nll, tmp_dec, tmp_enc, lik, lik_logvar, lik_dlogvar, xk, lw, dzk, betas, adam_c, clip,
               update, P, G, M, V, losses, recs, kls, norms):
    """Run S = len(idx) steps with Adam or SGD on one thread (BLAS may use its own): the ELBO
    (K = 0; xk, lw and dzk None) or the K-sample importance-weighted bound (xk (K B, D),
    lw (B, K), dzk (K B, J) its buffers).  Returns the number of steps done.

    X (N, D) the data, idx (S, B) the rows of each step, U (S, B, D) the binarisation
    uniforms, E (S, max(K, 1), B, J) the ε of each step, betas (S,) the KL weights, adam_c
    (S, 9) each step's optimizer constants, clip the gradient-norm bound (0:
    none); ``update`` ADAM or SGD, the optimizer (:func:`update_parameters`, ``adam_c`` its
    constants), or NO_UPDATE: the gradients in G and the step's numbers only, no update (the
    loss and gradient of :class:`npvae.compiled.Gradients`).  A step whose loss or gradient
    norm is not finite stops the run before its update, and its index is returned (losses
    and norms hold its values)."""
    S, B = idx.shape
    for s in range(S):
        loss, rec, klsum = step_block(K, est, free_bits, X, idx[s], U[s], E[s], dynamic, Ws, bs, GWs, Gbs, acts, n_enc, n_dec, H,
                                      dH, xb, z, std, kl, terms, nll, tmp_dec, tmp_enc, lik, lik_logvar,
                                      lik_dlogvar, betas[s], 1.0 / B, 0, B, xk, lw, dzk)
        if not record(s, loss, rec, klsum, B, sum_squares(G), losses, recs, kls, norms):
            return s
        if update == NO_UPDATE:
            continue
        f = clip_factor(norms[s], clip)
        if f < 1.0:
            scale(G, f)
        update_parameters(update, P, G, M, V, adam_c[s])
    return S


@jit(cache_subfolder=CACHE, parallel=True, **ELEMENTWISE)
def adam_steps_blocks(K, est, free_bits, X, idx, U, E, dynamic, Ws, bs, GWs_t, Gbs_t, acts, n_enc, n_dec, H, dH, xb, z, std,
                      kl, terms, nll, tmp_dec, tmp_enc, lik, lik_logvar, dlogvar_t, xk, lw, dzk, betas, adam_c,
                      clip, update, P, G, partials, M, V, losses, recs, kls, norms):
    """:func:`adam_steps` with the batch split into T = len(GWs_t) row blocks, run in
    parallel on numba's threads, each block's products on single-threaded BLAS.  Block 0
    writes the gradients (GWs_t[0], Gbs_t[0], dlogvar_t[0] view G), block t > 0 its partial
    sums (views of ``partials[t − 1]``, laid out as G); they are added in a fixed order, so
    the result depends neither on timing nor on how many threads ran the blocks."""
    S, B = idx.shape
    T = len(GWs_t)
    n = G.shape[0]
    C = T * 4  # chunks of the flat buffers
    loss_t = np.empty(T)
    recs_t = np.empty(T)
    kls_t = np.empty(T)
    sq_c = np.empty(C)
    for s in range(S):
        rows, u, e = idx[s], U[s], E[s]
        for tu in numba.prange(T):
            t = np.int64(tu)  # (prange's index is unsigned)
            r0 = t * B // T
            r1 = (t + 1) * B // T
            loss_t[t], recs_t[t], kls_t[t] = step_block(
                K, est, free_bits, X, rows, u, e, dynamic, Ws, bs, GWs_t[t], Gbs_t[t], acts, n_enc, n_dec, H, dH, xb, z, std, kl,
                terms, nll, tmp_dec, tmp_enc, lik, lik_logvar, dlogvar_t[t], betas[s], 1.0 / B, r0, r1, xk, lw, dzk)
        if n < SERIAL_BELOW:  # a small model: a parallel region costs more than it saves
            sq_c[:] = 0.0
            sq_c[0] = add_partials(G, partials)
        else:
            for c in numba.prange(C):
                a = np.int64(c) * n // C
                b = (np.int64(c) + 1) * n // C
                sq_c[c] = add_partials(G[a:b], partials[:, a:b])
        loss = 0.0
        rec = 0.0
        klsum = 0.0
        for t in range(T):
            loss += loss_t[t]
            rec += recs_t[t]
            klsum += kls_t[t]
        sq = 0.0
        for c in range(C):
            sq += sq_c[c]
        if not record(s, loss, rec, klsum, B, sq, losses, recs, kls, norms):
            return s
        if update == NO_UPDATE:
            continue
        f = clip_factor(norms[s], clip)
        if n < SERIAL_BELOW:
            if f < 1.0:
                scale(G, f)
            update_parameters(update, P, G, M, V, adam_c[s])
        else:
            for c in numba.prange(C):
                a = np.int64(c) * n // C
                b = (np.int64(c) + 1) * n // C
                if f < 1.0:
                    scale(G[a:b], f)
                update_parameters(update, P[a:b], G[a:b], M[a:b], V[a:b], adam_c[s])
    return S


# rows of the output head computed and consumed at a time, while they are in cache
LOG_P_ROWS = 64
# rows of the decoder's hidden layers computed at a time (a multiple of LOG_P_ROWS)
DEC_ROWS = 256


@jit(cache_subfolder=CACHE, parallel=True, **ELEMENTWISE)
def log_weights(x, E, Ws, bs, acts, n_enc, n_dec, H, std, z, terms, le, lik, lik_logvar, lw, T):
    """ln w[k, i] = ln p(x_i|z_ki) + ln p(z_ki) − ln q(z_ki|x_i), z_ki = μ_i + σ_i ε[k, i],
    in float64, for x (B, D) and E (K, B, J): the encoder once, the decoder on K·B rows
    (example i's samples at rows iK..iK+K−1), in T blocks of examples run in parallel, each
    on single-threaded BLAS.  The decoder goes DEC_ROWS rows at a time, and its output head
    and the likelihood LOG_P_ROWS rows at a time, so that each piece is read back from cache:
    the decoder's H and z (T·DEC_ROWS, J) hold T pieces of DEC_ROWS rows and the output
    head's T pieces of LOG_P_ROWS rows (block t's at row t·DEC_ROWS, t·LOG_P_ROWS), not K·B
    rows, so the scratch does not depend on K; std is (B, J); terms (T, D) float64 and le
    (T, 2, D) in the model's dtype are each block's likelihood scratch."""
    K, B, J = E.shape
    d0 = n_enc + 2
    io = d0 + n_dec
    n_out = len(Ws) - io
    for tu in numba.prange(T):
        t = np.int64(tu)
        r0 = t * B // T
        r1 = (t + 1) * B // T
        R0, R1 = r0 * K, r1 * K
        h_enc = chain_forward(x[r0:r1], Ws, bs, acts, H, np.int64(0), n_enc, r0, r1)
        heads_forward(h_enc, Ws, bs, H, n_enc, np.int64(2), r0, r1)
        mu, lv = H[n_enc][r0:r1], H[n_enc + 1][r0:r1]
        for i in range(r1 - r0):
            for j in range(J):
                std[r0 + i, j] = vmath.exp(0.5 * lv[i, j])
        tr = terms[t]
        lin, ex = le[t, 0], le[t, 1]
        w0 = np.zeros(1)
        out = H[io]
        out2 = H[io + n_out - 1]  # a per-example ln σ² head, else the output itself (unused)
        p0 = t * LOG_P_ROWS  # block t's piece of the output head's rows
        q0 = t * DEC_ROWS  # and of the decoder's and z's rows
        for a0 in range(R0, R1, DEC_ROWS):
            a1 = min(a0 + DEC_ROWS, R1)
            for r in range(a0, a1):  # z of rows a0:a1 (example i = r // K, its sample r − iK)
                i = r // K
                k = r - i * K
                for j in range(J):
                    z[q0 + r - a0, j] = mu[i - r0, j] + std[i, j] * E[k, i, j]
            h_dec = chain_forward(z[q0:q0 + a1 - a0], Ws, bs, acts, H, d0, io, q0, q0 + a1 - a0)
            for a in range(a0, a1, LOG_P_ROWS):
                b = min(a + LOG_P_ROWS, a1)
                heads_forward(h_dec[a - a0:b - a0], Ws, bs, H, io, n_out, p0, p0 + b - a)
                for r in range(a, b):
                    i = r // K
                    ro = p0 + r - a
                    if lik == BERNOULLI:
                        bernoulli_log_lik_row_(out, ro, x, i, lin, ex)
                        log_px = row_log_lik(True, tr, lin, ex)
                    elif lik == CONTINUOUS_BERNOULLI:  # its kernel's terms (the gradient is not used)
                        continuous_bernoulli_nll_(out[ro:ro + 1], x[i:i + 1], w0, tr.reshape((1, -1)))
                        log_px = -row_log_lik(False, tr, lin, ex)
                    else:
                        gaussian_log_lik_row_(lik == GAUSSIAN_PER_EXAMPLE, out, out2, ro, x, i, lik_logvar, tr)
                        log_px = row_log_lik(False, tr, lin, ex)
                    k = r - i * K
                    lw[k, i] = log_px + log_prior_over_posterior_(z, q0 + r - a0, E, k, i, lv, i - r0)
