"""The compiled training path (npvae.compiled): the same mathematics as the engine, step for
step, to rounding (1e-12 relative in float64, 1e-5 in float32), for every likelihood it
takes, every activation, with and without hidden layers, dynamic binarisation, clipping,
weight decay and β; bit-identical to itself from run to run and across a resume; a
non-finite step stops before its update and is named; what it cannot train goes to the
engine, or is refused with the reason when asked for."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import npvae
from npvae import compiled
from npvae.train import TrainStep

pytestmark = pytest.mark.skipif(npvae.get_backend() != "numba", reason="the compiled path is numba's")

LIKELIHOODS = [("bernoulli", {}), ("gaussian", {"sigma": 0.7}), ("gaussian", {"sigma": "learned"}),
               ("gaussian", {"sigma": "per_example"}), ("continuous_bernoulli", {})]
ACTS = ["identity", "relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus"]
# besides the activations of Dense layers: every hidden layer a GatedDense ("gated"), or
# GatedDense and Dense(·, "tanh") in turn ("mixed")
LAYERS = ACTS + ["gated", "mixed"]


def make_vae(n_in, n_lat, hidden, act, **kw):
    """A VAE of Dense layers with activation ``act``, or with gated layers (see LAYERS)."""
    if act not in ("gated", "mixed"):
        return npvae.VAE(n_in, n_lat, hidden=hidden, activation=act, **kw)

    def layer(i, h):
        return npvae.layers.GatedDense(h) if act == "gated" or i % 2 == 0 else npvae.layers.Dense(h, "tanh")
    return npvae.VAE(n_in, n_lat, encoder=[layer(i, h) for i, h in enumerate(hidden)],
                     decoder=[layer(i, h) for i, h in enumerate(hidden[::-1])], **kw)


def two_paths(dtype, lik, lik_kw, hidden, act, *, steps, B, chunk, dynamic, opt_kw, beta, seed, K=0,
              objective="iwae", blocks=None, sgd=False, free_bits=0.0):
    """(engine params, engine losses, compiled params, compiled losses, the two states);
    K > 0: the K-sample importance-weighted objective (``objective``: its estimator);
    ``blocks``: the compiled path's row blocks (None: its default, one for these small models)."""
    out = []
    kw = dict(objective=objective, n_samples=K) if K else dict(free_bits=free_bits)
    for path in ("engine", "compiled"):
        m = make_vae(11, 3, hidden, act, likelihood=lik, seed=seed, dtype=dtype, **lik_kw)
        # Adam's ε at 1e-4, not 1e-8: a gradient component that cancels to 0 in one summation
        # order and to 1e-17 in the other would otherwise be amplified up to lr·g/ε = 3e-5 (an
        # ill-conditioning of Adam near g = 0, not a difference between the paths)
        opt = npvae.SGD(**opt_kw) if sgd else npvae.Adam(**opt_kw, eps=1e-4)
        state = opt.init(m.params)
        ts = TrainStep(m, dynamic_binarize=dynamic, **kw)
        data = np.random.default_rng([seed, 1])
        x = (data.random((40, 11)) if "bernoulli" in lik else data.standard_normal((40, 11))).astype(dtype)
        idx = np.stack([data.permutation(40)[:B] for _ in range(steps)])
        rng = np.random.default_rng([seed, 2])
        losses = []
        if path == "engine":
            for s in range(steps):
                loss, parts, bad = ts(x, idx[s], rng, beta)
                assert bad is None
                opt.update(m.params, ts.grads, state, grad_norm=ts.grad_norm)
                losses.append(float(loss))
        else:
            c = compiled.OptimizerSteps(m, opt, state, ts.grads, dynamic_binarize=dynamic, **kw)
            c.blocks = blocks
            for s0 in range(0, steps, chunk):
                rows = idx[s0:s0 + chunk]
                n, ls, *_ = c.run(x, rows, rng, np.full(len(rows), beta))
                assert n == len(rows)
                losses += list(ls[:n])
        out.append((m.params, np.array(losses), state))
    return out


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300))


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from([np.float64, np.float32]), lik=st.sampled_from(LIKELIHOODS),
       hidden=st.lists(st.integers(1, 9), max_size=3).map(tuple), act=st.sampled_from(LAYERS),
       B=st.integers(1, 12), chunk=st.integers(1, 5), dynamic=st.booleans(),
       clip=st.sampled_from([None, 0.5, 100.0]), wd=st.sampled_from([0.0, 0.01]),
       decoupled=st.booleans(), beta=st.floats(0.0, 2.0), seed=st.integers(0, 2**16),
       blocks=st.sampled_from([None, 2, 3]))
@example(dtype=np.float64, lik=LIKELIHOODS[0], hidden=(4, 3), act="gated", B=9, chunk=3, dynamic=True, clip=None,
         wd=0.0, decoupled=False, beta=1.0, seed=1, blocks=2)  # always a gated network, two row blocks
def test_compiled_steps_equal_the_engines(dtype, lik, hidden, act, B, chunk, dynamic, clip, wd, decoupled,
                                          beta, seed, blocks):
    dynamic = dynamic and lik[0] == "bernoulli"
    opt_kw = dict(lr=3e-3, clip_norm=clip, weight_decay=wd, decoupled=decoupled)
    (pe, le, se), (pc, lc, sc) = two_paths(dtype, *lik, hidden, act, steps=7, B=B, chunk=chunk, dynamic=dynamic,
                                           opt_kw=opt_kw, beta=beta, seed=seed, blocks=blocks)
    assert_close(dtype, pe, le, se, pc, lc, sc)


@settings(max_examples=45, deadline=None)
@given(dtype=st.sampled_from([np.float64, np.float32]),
       lik=st.sampled_from([LIKELIHOODS[0], LIKELIHOODS[1], LIKELIHOODS[3], LIKELIHOODS[4]]),
       hidden=st.lists(st.integers(1, 9), max_size=3).map(tuple), act=st.sampled_from(LAYERS),
       B=st.integers(1, 12), K=st.integers(1, 6), chunk=st.integers(1, 5), dynamic=st.booleans(),
       clip=st.sampled_from([None, 0.5]), seed=st.integers(0, 2**16),
       objective=st.sampled_from(["iwae", "iwae-dreg", "iwae-stl"]), blocks=st.sampled_from([None, 2, 3]))
@example(dtype=np.float64, lik=LIKELIHOODS[0], hidden=(4, 3), act="mixed", B=9, K=3, chunk=2, dynamic=True, clip=None,
         seed=2, objective="iwae-dreg", blocks=2)
def test_compiled_iwae_steps_equal_the_engines(dtype, lik, hidden, act, B, K, chunk, dynamic, clip, seed, objective,
                                               blocks):
    dynamic = dynamic and lik[0] == "bernoulli"
    (pe, le, se), (pc, lc, sc) = two_paths(dtype, *lik, hidden, act, steps=6, B=B, chunk=chunk, dynamic=dynamic,
                                           opt_kw=dict(lr=3e-3, clip_norm=clip), beta=1.0, seed=seed, K=K,
                                           objective=objective, blocks=blocks)
    assert_close(dtype, pe, le, se, pc, lc, sc)


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from([np.float64, np.float32]), lik=st.sampled_from(LIKELIHOODS),
       hidden=st.lists(st.integers(1, 9), max_size=2).map(tuple), act=st.sampled_from(LAYERS),
       B=st.integers(1, 12), chunk=st.integers(1, 5), momentum=st.sampled_from([0.0, 0.9]), nesterov=st.booleans(),
       clip=st.sampled_from([0.5, 2.0]), wd=st.sampled_from([0.0, 0.01]), seed=st.integers(0, 2**16),
       blocks=st.sampled_from([None, 2]))
@example(dtype=np.float64, lik=LIKELIHOODS[4], hidden=(4, 3), act="gated", B=9, chunk=3, momentum=0.9, nesterov=True,
         clip=0.5, wd=0.01, seed=1, blocks=2)
def test_compiled_sgd_steps_equal_the_engines(dtype, lik, hidden, act, B, chunk, momentum, nesterov, clip, wd, seed,
                                              blocks):
    """SGD (with or without momentum, Nesterov, weight decay, clipping) runs compiled, as the
    engine's SGD does: the same parameters and momentum buffers to rounding.  (Always clipped:
    plain SGD on a per-example σ can diverge in 7 steps, on both paths alike.)"""
    opt_kw = dict(lr=0.01, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=wd, clip_norm=clip)
    (pe, le, se), (pc, lc, sc) = two_paths(dtype, *lik, hidden, act, steps=7, B=B, chunk=chunk, dynamic=False,
                                           opt_kw=opt_kw, beta=1.0, seed=seed, blocks=blocks, sgd=True)
    assert_close(dtype, pe, le, se, pc, lc, sc)


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from([np.float64, np.float32]), lik=st.sampled_from(LIKELIHOODS),
       hidden=st.lists(st.integers(1, 9), max_size=2).map(tuple), act=st.sampled_from(LAYERS),
       B=st.integers(1, 12), chunk=st.integers(1, 5), free_bits=st.sampled_from([0.02, 0.3, 3.0]),
       beta=st.floats(0.0, 2.0), seed=st.integers(0, 2**16), blocks=st.sampled_from([None, 2]))
@example(dtype=np.float64, lik=LIKELIHOODS[0], hidden=(5,), act="relu", B=12, chunk=3, free_bits=0.3, beta=1.0,
         seed=1, blocks=2)
def test_compiled_free_bits_steps_equal_the_engines(dtype, lik, hidden, act, B, chunk, free_bits, beta, seed,
                                                    blocks):
    """Free bits run compiled: the floored KL term Σ_j max(λ, KL̄_j) in the loss and the
    dimensions below the floor masked out of the KL gradient, as on the engine (the batch in
    one row block, whatever ``blocks`` asks: the floor is on the whole batch's means)."""
    (pe, le, se), (pc, lc, sc) = two_paths(dtype, *lik, hidden, act, steps=7, B=B, chunk=chunk, dynamic=False,
                                           opt_kw=dict(lr=3e-3), beta=beta, seed=seed, blocks=blocks,
                                           free_bits=free_bits)
    assert_close(dtype, pe, le, se, pc, lc, sc)


def test_free_bits_change_the_compiled_step_as_they_should():
    """A floor above every dimension's KL leaves the KL out of the gradient (the encoder then
    feels the reconstruction alone) and puts J·λ·β into the loss; no floor is the ELBO."""
    m = npvae.VAE(8, 3, hidden=(6,), seed=0, dtype=np.float64)
    x = np.random.default_rng(0).random((10, 8))
    eps = np.random.default_rng(1).standard_normal((10, 3))
    plain = compiled.Gradients(m)
    floored = compiled.Gradients(m, free_bits=50.0)
    g0, g1, g2 = (npvae.optim.flat_like(m.params) for _ in range(3))
    l0, rec0, kl0 = plain(x, eps, 1.0, g0)
    l1, rec1, kl1 = floored(x, eps, 1.0, g1)
    l2, rec2, kl2 = plain(x, eps, 0.0, g2)  # β = 0: no KL gradient at all
    assert rec1 == rec0 and kl1 == kl0
    assert l1 == pytest.approx(rec0 + 3 * 50.0, rel=1e-12) and l0 == pytest.approx(rec0 + kl0, rel=1e-12)
    for k in m.params:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-12, atol=1e-15)


def test_sgd_and_the_continuous_bernoulli_run_compiled_in_fit():
    x = np.random.default_rng(0).random((48, 8)).astype(np.float32)
    for model_kw, fit_kw in ((dict(likelihood="continuous_bernoulli"), {}),
                             ({}, dict(optimizer=npvae.SGD(lr=1e-2, momentum=0.9))), ({}, dict(free_bits=0.1))):
        model = npvae.VAE(8, 2, hidden=(6,), seed=0, **model_kw)
        assert compiled.unsupported(model, optimizer=fit_kw.get("optimizer"), free_bits=fit_kw.get("free_bits", 0)) is None
        h = npvae.fit(model, x, epochs=2, batch_size=8, progress=False, compiled=True, **fit_kw)
        assert len(h) == 2 and np.isfinite(h[-1]["loss"])


def assert_close(dtype, pe, le, se, pc, lc, sc):
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert rel(le, lc) < tol
    # the parameters after several Adam steps: Adam divides each gradient component by its
    # own scale, so in float32 a rounding difference in a component near zero moves its
    # parameter by a sizeable part of one step (seen: 7e-6 on encoder.mu.b with B = 1, K = 2,
    # a 1-unit hidden layer; float64 agrees to 2e-16 there).  So float32 parameters may also
    # differ by 1/1000 of the 6 × lr = 0.018 that Adam can move them in these runs; the
    # losses above carry the paths' agreement at 1e-5
    for k in pe:
        if dtype == np.float64:
            assert rel(pe[k], pc[k]) < tol, k
        else:
            diff = float(np.max(np.abs(pe[k].astype(np.float64) - pc[k])))
            assert diff <= max(tol * float(np.max(np.abs(pe[k]))), 2e-5), k
    for k in se:
        assert rel(np.asarray(se[k], float), np.asarray(sc[k], float)) < tol * 10, k  # moments and step


@pytest.mark.filterwarnings("ignore:posterior collapse")  # 3 epochs of a tiny model: both paths alike
@pytest.mark.parametrize("objective", ["elbo", "iwae", "iwae-dreg", "iwae-stl"])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_fit_takes_the_compiled_path_and_agrees_with_the_engine(dtype, tol, objective):
    x = (np.random.default_rng(0).random((203, 30)) < .4).astype(dtype)  # 203: a smaller last batch
    kw = dict(beta=npvae.LinearBeta(2)) if objective == "elbo" else dict(objective=objective, n_samples=4)
    runs = {}
    for path in (False, True):
        m = npvae.VAE(30, 4, hidden=(24, 12), activation="tanh", seed=3, dtype=dtype)
        h = npvae.fit(m, x, x_val=x[:50], epochs=3, batch_size=16, binarize="dynamic", seed=1, progress=False,
                      compiled=path, optimizer=npvae.Adam(lr=2e-3, clip_norm=3.0, eps=1e-4), diagnostics=x[:40],
                      **kw)
        runs[path] = (m, h)
    (me, he), (mc, hc) = runs[False], runs[True]
    for k in me.params:
        assert rel(me.params[k], mc.params[k]) < tol, k
    for re, rc in zip(he.records, hc.records):
        for key in ("loss", "reconstruction", "kl", "beta", "grad_norm", "lr", "val_elbo", "active_units"):
            assert abs(re[key] - rc[key]) <= tol * max(1.0, abs(re[key])) * 10, key


@pytest.mark.reproducibility
def test_the_compiled_path_is_bit_identical_from_run_to_run_and_across_resume(tmp_path):
    x = (np.random.default_rng(1).random((100, 20)) < .3).astype(np.float32)
    kw = dict(batch_size=8, seed=4, binarize="dynamic", progress=False, compiled=True)

    def params(m):
        return {k: v.copy() for k, v in m.params.items()}
    a = npvae.VAE(20, 3, hidden=(10,), seed=2)
    npvae.fit(a, x, epochs=4, **kw)
    b = npvae.VAE(20, 3, hidden=(10,), seed=2)
    npvae.fit(b, x, epochs=4, **kw)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    c = npvae.VAE(20, 3, hidden=(10,), seed=2)
    npvae.fit(c, x, epochs=2, checkpoint_dir=tmp_path, **kw)
    c = npvae.VAE(20, 3, hidden=(10,), seed=2)
    npvae.fit(c, x, epochs=4, checkpoint_dir=tmp_path, resume=True, **dict(kw, compiled="auto"))
    assert all(np.array_equal(a.params[k], c.params[k]) for k in a.params)


def test_a_run_resumes_on_the_path_it_began_on(tmp_path):
    x = (np.random.default_rng(1).random((64, 12)) < .3).astype(np.float64)
    kw = dict(batch_size=8, seed=4, progress=False)
    straight = npvae.VAE(12, 2, hidden=(6,), seed=2, dtype=np.float64)
    npvae.fit(straight, x, epochs=3, compiled=False, **kw)
    m = npvae.VAE(12, 2, hidden=(6,), seed=2, dtype=np.float64)
    npvae.fit(m, x, epochs=1, compiled=False, checkpoint_dir=tmp_path, **kw)
    m = npvae.VAE(12, 2, hidden=(6,), seed=2, dtype=np.float64)
    npvae.fit(m, x, epochs=3, checkpoint_dir=tmp_path, resume=True, **kw)  # "auto": stays on the engine
    assert all(np.array_equal(m.params[k], straight.params[k]) for k in m.params)


def test_a_non_finite_step_stops_before_its_update_and_names_it():
    m = npvae.VAE(6, 2, hidden=(5,), likelihood="gaussian", sigma=1.0, seed=0, dtype=np.float64)
    opt = npvae.Adam(lr=1e-2)
    state = opt.init(m.params)
    ts = TrainStep(m)
    c = compiled.AdamSteps(m, opt, state, ts.grads)
    x = np.random.default_rng(0).standard_normal((12, 6))
    x[7, 2] = np.inf  # used by the third step only
    idx = np.arange(12).reshape(4, 3)  # rows 6..8 are step 3's
    before = None
    ok = {k: v.copy() for k, v in m.params.items()}
    n, losses, *_ = c.run(x, idx[:2], np.random.default_rng(1), np.ones(2))
    assert n == 2
    before = {k: v.copy() for k, v in m.params.items()}
    assert not all(np.array_equal(before[k], ok[k]) for k in ok)
    n, losses, *_ = c.run(x, idx[2:], np.random.default_rng(1), np.ones(2))
    assert n == 0 and not np.isfinite(losses[0])
    assert all(np.array_equal(m.params[k], before[k]) for k in before)  # no update
    assert int(state["step"]) == 2


def test_fit_names_the_diverged_step_on_the_compiled_path(monkeypatch):
    x = (np.random.default_rng(0).random((300, 25)) < .5).astype(np.float32)
    model = npvae.VAE(25, 3, hidden=(16,))
    real = npvae.compiled.AdamSteps.run
    calls = []

    def poisoned(self, data, idx, *a, **k):
        calls.append(len(idx))
        if len(calls) == 2:  # epoch 2: its second step's first row becomes infinite
            data[idx[1, 0], 0] = np.inf
        return real(self, data, idx, *a, **k)
    monkeypatch.setattr(npvae.compiled.AdamSteps, "run", poisoned)
    with pytest.raises(npvae.DivergenceError, match=r"epoch 2, at step 5 \(step 2 of the epoch\).*loss"):
        npvae.fit(model, x, epochs=3, batch_size=100, progress=False, compiled=True)


class Doubler:
    """A user's own layer: y = 2x."""

    def init(self, rng, n_in):
        return n_in, {}

    def forward(self, params, x):
        return 2 * x, lambda dy: (2 * dy, {})

    def config(self):
        return {}


@pytest.mark.parametrize("case", ["own layer", "iwae with a learned sigma", "numpy backend"])
def test_what_the_compiled_path_cannot_train_runs_on_the_engine_or_is_refused(case, monkeypatch):
    x = (np.random.default_rng(0).random((32, 8)) < .5).astype(np.float32)
    model_kw, fit_kw = {}, {}
    if case == "own layer":
        model_kw = dict(encoder=[npvae.layers.Dense(6, "relu"), Doubler()], decoder=[npvae.layers.Dense(6, "relu")])
    elif case == "iwae with a learned sigma":
        fit_kw = dict(objective="iwae", n_samples=2)
        model_kw = dict(likelihood="gaussian", sigma="learned")
        x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    if case == "numpy backend":
        monkeypatch.setattr(npvae.kernels, "get_backend", lambda: "numpy")
    if "encoder" not in model_kw:
        model_kw["hidden"] = (6,)
    model = npvae.VAE(8, 2, seed=0, **model_kw)
    with pytest.raises(ValueError, match="compiled path cannot train this run: .+"):
        npvae.fit(model, x, epochs=1, batch_size=8, progress=False, compiled=True, **fit_kw)
    h = npvae.fit(model, x, epochs=1, batch_size=8, progress=False, **fit_kw)  # "auto": the engine
    assert len(h) == 1 and np.isfinite(h[-1]["loss"])


@pytest.mark.reproducibility
def test_the_result_does_not_depend_on_how_many_threads_run_the_blocks():
    """The batch is split into a fixed number of row blocks (not one per core), added in a
    fixed order: one thread or two give the same bits, so a run's numbers do not depend on
    the machine's core count."""
    import numba
    x = (np.random.default_rng(0).random((96, 14)) < .4).astype(np.float32)
    results = []
    for n_threads in (1, 2):
        if n_threads > numba.config.NUMBA_NUM_THREADS:
            pytest.skip("numba has one thread here")
        m = npvae.VAE(14, 3, hidden=(12, 7), activation="tanh", seed=1)
        opt = npvae.Adam(lr=1e-2)
        state = opt.init(m.params)
        c = compiled.AdamSteps(m, opt, state, npvae.optim.flat_like(m.params), dynamic_binarize=True)
        c.blocks = 2  # (this small model would run as one block by default)
        assert c.blocks_for(32) == 2
        saved = npvae.get_threads()
        npvae.set_threads(blas=n_threads)  # the blocks then run on n_threads numba threads
        try:
            c.run(x, np.arange(96).reshape(3, 32), np.random.default_rng(3), np.ones(3))
        finally:
            npvae.set_threads(**saved)
        results.append({k: v.copy() for k, v in m.params.items()})
    assert all(np.array_equal(results[0][k], results[1][k]) for k in results[0])


def test_a_batch_is_split_by_its_work_not_by_the_machine():
    """Two row blocks only where each has SPLIT_ROWS rows and a pass is SPLIT_WORK
    multiply-adds (rows × parameters): small steps run as one block (a second thread's
    wake-up costs what it saves); the choice depends on the model and batch alone."""
    def steps(n_in, hidden, n_lat):
        m = npvae.VAE(n_in, n_lat, hidden=hidden, activation="tanh", likelihood="gaussian")
        opt = npvae.Adam()
        return compiled.AdamSteps(m, opt, opt.init(m.params), npvae.optim.flat_like(m.params)), \
            sum(v.size for v in m.params.values())
    small, p_small = steps(16, [64, 64], 4)
    large, p_large = steps(784, [400], 20)
    assert 64 * p_small < compiled.SPLIT_WORK <= 128 * p_small
    assert small.blocks_for(64) == 1 and small.blocks_for(128) == compiled.BLOCKS
    assert large.blocks_for(128) == compiled.BLOCKS
    assert large.blocks_for(2 * compiled.SPLIT_ROWS - 1) == 1 and large.blocks_for(2 * compiled.SPLIT_ROWS) == 2
    small.blocks = 3  # asked for: that many, at least 4 rows each
    assert small.blocks_for(64) == 3 and small.blocks_for(8) == 2
    assert small.thread_settings(64) != {} and large.thread_settings(16) == {}


def test_npvae_thread_limits_hold_inside_a_callers_own_limits():
    """npvae sets the BLAS threads it wants even when the caller has its own threadpoolctl
    limit around the call (it compares with the threads in effect, not with the ones the
    process had when npvae first looked), and SciPy's BLAS, which the compiled step calls,
    is among the libraries it limits."""
    import scipy.linalg.cython_blas  # noqa: F401  (loaded before the caller's limits, as in use)
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    for outer, inner in ((1, 2), (2, 1)):
        with threadpool_limits(outer, user_api="blas"):
            with npvae.threads.limited(blas=inner, numba=1):
                seen = blas_threads()
                assert any("scipy_openblas-" in p or "scipy/" in p or "scipy.libs" in p for p in seen), seen
                assert set(seen.values()) == {inner}, seen
            assert set(blas_threads().values()) == {outer}


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from([np.float64, np.float32]), lik=st.sampled_from(LIKELIHOODS),
       hidden=st.lists(st.integers(1, 9), max_size=3).map(tuple), act=st.sampled_from(LAYERS),
       B=st.integers(1, 9), K=st.integers(1, 7), seed=st.integers(0, 2**16))
@example(dtype=np.float64, lik=LIKELIHOODS[3], hidden=(3, 5), act="gated", B=5, K=3, seed=3)
def test_compiled_log_weights_equal_the_engines(dtype, lik, hidden, act, B, K, seed):
    from npvae import estimators
    m = make_vae(10, 3, hidden, act, likelihood=lik[0], seed=seed, dtype=dtype, **lik[1])
    rng = np.random.default_rng(seed)
    x = (rng.random((B, 10)) if "bernoulli" in lik[0] else rng.standard_normal((B, 10))).astype(dtype)
    eps = rng.standard_normal((K, B, 3)).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert rel(estimators.log_weights(m, x, eps), compiled.log_weights(m, x, eps)) < tol


@pytest.mark.parametrize("lik", LIKELIHOODS, ids=lambda v: f"{v[0]}-{v[1].get('sigma', '')}")
def test_compiled_log_weights_in_pieces(lik):
    """Blocks of more than LOG_P_ROWS and more than DEC_ROWS decoder rows (the decoder and
    its output head go in pieces, the last one partial), one call after another with other
    shapes, each equal to the engine's (the block t of B examples holds rows tB/2·K to
    (t+1)B/2·K)."""
    from npvae import estimators
    from npvae.kernels import step
    m = make_vae(10, 3, (7, 5), "mixed", likelihood=lik[0], seed=2, dtype=np.float64, **lik[1])
    rng = np.random.default_rng(0)
    for B, K in ((5, 70), (5, 70), (5, 3), (4, 33), (1, 2 * step.LOG_P_ROWS + 1), (3, 2 * step.DEC_ROWS + 5),
                 (5, 70)):
        x = (rng.random((B, 10)) if "bernoulli" in lik[0] else rng.standard_normal((B, 10)))
        eps = rng.standard_normal((K, B, 3))
        assert rel(estimators.log_weights(m, x, eps), compiled.log_weights(m, x, eps)) < 1e-12


def test_compiled_log_weights_from_several_threads_on_one_model():
    """Calls on one model from several threads at once: each equals the engine's."""
    from concurrent.futures import ThreadPoolExecutor

    from npvae import estimators
    m = make_vae(10, 3, (7, 5), "relu", seed=4, dtype=np.float64)
    rng = np.random.default_rng(1)
    x = rng.random((6, 10))
    eps = [rng.standard_normal((300, 6, 3)) for _ in range(6)]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda e: compiled.log_weights(m, x, e), eps))
    for e, g in zip(eps, got):
        assert rel(estimators.log_weights(m, x, e), g) < 1e-12


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", ["zero", "confident", "wrong", "mixed"])
def test_compiled_bernoulli_log_weights_take_logs_of_products_in_range(case, dtype):
    """The compiled Bernoulli ln p(x|z) takes one logarithm per 512 factors 1 + e^{−|l|}.
    With 1100 inputs (three groups) it equals the engine's log1p per element: logits all 0
    (every factor 2, the largest products); confident and right (|l| from 10 to 30 with the
    sign of x: ln p(x|z) ≈ −Σ e^{−|l|}, tiny, so an absolute error shows); confident and
    wrong; and a mix of scales."""
    from npvae import estimators
    D = 1100
    m = npvae.VAE(D, 3, hidden=(5,), seed=0, dtype=dtype)
    j = np.arange(D)
    x_row = (np.cos(j) > 0).astype(dtype)
    sign = 2 * x_row - 1
    mag = {"zero": 0 * j, "confident": 20 + 10 * np.sin(j), "wrong": 20 + 10 * np.sin(j),
           "mixed": 10.0 ** np.linspace(-3, 1.5, D)}[case]
    m.params["decoder.out.W"][...] = 0.0  # the logits do not depend on z: set by the bias alone
    m.params["decoder.out.b"][...] = (-sign if case == "wrong" else sign) * mag
    x = np.tile(x_row, (3, 1))
    eps = np.random.default_rng(0).standard_normal((4, 3, 3)).astype(dtype)
    want, got = estimators.log_weights(m, x, eps), compiled.log_weights(m, x, eps)
    if dtype == np.float64:
        assert np.max(np.abs(want - got)) < 1e-12 * max(1.0, np.max(np.abs(want)) / 100)
    else:
        assert rel(want, got) < 1e-5
    # and the intended mathematics: the logits do not depend on z, so against the same model
    # with logits 0 (ln p(x|z) = −D ln 2) ln w moves by exactly Σ_j [x l − softplus(l)] + D ln 2
    l = m.params["decoder.out.b"].astype(np.float64)
    m.params["decoder.out.b"][...] = 0.0
    shift = got - compiled.log_weights(m, x, eps)
    exact = float(np.sum(x_row * l - np.logaddexp(0.0, l))) + D * np.log(2.0)
    tol = 1e-9 if dtype == np.float64 else 2e-3 * max(1.0, abs(exact) / 100)
    assert np.max(np.abs(shift - exact)) < tol, (shift, exact)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_nan_logit_makes_nan_log_weights_and_a_non_finite_step(dtype):
    """The float32 likelihoods' exponential does not carry NaN itself: a NaN logit must
    still make ln w NaN (ln p(x)) and the compiled step's loss and gradient not finite (the
    step stops before its update); an infinite one likewise makes ln w not finite."""
    m = npvae.VAE(10, 2, hidden=(5,), seed=0, dtype=dtype)
    x = (np.random.default_rng(0).random((4, 10)) < 0.5).astype(dtype)
    eps = np.random.default_rng(1).standard_normal((3, 4, 2)).astype(dtype)
    for bad in (np.nan, np.inf, -np.inf):
        m.params["decoder.out.b"][3] = bad
        lw = compiled.log_weights(m, x, eps)
        assert not np.isfinite(lw).any() if bad != bad else not np.isfinite(lw).all(), (bad, lw)
    m.params["decoder.out.b"][3] = np.nan
    before = {k: v.copy() for k, v in m.params.items()}
    opt = npvae.Adam(lr=1e-2)
    c = compiled.AdamSteps(m, opt, opt.init(m.params), TrainStep(m).grads)
    n, losses, *_ = c.run(x, np.arange(4).reshape(1, 4), np.random.default_rng(2), np.ones(1))
    assert n == 0 and not np.isfinite(losses[0])
    assert all(np.array_equal(before[k], m.params[k], equal_nan=True) for k in before)


def test_log_likelihood_takes_the_compiled_weights_and_agrees(monkeypatch):
    m = npvae.VAE(20, 3, hidden=(16,), seed=1, dtype=np.float64)
    x = (np.random.default_rng(0).random((30, 20)) < .4).astype(np.float64)
    calls = []
    real = compiled.log_weights
    monkeypatch.setattr(compiled, "log_weights", lambda *a: calls.append(1) or real(*a))
    fast = m.log_likelihood(x, n_samples=300)
    assert calls
    monkeypatch.setattr(compiled, "unsupported", lambda *a, **k: "the engine, for comparison")
    slow = m.log_likelihood(x, n_samples=300)
    assert rel(slow, fast) < 1e-12


@settings(max_examples=25, deadline=None)
@given(dtype=st.sampled_from([np.float64, np.float32]), lik=st.sampled_from(LIKELIHOODS),
       hidden=st.lists(st.integers(1, 9), max_size=3).map(tuple), act=st.sampled_from(LAYERS),
       B=st.integers(1, 70), beta=st.floats(0.0, 2.0), seed=st.integers(0, 2**16), fresh=st.booleans())
def test_loss_and_grad_runs_the_compiled_step_and_equals_the_engines(dtype, lik, hidden, act, B, beta, seed, fresh):
    """loss_and_grad of a model the compiled path takes runs the compiled step (fit's speed
    in a user's own loop): loss, parts and every gradient equal the engine's step to
    rounding, with fresh arrays or ``out``, in one row block (these small models' default)
    and in two when asked."""
    from npvae import engine
    m = make_vae(11, 3, hidden, act, likelihood=lik[0], seed=seed, dtype=dtype, **lik[1])
    rng = np.random.default_rng(seed)
    x = (rng.random((B, 11)) if "bernoulli" in lik[0] else rng.standard_normal((B, 11))).astype(dtype)
    eps = rng.standard_normal((B, 3)).astype(dtype)
    out = None if fresh else m.new_grads()
    loss, grads, parts = m.loss_and_grad(x, eps=eps, beta=beta, out=out)
    assert isinstance(m.__dict__["_gradients"][1][("elbo", 1)], compiled.Gradients)
    if out is not None:
        assert all(grads[k] is out[k] for k in out)
    G = m.new_grads()
    ref_loss, ref_parts = engine.elbo_step(m.plan, m.params, G, x, eps, m.workspaces(B), beta=beta)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert loss.dtype == dtype and rel(loss, ref_loss) < tol
    for k in ("reconstruction", "kl", "elbo"):
        assert abs(float(parts[k]) - float(ref_parts[k])) <= tol * max(1.0, abs(float(ref_parts[k]))), k
    for k in G:
        assert rel(grads[k], G[k]) < tol * 100 or np.max(np.abs(grads[k] - G[k])) < tol, k
    m.__dict__["_gradients"][1][("elbo", 1)].blocks = 2  # the two-block path gives the same, to rounding
    loss2, grads2, _ = m.loss_and_grad(x, eps=eps, beta=beta)
    assert rel(loss2, ref_loss) < tol
    for k in G:
        assert rel(grads2[k], G[k]) < tol * 100 or np.max(np.abs(grads2[k] - G[k])) < tol, k


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from([np.float64, np.float32]),
       lik=st.sampled_from([LIKELIHOODS[0], LIKELIHOODS[1], LIKELIHOODS[3], LIKELIHOODS[4]]),
       hidden=st.lists(st.integers(1, 9), max_size=3).map(tuple), act=st.sampled_from(LAYERS),
       B=st.integers(1, 40), K=st.integers(1, 6), seed=st.integers(0, 2**16),
       objective=st.sampled_from(["iwae", "iwae-dreg", "iwae-stl"]), blocks=st.sampled_from([None, 2]))
@example(dtype=np.float64, lik=LIKELIHOODS[0], hidden=(4, 3), act="mixed", B=9, K=3, seed=2, objective="iwae-dreg",
         blocks=2)
def test_loss_and_grad_runs_the_compiled_iwae_step_and_equals_the_engines(dtype, lik, hidden, act, B, K, seed,
                                                                           objective, blocks):
    """The importance-weighted objectives in a user's own loop run the compiled step too:
    loss, the bound, the effective sample size, the other parts and every gradient equal
    the engine's iwae_step to rounding, for each estimator, in one row block and in two."""
    from npvae import engine
    m = make_vae(11, 3, hidden, act, likelihood=lik[0], seed=seed, dtype=dtype, **lik[1])
    rng = np.random.default_rng(seed)
    x = (rng.random((B, 11)) if "bernoulli" in lik[0] else rng.standard_normal((B, 11))).astype(dtype)
    eps = rng.standard_normal((K, B, 3)).astype(dtype)
    kw = dict(objective=objective, n_samples=K)
    m.loss_and_grad(x, eps=eps, **kw)
    step = m.__dict__["_gradients"][1][(objective, K)]
    assert isinstance(step, compiled.Gradients)
    step.blocks = blocks
    loss, grads, parts = m.loss_and_grad(x, eps=eps, **kw)
    G = m.new_grads()
    ref_loss, ref = engine.iwae_step(m.plan, m.params, G, x, eps, m.workspaces(B), m.workspaces(K * B),
                                     estimator=npvae.model.IMPORTANCE_WEIGHTED[objective])
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert loss.dtype == dtype and rel(loss, ref_loss) < tol
    assert set(parts) == set(ref)
    for k in ("iwae", "reconstruction", "kl", "elbo", "ess"):
        assert abs(float(parts[k]) - float(ref[k])) <= tol * max(1.0, abs(float(ref[k]))), k
    assert 1.0 - 1e-9 <= parts["ess"] <= K + 1e-9
    for k in G:
        assert rel(grads[k], G[k]) < tol * 100 or np.max(np.abs(grads[k] - G[k])) < tol, k


def test_loss_and_grad_never_hands_out_arrays_a_caller_still_holds():
    """Fresh gradient arrays (no ``out``) come from a pool of buffers: one the caller still
    refers to (even through one slice) is never written again; one the caller dropped is."""
    m = npvae.VAE(12, 2, hidden=(6,), seed=0)
    x = np.random.default_rng(0).random((9, 12))
    eps = np.random.default_rng(1).standard_normal((9, 2))
    _, g1, _ = m.loss_and_grad(x, eps=eps)
    kept = {k: v.copy() for k, v in g1.items()}
    piece = g1["encoder.0.W"][1:3]
    del g1
    for s in range(5):
        _, g, _ = m.loss_and_grad(x * (s + 1) / 6, eps=eps)
        assert not np.shares_memory(g["encoder.0.W"], piece)
    np.testing.assert_array_equal(piece, kept["encoder.0.W"][1:3])
    del piece, g
    bases = set()
    for s in range(6):
        _, g, _ = m.loss_and_grad(x, eps=eps)
        bases.add(id(g["encoder.0.W"].base))
        del g
    assert len(bases) <= compiled.Gradients.POOL  # dropped buffers are used again
    _, g, _ = m.loss_and_grad(x, eps=eps)
    _, again, _ = m.loss_and_grad(x / 2, eps=eps, out=g)  # the arrays handed out, given back
    _, fresh, _ = m.loss_and_grad(x / 2, eps=eps)
    assert all(again[k] is g[k] and np.array_equal(again[k], fresh[k]) for k in g)


def test_the_update_runs_on_the_pool_of_the_step_that_made_the_gradients(monkeypatch):
    """After the compiled step, a user's update runs on its numba threads (as fit's, inside
    the step); after the engine's, on the training settings (one numba thread beside
    OpenBLAS's).  The numbers are the same either way, bit for bit."""
    import numba

    from npvae import threads
    if numba.config.NUMBA_NUM_THREADS < 2 or npvae.get_threads()["blas"] < 2:
        pytest.skip("needs two threads: set NUMBA_NUM_THREADS and npvae.set_threads(blas=2)")
    seen = []
    real = npvae.optim.adam_update_
    monkeypatch.setattr(npvae.optim, "adam_update_", lambda *a: (seen.append(numba.get_num_threads()), real(*a)))
    x = np.random.default_rng(0).random((9, 200))
    eps = np.random.default_rng(1).standard_normal((9, 4))
    m1, m2 = (npvae.VAE(200, 4, hidden=(100,), seed=0) for _ in range(2))
    opt1, opt2 = npvae.Adam(lr=0.01), npvae.Adam(lr=0.01)
    s1, s2 = opt1.init(m1.params), opt2.init(m2.params)
    # one row block (9 rows): its products are npvae's kernel on numba's threads, or, on a CPU
    # without 256-bit vectors (NUMBA_CPU_NAME=generic), BLAS's on BLAS's threads: the engine's pool
    from npvae.kernels import blas
    own_kernel = blas.BLAS == "npvae"
    compiled_pool = {"numba": npvae.get_threads()["blas"]} if own_kernel else {}
    for _ in range(2):
        _, g, _ = m1.loss_and_grad(x, eps=eps)  # the compiled step
        assert threads.update_limits() == compiled_pool
        same = {k: v.copy() for k, v in g.items()}
        opt1.update(m1.params, g, s1)
        assert seen[-1] == npvae.get_threads()["blas" if own_kernel else "numba"]
        m2.loss_and_grad(x, eps=eps, trace=True)  # the engine's step
        assert threads.update_limits() == {}
        opt2.update(m2.params, same, s2)
        assert seen[-1] == npvae.get_threads()["numba"]
        for k in m1.params:
            np.testing.assert_array_equal(m1.params[k], m2.params[k])
    small = npvae.VAE(12, 2, hidden=(6,), seed=0)  # one row block
    xs = np.random.default_rng(3).random((9, 12))
    small.loss_and_grad(xs)
    assert threads.update_limits() == compiled_pool
    monkeypatch.setattr(npvae.kernels.blas, "BLAS", "openblas")  # one block's products on BLAS's threads
    small.loss_and_grad(xs)
    assert threads.update_limits() == {}
    with pytest.raises(ValueError, match="pool must be"):
        threads.ran_on("gpu")


@pytest.mark.filterwarnings("ignore:posterior collapse")  # one epoch of a small model
def test_the_epochs_evaluation_runs_under_the_engines_thread_settings(monkeypatch):
    """fit's compiled path runs its steps on numba's threads; its validation ELBO and
    diagnostics are the engine's work (OpenBLAS's products) and run under the engine's
    settings (one numba thread).  ``elbo`` outside fit keeps a caller's own limits."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2 or npvae.get_threads()["blas"] < 2:
        pytest.skip("needs two threads: set NUMBA_NUM_THREADS and npvae.set_threads(blas=2)")
    seen = []
    real = npvae.engine.encode
    monkeypatch.setattr(npvae.engine, "encode",
                        lambda *a, **k: (seen.append(numba.get_num_threads()), real(*a, **k))[1])
    m = npvae.VAE(200, 4, hidden=(100,), seed=0)
    x = (np.random.default_rng(0).random((128, 200)) < 0.3).astype(m.dtype)
    with npvae.threads.limited(numba=2):  # elbo keeps a caller's own limits
        m.elbo(x[:16])
    assert seen and set(seen) == {2}
    seen.clear()
    npvae.fit(m, x, x_val=x[:32], epochs=1, batch_size=64, progress=False, diagnostics=x[:16], compiled=True)
    assert seen and set(seen) == {npvae.get_threads()["numba"]}


def test_loss_and_grad_takes_the_engine_for_a_trace_free_bits_or_iwae_with_a_learned_sigma():
    """Where the compiled step does not apply, loss_and_grad is the engine's step exactly;
    where it does, gradient arrays that are not views of one buffer get the same numbers
    as a flat buffer (the compiled step's, copied in)."""
    from npvae import engine
    m = npvae.VAE(12, 2, hidden=(6,), seed=0, dtype=np.float64)
    x = np.random.default_rng(0).random((9, 12))
    eps = np.random.default_rng(1).standard_normal((9, 2))
    G = m.new_grads()
    ref, _ = engine.elbo_step(m.plan, m.params, G, x, eps, m.workspaces(9), beta=1.0)
    loss, grads, _, _ = m.loss_and_grad(x, eps=eps, trace=True)
    assert loss == ref and all(np.array_equal(grads[k], G[k]) for k in G)
    loss_c, flat, _ = m.loss_and_grad(x, eps=eps)
    scattered = {k: np.zeros_like(v) for k, v in m.params.items()}  # not one buffer
    loss, grads, _ = m.loss_and_grad(x, eps=eps, out=scattered)
    assert loss == loss_c and all(grads[k] is scattered[k] and np.array_equal(grads[k], flat[k]) for k in flat)
    G2 = m.new_grads()
    ref_fb, _ = engine.elbo_step(m.plan, m.params, G2, x, eps, m.workspaces(9), beta=1.0, free_bits=0.1)
    loss, grads, _ = m.loss_and_grad(x, eps=eps, free_bits=0.1)
    assert loss == ref_fb and all(np.array_equal(grads[k], G2[k]) for k in G2)
    learned = npvae.VAE(12, 2, hidden=(6,), seed=0, dtype=np.float64, likelihood="gaussian", sigma="learned")
    eps3 = np.random.default_rng(2).standard_normal((3, 9, 2))
    for model in (learned, m):  # IWAE with a learned σ; a traced IWAE step
        G3 = model.new_grads()
        ref_iw, _ = engine.iwae_step(model.plan, model.params, G3, x, eps3, model.workspaces(9),
                                     model.workspaces(27), estimator="iwae")
        loss, grads, _, *_ = model.loss_and_grad(x, eps=eps3, objective="iwae", n_samples=3,
                                                 trace=model is m)
        assert loss == ref_iw and all(np.array_equal(grads[k], G3[k]) for k in G3)


@pytest.mark.parametrize("file_dtype", [np.float32, np.float64])
def test_memory_mapped_data_trains_compiled_as_the_same_data_in_memory(tmp_path, file_dtype):
    """fit on a memory-mapped .npy takes the compiled path and gives the bits that the same
    rows in memory give (the step reads each batch's rows from the mapping; a float64 file
    for a float32 model is converted row by row, as the in-memory array is at the start)."""
    x = np.random.default_rng(0).random((64, 10)).astype(file_dtype)
    np.save(tmp_path / "x.npy", x)
    mapped = npvae.data.load_array(tmp_path / "x.npy", mmap=True)
    assert isinstance(mapped, np.memmap)
    runs = []
    for data in (mapped, x.astype(np.float32)):
        m = npvae.VAE(10, 2, hidden=(8,), seed=0)
        npvae.fit(m, data, epochs=2, batch_size=16, binarize="dynamic", progress=False, compiled=True, seed=3)
        runs.append(m.params)
    for k in runs[0]:
        assert runs[0][k].tobytes() == runs[1][k].tobytes(), k
