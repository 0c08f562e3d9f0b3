"""The compiled training path: chunks of training steps, run by one numba call each.

``fit`` uses it when the model qualifies (:func:`unsupported` returns None): every layer a
built-in :class:`npvae.layers.Dense` or :class:`npvae.layers.GatedDense`, a Bernoulli,
Gaussian or continuous Bernoulli likelihood, the ELBO (with or without free bits) or the
importance-weighted bound (not with a learned σ), an :class:`npvae.Adam`,
:class:`npvae.AdamW` or :class:`npvae.SGD` optimizer, and the numba backend.  Anything else
(a user's own layer, IWAE with a learned σ, the NumPy backend; under MPI, see
:func:`npvae.fit`) takes the engine path, step by step: correct, just slower.

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
import operator
import sys
import weakref

import numba
import numba.typed
import numpy as np

from . import kernels, threads
from .kernels import arrays, blas, step
from .layers import Dense, GatedDense
from .likelihoods import Bernoulli, ContinuousBernoulli, Gaussian
from .kernels.jit import jit
from .optim import SGD, Adam, AdamW, adam_constants, flat_base
from .validation import positive_int

# steps per call: Python is entered once per chunk; a Ctrl-C waits for the chunk to end
CHUNK = 16
# row blocks of a batch, run in parallel (see Steps.blocks_for)
BLOCKS = 2
# a batch is split only when each block has at least SPLIT_ROWS rows and the step at least
# SPLIT_WORK multiply-adds a pass (rows × parameters): below, the second thread's wake-up
# and the blocks' gradient sum cost what the split saves (benchmarks/README.md, "Row blocks")
SPLIT_ROWS = 24
SPLIT_WORK = 1 << 20


def _typed_from_python(arrays):
    """A numba typed List of ``arrays`` (one type), appended from Python: no compile, for
    lists made once."""
    out = numba.typed.List()
    for a in arrays:
        out.append(a)
    return out


@jit()
def _typed_list(items):
    """A numba typed List of the tuple ``items`` (one type), built in compiled code: 3 µs
    against 20 to 30 for appends from Python (a gradient buffer is bound per call of
    ``loss_and_grad`` when it returns fresh arrays)."""
    out = numba.typed.List()
    for a in items:
        out.append(a)
    return out


def unsupported(model, *, objective="elbo", free_bits=0.0, optimizer=None) -> str | None:
    """None when the compiled path can train ``model``; otherwise why not (one phrase)."""
    if kernels.get_backend() != "numba":
        return "the NumPy backend is selected"
    if numba.config.DISABLE_JIT:
        return "numba's compiler is off (NUMBA_DISABLE_JIT)"
    if objective not in ("elbo", "iwae", "iwae-dreg", "iwae-stl"):
        return f"the {objective} objective runs on the engine path"
    if free_bits > 0 and objective != "elbo":
        return "free bits apply to the ELBO alone"
    if optimizer is not None and type(optimizer) not in (Adam, AdamW, SGD):
        return f"{type(optimizer).__name__} runs on the engine path"
    plan = model.plan
    for s in [*plan.encoder, *plan.decoder]:
        if type(s.layer) not in (Dense, GatedDense):
            return f"{s.prefix} is a {type(s.layer).__name__}, not a built-in Dense or GatedDense"
    lik = model.likelihood
    if type(lik) not in (Bernoulli, Gaussian, ContinuousBernoulli):
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
    logvar = np.zeros(D, dtype=dtype)
    if isinstance(lik, Bernoulli):
        return step.BERNOULLI, logvar
    if isinstance(lik, ContinuousBernoulli):
        return step.CONTINUOUS_BERNOULLI, logvar
    if lik.sigma == "learned":
        return step.GAUSSIAN_LEARNED, None
    if lik.sigma == "per_example":
        return step.GAUSSIAN_PER_EXAMPLE, logvar
    logvar[:] = 2.0 * math.log(lik.sigma)
    return step.GAUSSIAN_FIXED, logvar


def _block_threads(T) -> dict:
    """The thread limits for T row blocks: up to T numba threads (at most npvae's thread
    count), each block's products on one thread: BLAS held to one thread where the products
    are BLAS's (:data:`npvae.kernels.blas.BLAS`)."""
    limits = {"numba": max(1, min(T, threads.get_threads()["blas"], numba.config.NUMBA_NUM_THREADS))}
    if blas.BLAS != "npvae":
        limits["blas"] = 1
    return limits


class Steps:
    """What :class:`OptimizerSteps` and :class:`Gradients` share: ``model``'s parameters and the
    gradient buffer ``grads`` (views of one flat buffer, as :class:`npvae.train.TrainStep`
    makes them) as the compiled step's lists, the row blocks, the scratch, and the call of
    the compiled steps.  The ELBO, or with ``objective="iwae"`` (``"iwae-dreg"``,
    ``"iwae-stl"``) the importance-weighted bound with ``n_samples`` = K."""

    def __init__(self, model, grads: dict, *, dynamic_binarize=False, objective="elbo", n_samples=1,
                 optimizer=None, free_bits=0.0):
        self._step = step
        reason = unsupported(model, optimizer=optimizer, objective=objective, free_bits=free_bits)
        if reason is not None:
            raise ValueError(f"the compiled path cannot train this model: {reason}")
        self.model = model
        self.free_bits = float(free_bits)  # free bits' floor λ on each dimension's batch-mean KL (0: none)
        self.dynamic = bool(dynamic_binarize)
        self.K = positive_int(n_samples, "n_samples") if objective != "elbo" else 0  # 0: the ELBO
        # the encoder's gradient estimator of the importance-weighted objectives
        self.estimator = {"iwae-dreg": step.DREG, "iwae-stl": step.STL}.get(objective, step.PLAIN)
        self.P = flat_base(model.params.values())
        self.M = self.V = np.empty(0, dtype=model.dtype)  # the optimizer's buffers: OptimizerSteps sets them
        stages, self.n_enc, self.n_dec = stage_list(model.plan)
        self.stages = stages
        P = model.params
        self._params = tuple(P.values())
        self.Ws = _typed_from_python([P[s[0]] for s in stages])
        self.bs = _typed_from_python([P[s[1]] for s in stages])
        self.acts = np.array([s[2] for s in stages], dtype=np.int64)
        D, dt = model.n_inputs, model.dtype
        self.lik, logvar = _likelihood_code(model.likelihood, D, dt)
        self._learned = logvar is None
        self.lik_logvar = P["likelihood.logvar"] if self._learned else logvar
        self._bufs = {}
        self._partials = {}
        self._threads_cache = {}
        self.blocks = None
        self._bind(grads)

    # how the step's lists of arrays are made: from Python, as fit binds its buffers once
    _typed = staticmethod(_typed_from_python)

    def _bind(self, grads):
        """Make ``grads`` (views of one flat buffer) the gradients the steps write."""
        names = list(self.model.params)
        self.G = flat_base(grads[k] for k in names)
        if self.G is None:
            raise ValueError("grads must be views of one flat buffer, in the parameters' order")
        self.GWs = self._typed([grads[s[0]] for s in self.stages])
        self.Gbs = self._typed([grads[s[1]] for s in self.stages])
        self.lik_dlogvar = (grads["likelihood.logvar"] if self._learned
                            else np.zeros(self.model.n_inputs, dtype=self.model.dtype))
        self.grads = {k: grads[k] for k in names}
        self._threads_cache = {}

    def blocks_for(self, B) -> int:
        """The row blocks a batch of B rows is split into.  By default (``blocks`` None)
        BLOCKS when every block gets at least SPLIT_ROWS rows and a pass over the batch is at
        least SPLIT_WORK multiply-adds (B × parameters), else one: 16-64-64-4 at batch 64 runs
        as one block, 784-400-20 at 128 as two.  ``blocks`` set to a number asks for that many
        (at least 4 rows each).  It depends on the model and B alone, never on the machine's
        threads, so a run's numbers do not depend on where it runs: the blocks' gradients are
        added in one fixed order."""
        if self.free_bits > 0:  # the floor is on the whole batch's means: one block sees them all
            return 1
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
        the products are OpenBLAS's, on its threads).  With npvae's own products no BLAS runs
        in the step, and BLAS's threads are left as they are (setting them costs ~0.1 ms)."""
        P = self.blocks_for(B)
        if P == 1:
            return {}
        return _block_threads(P)

    def _per_thread(self, T):
        """Block t's gradient destinations: block 0 the gradients themselves, block t > 0
        views of partials[t − 1], laid out as the flat gradient buffer (kept across
        :meth:`_bind`: only the lists that hold the gradients are made again)."""
        cached = self._threads_cache.get(T)
        if cached is None:
            part = self._partials.get(T)
            if part is None:
                partials = np.zeros((T - 1, self.G.size), dtype=self.G.dtype)
                lists = ([], [], [])
                for t in range(T - 1):
                    views = {}
                    offset = 0
                    for name, g in self.grads.items():
                        views[name] = partials[t, offset:offset + g.size].reshape(g.shape)
                        offset += g.size
                    lists[0].append(self._typed([views[s[0]] for s in self.stages]))
                    lists[1].append(self._typed([views[s[1]] for s in self.stages]))
                    lists[2].append(views["likelihood.logvar"] if "likelihood.logvar" in views
                                    else np.zeros_like(self.lik_dlogvar))
                part = self._partials[T] = (partials, lists)
            partials, (gws, gbs, dlv) = part
            cached = self._threads_cache[T] = (self._typed([self.GWs, *gws]), self._typed([self.Gbs, *gbs]),
                                               self._typed([self.lik_dlogvar, *dlv]), partials)
        return cached

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

    def _call(self, x, idx, b, clip, update):
        """The compiled steps on the rows idx (S, B) of x, with b's draws, KL weights and
        optimizer constants; ``update`` step.ADAM or step.SGD, or step.NO_UPDATE: the gradients
        only (S = 1).  Returns the steps done."""
        B = idx.shape[1]
        T = self.blocks_for(B)
        common = (self.K, self.estimator, self.free_bits, x, idx, b["U"], b["E"], self.dynamic, self.Ws, self.bs)
        buffers = (b["H"], b["dH"], b["xb"], b["z"], b["std"], b["kl"], b["terms"], b["nll"], b["tmp_dec"],
                   b["tmp_enc"], self.lik, self.lik_logvar)
        # None for the ELBO: numba then compiles the ELBO step alone (see step.step_block)
        iwae = (b["xk"], b["lw"], b["dzk"]) if self.K else (None, None, None)
        outs = (b["losses"], b["recs"], b["kls"], b["norms"])
        # one block with BLAS's products runs them on BLAS's threads: the engine's pool
        threads.ran_on("numba" if T > 1 or blas.BLAS == "npvae" else "blas")
        if T <= 1:
            return self._step.adam_steps(
                *common, self.GWs, self.Gbs, self.acts, self.n_enc, self.n_dec, *buffers, self.lik_dlogvar, *iwae,
                b["betas"], b["adam_c"], clip, update, self.P, self.G, self.M, self.V, *outs)
        GWs_t, Gbs_t, dlv_t, partials = self._per_thread(T)
        with threads.limited(**self.thread_settings(B)):  # a no-op inside fit, which set them
            return self._step.adam_steps_blocks(
                *common, GWs_t, Gbs_t, self.acts, self.n_enc, self.n_dec, *buffers, dlv_t, *iwae,
                b["betas"], b["adam_c"], clip, update, self.P, self.G, partials, self.M, self.V, *outs)


class OptimizerSteps(Steps):
    """Runs chunks of training steps with Adam, AdamW or SGD on ``model`` in place: the ELBO,
    or with ``objective="iwae"`` the importance-weighted bound with ``n_samples`` = K.

    ``grads``: the gradient dict (views of one flat buffer, as :class:`npvae.train.TrainStep`
    makes them); ``opt_state``: the optimizer's state, whose moments (Adam's m and v, SGD's
    momentum) are moved into flat buffers here if they are not already (the dict then holds
    views of them)."""

    def __init__(self, model, optimizer, opt_state: dict, grads: dict, *, dynamic_binarize=False,
                 objective="elbo", n_samples=1, free_bits=0.0):
        super().__init__(model, grads, dynamic_binarize=dynamic_binarize, objective=objective,
                         n_samples=n_samples, optimizer=optimizer, free_bits=free_bits)
        self.optimizer, self.state = optimizer, opt_state
        names = list(model.params)
        if isinstance(optimizer, SGD):
            self.update = step.SGD
            if optimizer.momentum:
                self.M = self._flat_slot(opt_state, "momentum", names)
        else:
            self.update = step.ADAM
            self.M = self._flat_slot(opt_state, "m", names)
            self.V = self._flat_slot(opt_state, "v", names)

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

    def _constants(self, t: int) -> tuple:
        """The optimizer's numbers for update number t (from 1), as the step reads them."""
        opt = self.optimizer
        lr = opt.lr(t - 1)
        if self.update == step.SGD:
            return (lr, opt.momentum, float(opt.nesterov), opt.weight_decay, 0.0, 0.0, 0.0, 0.0, 0.0)
        return adam_constants(t, lr, opt.betas[0], opt.betas[1], opt.eps, opt.weight_decay, opt.decoupled)

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
            arrays.standard_normal_(rng, E[s] if self.K else E[s, 0])  # NumPy's numbers
        st = self.state
        t0 = int(st["step"])
        for s in range(S):
            b["adam_c"][s] = self._constants(t0 + s + 1)
        b["betas"][:] = betas
        clip = 0.0 if self.optimizer.clip_norm is None else float(self.optimizer.clip_norm)
        n_done = self._call(x, idx, b, clip, self.update)
        if n_done:
            st["step"] = np.asarray(t0 + n_done, dtype=np.int64)
            st["grad_norm"] = np.asarray(b["norms"][n_done - 1], dtype=np.float64)
        return n_done, b["losses"], b["recs"], b["kls"], b["norms"]


AdamSteps = OptimizerSteps
"""The name it had when it ran Adam alone."""


class Gradients(Steps):
    """One batch's loss and gradient by the compiled step, without an update: what
    :meth:`npvae.VAE.loss_and_grad` runs for a model the compiled path takes (the ELBO, or
    with ``objective="iwae"`` (``"iwae-dreg"``, ``"iwae-stl"``) the importance-weighted bound
    with ``n_samples`` = K; the same mathematics as the engine's step, to rounding), so that a
    user's own loop runs at ``fit``'s speed.

    The gradients go to any flat gradient buffer (``grads`` of :meth:`__call__`); the
    compiled step's lists of its arrays are kept for the last few buffers.  For a call
    without ``out``, :meth:`fresh_grads` hands out views of a buffer no one else holds any
    more (its reference count says so), else of a new one: the same fresh arrays as the
    engine's, without binding and first-touching 2.6 MB a call."""

    POOL = 3

    @staticmethod
    def _typed(arrays):
        """A typed List built in compiled code (:func:`_typed_list`): a buffer may be bound
        per call here (``fit`` binds once, and does not compile this)."""
        return _typed_list(tuple(arrays))

    def __init__(self, model, grads: dict | None = None, *, objective="elbo", n_samples=1, free_bits=0.0):
        self._pool = []  # (base, grads views, GWs, Gbs, dlogvar, threads cache, ours), newest last
        self._fresh = ((), lambda: None)  # the views fresh_grads handed out last, and their buffer
        self._weights = None  # the last importance-weighted call's w̃_k / B, (B, K)
        super().__init__(model, grads if grads is not None else _flat_empty(model.params), objective=objective,
                         n_samples=n_samples, free_bits=free_bits)
        if grads is None:  # a buffer of the pool's own, to hand out
            self._pool[-1] = (*self._pool[-1][:6], True)
        self._all_rows = np.zeros((1, 0), dtype=np.int64)

    def _bind(self, grads, base=None):
        if base is None:
            base = flat_base(grads[k] for k in self.model.params)
        for i, entry in enumerate(self._pool):
            if entry[0] is base:
                self._pool.append(self._pool.pop(i))
                break
        else:
            super()._bind(grads)
            self._pool.append((self.G, self.grads, self.GWs, self.Gbs, self.lik_dlogvar, self._threads_cache,
                               False))
            if len(self._pool) > self.POOL:
                self._pool.pop(0)
        _, self.grads, self.GWs, self.Gbs, self.lik_dlogvar, self._threads_cache, _ = self._pool[-1]
        self.G = base

    def takes(self, grads) -> bool:
        """Whether ``grads`` (shaped like the parameters) is views of one flat buffer."""
        return flat_base(grads[k] for k in self.model.params) is not None

    def fresh_grads(self) -> dict:
        """Gradient arrays for one call: views of a pooled buffer that nothing outside the
        pool refers to any more, or of a new one."""
        for i, entry in enumerate(self._pool):
            if entry[6] and _outside_refs(entry) == 0:
                self._pool.append(self._pool.pop(i))
                break
        else:
            self._bind(_flat_empty(self.model.params))
            entry = self._pool[-1]
            self._pool[-1] = (*entry[:6], True)
        base = self._pool[-1][0]
        out, offset = {}, 0
        for name, p in self.model.params.items():
            out[name] = base[offset:offset + p.size].reshape(p.shape)
            offset += p.size
        # weakly, so that they do not count as held: __call__ then knows their buffer
        self._fresh = (tuple(map(weakref.ref, out.values())), weakref.ref(base))
        return out

    def _base_of(self, grads):
        """The flat buffer ``grads`` are views of (None if they are not): known without a look
        at their addresses (~12 µs) when they are the arrays :meth:`fresh_grads` handed out
        last."""
        views = [grads[k] for k in self.model.params]
        key, base = self._fresh
        if len(key) == len(views) and all(map(operator.is_, map(weakref.ref.__call__, key), views)):
            known = base()
            if known is not None:
                return known
        return flat_base(views)

    def __call__(self, x, eps, beta, grads):
        """Loss and gradient of the batch x (B, D) (checked, in the model's dtype) with the
        noise eps, (B, J) for the ELBO and (K, B, J) for the importance-weighted bound, and
        KL weight ``beta`` (the ELBO's), into ``grads`` (views of one flat buffer).  Returns
        (loss, reconstruction, KL) batch means in float64: the loss is −ELBO_β, or −L_K;
        the reconstruction is E_q[−ln p(x|z)], or Σ_k w̃_k (−ln p(x|z_k))."""
        if any(a is not b for a, b in zip(self.model.params.values(), self._params)):
            raise ValueError("the model's parameters were replaced: make a new Gradients")
        base = self._base_of(grads)
        if base is None:
            raise ValueError("grads must be views of one flat buffer, in the parameters' order")
        if base is not self.G:
            self._bind(grads, base)
        B = x.shape[0]
        b = self._buffers(1, B)
        if self.K:
            b["E"][0] = eps
        else:
            b["E"][0, 0] = eps
        b["betas"][0] = beta
        if self._all_rows.shape[1] != B:
            self._all_rows = np.arange(B, dtype=np.int64).reshape(1, B)
        self._call(np.ascontiguousarray(x), self._all_rows, b, 0.0, step.NO_UPDATE)
        self._weights = b["lw"] if self.K else None
        return b["losses"][0], b["recs"][0], b["kls"][0]

    def ess(self) -> float:
        """The last importance-weighted call's effective sample size, the batch mean of
        1 / Σ_k w̃_k² (in [1, K]), from the normalised weights its step leaves (w̃_k / B)."""
        if self._weights is None:
            raise ValueError("no importance-weighted call yet")
        wn = self._weights * self._weights.shape[0]
        return float((1.0 / (wn * wn).sum(axis=1)).mean())


def _flat_empty(params) -> dict:
    """Arrays shaped like ``params``, views of one new (uninitialised) flat buffer."""
    flat = np.empty(sum(p.size for p in params.values()), dtype=next(iter(params.values())).dtype)
    out, offset = {}, 0
    for name, p in params.items():
        out[name] = flat[offset:offset + p.size].reshape(p.shape)
        offset += p.size
    return out


def _outside_refs(entry) -> int:
    """References to a pooled buffer from outside the pool: the pool's own are the entry,
    one per view in its gradient dict (a view refers to the buffer it looks into)."""
    return sys.getrefcount(entry[0]) - 2 - len(entry[1])  # 2: the entry, getrefcount's argument


def log_weights(model, x, eps):
    """ln w (K, B) = ln p(x|z_k) + ln p(z_k) − ln q(z_k|x) in float64 for x (B, D) (checked,
    in the model's dtype) and eps (K, B, J), by one compiled call: what
    :func:`npvae.engine.log_weights` computes, to rounding.  For a model the compiled path
    takes (:func:`unsupported` is None)."""
    K, B, J = eps.shape
    dt, D = model.dtype, model.n_inputs
    stages, n_enc, n_dec = stage_list(model.plan)
    d0 = n_enc + 2
    typed = _typed_from_python
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
    with threads.limited(**_block_threads(T)):
        step.log_weights(np.ascontiguousarray(x, dtype=dt), np.ascontiguousarray(eps, dtype=dt),
                         typed([P[s[0]] for s in stages]), typed([P[s[1]] for s in stages]),
                         np.array([s[2] for s in stages], dtype=np.int64), n_enc, n_dec, H, np.empty((B, J), dt),
                         np.empty((T * step.DEC_ROWS, J), dt), np.empty((T, D)), np.empty((T, 2, D), dt), lik, logvar,
                         lw, T)
    return lw
