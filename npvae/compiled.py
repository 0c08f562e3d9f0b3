"""The compiled training path: chunks of training steps with Adam, run by one numba call each.

``fit`` uses it when the model qualifies (:func:`unsupported` returns None): every layer a
built-in :class:`npvae.layers.Dense` or :class:`npvae.layers.GatedDense`, a Bernoulli or Gaussian likelihood, the ELBO without
free bits or the importance-weighted bound (not with a learned σ), an :class:`npvae.Adam` or
:class:`npvae.AdamW` optimizer, and the numba backend.  Anything else (a user's own layer,
free bits, SGD, the continuous Bernoulli, the NumPy backend) takes the engine path, step by
step: correct, just slower.

The random numbers are drawn in Python, from the same generator and in the same order as
the engine path draws them (per step: the binarisation uniforms, then ε), so a chunk of S
steps consumes exactly what S engine steps would.  Each step computes what
:func:`npvae.engine.elbo_step` (or ``iwae_step``) computes, but sums in another order and evaluates exp, log1p
and tanh with :mod:`npvae.kernels.vmath`, so the two paths agree to rounding (tested:
1e-12 relative in float64, 1e-5 in float32), not bit for bit.  A run takes one path from
start to end, and is bit-identical to itself from run to run and across resume.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from . import kernels, threads
from .layers import Dense, GatedDense
from .likelihoods import Bernoulli, Gaussian
from .optim import Adam, flat_base

# steps per call: Python is entered once per chunk; a Ctrl-C waits for the chunk to end
CHUNK = 16
# row blocks of a batch, run in parallel (see AdamSteps.blocks_for)
BLOCKS = 2
# a batch is split only when each block has at least SPLIT_ROWS rows and the step at least
# SPLIT_WORK multiply-adds a pass (rows × parameters): below, the second thread's wake-up
# and the blocks' gradient sum cost what the split saves (benchmarks/README.md, "Row blocks")
SPLIT_ROWS = 24
SPLIT_WORK = 1 << 20


def unsupported(model, *, objective="elbo", free_bits=0.0, optimizer=None) -> str | None:
    """None when the compiled path can train ``model``; otherwise why not (one phrase)."""
    if kernels.get_backend() != "numba":
        return "the NumPy backend is selected"
    if objective not in ("elbo", "iwae", "iwae-dreg", "iwae-stl"):
        return f"the {objective} objective runs on the engine path"
    if free_bits > 0:
        return "free bits run on the engine path"
    if optimizer is not None and not isinstance(optimizer, Adam):
        return f"{type(optimizer).__name__} runs on the engine path"
    plan = model.plan
    for s in [*plan.encoder, *plan.decoder]:
        if type(s.layer) not in (Dense, GatedDense):
            return f"{s.prefix} is a {type(s.layer).__name__}, not a built-in Dense or GatedDense"
    lik = model.likelihood
    if not isinstance(lik, (Bernoulli, Gaussian)) or type(lik) not in (Bernoulli, Gaussian):
        return f"the {type(lik).__name__} likelihood runs on the engine path"
    if objective != "elbo" and isinstance(lik, Gaussian) and lik.sigma == "learned":
        return "IWAE with a learned σ runs on the engine path"
    if flat_base(model.params.values()) is None:
        return "the parameters are not views of one flat buffer"
    return None


def stage_list(plan):
    """The compiled step's stages in order, each (weight key, bias key, code, n_out): the
    encoder's, the μ and v heads, the decoder's, the output heads; a GatedDense is two (its
    gate's V, c with code GATE, then its W, b with code GATED: see npvae.kernels.step).
    Returns (stages, number of the encoder's, number of the decoder's)."""
    from .kernels import step

    def expand(stages):
        out = []
        for s in stages:
            if type(s.layer) is GatedDense:
                out.append((f"{s.prefix}.V", f"{s.prefix}.c", step.GATE, s.n_out))
                out.append((f"{s.prefix}.W", f"{s.prefix}.b", step.GATED, s.n_out))
            else:
                out.append((*s.fused, s.n_out))
        return out
    enc, dec = expand(plan.encoder), expand(plan.decoder)
    return [*enc, *expand(plan.heads), *dec, *expand(plan.outputs)], len(enc), len(dec)


def _likelihood_code(lik, D, dtype):
    from .kernels import step
    logvar = np.zeros(D, dtype=dtype)
    if isinstance(lik, Bernoulli):
        return step.BERNOULLI, logvar
    if lik.sigma == "learned":
        return step.GAUSSIAN_LEARNED, None
    if lik.sigma == "per_example":
        return step.GAUSSIAN_PER_EXAMPLE, logvar
    logvar[:] = 2.0 * math.log(lik.sigma)
    return step.GAUSSIAN_FIXED, logvar


class AdamSteps:
    """Runs chunks of training steps with Adam on ``model`` in place: the ELBO, or with
    ``objective="iwae"`` the importance-weighted bound with ``n_samples`` = K.

    ``grads``: the gradient dict (views of one flat buffer, as :class:`npvae.train.TrainStep`
    makes them); ``opt_state``: the optimizer's state, whose moments are moved into flat
    buffers here if they are not already (the dict then holds views of them)."""

    def __init__(self, model, optimizer: Adam, opt_state: dict, grads: dict, *, dynamic_binarize=False,
                 objective="elbo", n_samples=1):
        import numba.typed

        from .kernels import step
        self._step = step
        reason = unsupported(model, optimizer=optimizer, objective=objective)
        if reason is not None:
            raise ValueError(f"the compiled path cannot train this model: {reason}")
        self.model, self.optimizer, self.state = model, optimizer, opt_state
        self.dynamic = bool(dynamic_binarize)
        self.K = int(n_samples) if objective != "elbo" else 0  # 0: the ELBO
        # the encoder's gradient estimator of the importance-weighted objectives
        self.estimator = {"iwae-dreg": step.DREG, "iwae-stl": step.STL}.get(objective, step.PLAIN)
        names = list(model.params)
        self.P = flat_base(model.params.values())
        self.G = flat_base(grads[k] for k in names)
        if self.G is None:
            raise ValueError("grads must be views of one flat buffer, in the parameters' order")
        self.M = self._flat_slot(opt_state, "m", names)
        self.V = self._flat_slot(opt_state, "v", names)
        stages, self.n_enc, self.n_dec = stage_list(model.plan)
        self.stages = stages

        def typed(arrays):
            out = numba.typed.List()
            for a in arrays:
                out.append(a)
            return out
        P, G = model.params, grads
        self.Ws = typed([P[s[0]] for s in stages])
        self.bs = typed([P[s[1]] for s in stages])
        self.GWs = typed([G[s[0]] for s in stages])
        self.Gbs = typed([G[s[1]] for s in stages])
        self.acts = np.array([s[2] for s in stages], dtype=np.int64)
        D, dt = model.n_inputs, model.dtype
        self.lik, logvar = _likelihood_code(model.likelihood, D, dt)
        if logvar is None:  # learned: the parameter and its gradient
            self.lik_logvar, self.lik_dlogvar = P["likelihood.logvar"], G["likelihood.logvar"]
        else:
            self.lik_logvar, self.lik_dlogvar = logvar, np.zeros(D, dtype=dt)
        self._bufs = {}
        self._typed = typed
        self._threads_cache = {}
        self.grads = {k: grads[k] for k in names}
        self.blocks = None

    def blocks_for(self, B) -> int:
        """The row blocks a batch of B rows is split into.  By default (``blocks`` None)
        BLOCKS when every block gets at least SPLIT_ROWS rows and a pass over the batch is at
        least SPLIT_WORK multiply-adds (B × parameters), else one: 16-64-64-4 at batch 64 runs
        as one block, 784-400-20 at 128 as two.  ``blocks`` set to a number asks for that many
        (at least 4 rows each).  It depends on the model and B alone, never on the machine's
        threads, so a run's numbers do not depend on where it runs: the blocks' gradients are
        added in one fixed order."""
        if self.blocks is not None:
            return max(1, min(int(self.blocks), B // 4))
        if B < BLOCKS * SPLIT_ROWS or B * self.P.size < SPLIT_WORK:
            return 1
        return BLOCKS

    def thread_settings(self, B) -> dict:
        """The thread limits the steps run under: the blocks on up to npvae's thread count
        for matrix products (:func:`npvae.set_threads`, ``blas``) numba threads, each calling
        its products (:func:`npvae.kernels.blas.gemm`) on one thread: one pool (OpenBLAS's own
        threads next to numba's are pathological).  One block: one numba thread (BLAS, where
        the products are OpenBLAS's, on its threads)."""
        P = self.blocks_for(B)
        if P == 1:
            return {}
        return {"blas": 1, "numba": max(1, min(P, threads.get_threads()["blas"], numba.config.NUMBA_NUM_THREADS))}

    def _per_thread(self, T):
        """Block t's gradient destinations: block 0 the gradients themselves, block t > 0
        views of partials[t − 1], laid out as the flat gradient buffer."""
        cached = self._threads_cache.get(T)
        if cached is None:
            import numba.typed
            partials = np.zeros((T - 1, self.G.size), dtype=self.G.dtype)
            GWs_t, Gbs_t, dlv_t = numba.typed.List(), numba.typed.List(), numba.typed.List()
            GWs_t.append(self.GWs)
            Gbs_t.append(self.Gbs)
            dlv_t.append(self.lik_dlogvar)
            for t in range(T - 1):
                views = {}
                offset = 0
                for name, g in self.grads.items():
                    views[name] = partials[t, offset:offset + g.size].reshape(g.shape)
                    offset += g.size
                GWs_t.append(self._typed([views[s[0]] for s in self.stages]))
                Gbs_t.append(self._typed([views[s[1]] for s in self.stages]))
                dlv_t.append(views["likelihood.logvar"] if "likelihood.logvar" in views
                             else np.zeros_like(self.lik_dlogvar))
            cached = self._threads_cache[T] = (GWs_t, Gbs_t, dlv_t, partials)
        return cached

    @staticmethod
    def _flat_slot(state, slot, names):
        arrays = [state[f"{slot}.{n}"] for n in names]
        base = flat_base(arrays)
        if base is None:
            base = np.concatenate([a.reshape(-1) for a in arrays]).astype(arrays[0].dtype, copy=False)
            offset = 0
            for n, a in zip(names, arrays):
                state[f"{slot}.{n}"] = base[offset:offset + a.size].reshape(a.shape)
                offset += a.size
        return base

    def _buffers(self, S, B):
        key = (S, B)
        bufs = self._bufs.get(key)
        if bufs is None:
            if len(self._bufs) >= 3:
                self._bufs.pop(next(iter(self._bufs)))
            m, dt = self.model, self.model.dtype
            e = lambda *shape: np.empty(shape, dtype=dt)
            K1 = max(self.K, 1)
            R = K1 * B  # the decoder's rows: K per example for IWAE
            d0 = self.n_enc + 2
            H = self._typed([e(B if k < d0 else R, s[3]) for k, s in enumerate(self.stages)])
            dH = self._typed([e(B if k < d0 else R, s[3]) for k, s in enumerate(self.stages)])
            plan, D, J = m.plan, m.n_inputs, m.n_latent
            bufs = dict(
                U=e(S, B, D) if self.dynamic else e(S, 1, 1), E=e(S, K1, B, J),
                H=H, dH=dH, xb=e(B, D), z=e(R, J), std=e(B, J), kl=np.empty(B), terms=e(R, D), nll=np.empty(R),
                tmp_dec=e(R, plan.h_dec), tmp_enc=e(B, plan.h_enc),
                xk=e(R, D) if self.K else None, lw=np.empty((B, K1)) if self.K else None,
                dzk=e(R, J) if self.K else None,
                adam_c=e(S, 9), betas=np.empty(S),
                losses=np.empty(S), recs=np.empty(S), kls=np.empty(S), norms=np.empty(S))
            self._bufs[key] = bufs
        return bufs

    def run(self, x, idx, rng, betas):
        """Run the steps whose rows are ``idx`` (S, B) on the data x (N, D), drawing from
        ``rng``; ``betas`` the S KL weights.  Returns (n_done, losses, recs, kls, norms), the
        last four float64 arrays of length S; n_done < S when step n_done's loss or gradient
        was not finite (that step made no update)."""
        S, B = idx.shape
        b = self._buffers(S, B)
        dt = self.model.dtype
        U, E = b["U"], b["E"]
        for s in range(S):  # the engine path's draws, in its order
            if self.dynamic:
                rng.random(out=U[s], dtype=dt)
            rng.standard_normal(out=E[s] if self.K else E[s, 0], dtype=dt)
        opt, st = self.optimizer, self.state
        t0 = int(st["step"])
        b1, b2 = opt.betas
        for s in range(S):
            t = t0 + s + 1
            lr = opt.lr(t - 1)
            decay = (1 - lr * opt.weight_decay) if (opt.weight_decay and opt.decoupled) else 1.0
            l2 = opt.weight_decay if (opt.weight_decay and not opt.decoupled) else 0.0
            b["adam_c"][s] = (lr / (1 - b1 ** t), b1, b2, 1 - b1, 1 - b2, 1 / (1 - b2 ** t), opt.eps, decay, l2)
        b["betas"][:] = betas
        clip = 0.0 if opt.clip_norm is None else float(opt.clip_norm)
        T = self.blocks_for(B)
        common = (self.K, self.estimator, x, idx, U, E, self.dynamic, self.Ws, self.bs)
        buffers = (b["H"], b["dH"], b["xb"], b["z"], b["std"], b["kl"], b["terms"], b["nll"], b["tmp_dec"],
                   b["tmp_enc"], self.lik, self.lik_logvar)
        # None for the ELBO: numba then compiles the ELBO step alone (see step.step_block)
        iwae = (b["xk"], b["lw"], b["dzk"]) if self.K else (None, None, None)
        outs = (b["losses"], b["recs"], b["kls"], b["norms"])
        if T <= 1:
            n_done = self._step.adam_steps(
                *common, self.GWs, self.Gbs, self.acts, self.n_enc, self.n_dec, *buffers, self.lik_dlogvar, *iwae,
                b["betas"], b["adam_c"], clip, self.P, self.G, self.M, self.V, *outs)
        else:
            GWs_t, Gbs_t, dlv_t, partials = self._per_thread(T)
            with threads.limited(**self.thread_settings(B)):  # a no-op inside fit, which set them
                n_done = self._step.adam_steps_blocks(
                    *common, GWs_t, Gbs_t, self.acts, self.n_enc, self.n_dec, *buffers, dlv_t, *iwae,
                    b["betas"], b["adam_c"], clip, self.P, self.G, partials, self.M, self.V, *outs)
        if n_done:
            st["step"] = np.asarray(t0 + n_done, dtype=np.int64)
            st["grad_norm"] = np.asarray(b["norms"][n_done - 1], dtype=np.float64)
        return n_done, b["losses"], b["recs"], b["kls"], b["norms"]


def log_weights(model, x, eps):
    """ln w (K, B) = ln p(x|z_k) + ln p(z_k) − ln q(z_k|x) in float64 for x (B, D) (checked,
    in the model's dtype) and eps (K, B, J), by one compiled call: what
    :func:`npvae.engine.log_weights` computes, to rounding.  For a model the compiled path
    takes (:func:`unsupported` is None)."""
    import numba.typed

    from .kernels import step
    K, B, J = eps.shape
    dt, D = model.dtype, model.n_inputs
    stages, n_enc, n_dec = stage_list(model.plan)
    d0 = n_enc + 2

    def typed(arrays):
        out = numba.typed.List()
        for a in arrays:
            out.append(a)
        return out
    P = model.params
    lik, logvar = _likelihood_code(model.likelihood, D, dt)
    if logvar is None:
        logvar = P["likelihood.logvar"]
    T = max(1, min(BLOCKS, B))
    # the scratch: the decoder goes in pieces (see step.log_weights), so its size does not
    # depend on K
    io = d0 + n_dec
    rows = lambda k: B if k < d0 else T * (step.DEC_ROWS if k < io else step.LOG_P_ROWS)
    H = typed([np.empty((rows(k), s[3]), dt) for k, s in enumerate(stages)])
    lw = np.empty((K, B))
    with threads.limited(blas=1, numba=max(1, min(T, threads.get_threads()["blas"], numba.config.NUMBA_NUM_THREADS))):
        step.log_weights(np.ascontiguousarray(x, dtype=dt), np.ascontiguousarray(eps, dtype=dt),
                         typed([P[s[0]] for s in stages]), typed([P[s[1]] for s in stages]),
                         np.array([s[2] for s in stages], dtype=np.int64), n_enc, n_dec, H, np.empty((B, J), dt),
                         np.empty((T * step.DEC_ROWS, J), dt), np.empty((T, 2, D)), lik, logvar, lw, T)
    return lw
