"""The engine path's operations on the two kernel backends, against each other: on the numba
backend each formula module runs its kernel, on the NumPy backend its reference (the same
functions the compiled step and the docs use), on hypothesis-drawn shapes and values, and
with NaN and inf in every input.  (Each kernel is also held to its reference directly, in
the test file of its module: test_activations.py, test_posterior.py, test_likelihoods.py,
test_optim.py, test_layers.py.)

Agreement is measured per output array as max|numba − numpy| / max|numpy| (a norm-wise
relative error): ≤ 1e-12 in float64 and ≤ 1e-5 in float32.  Per-example sums whose terms
can cancel (the nll and KL values) are measured against the sum of their terms' magnitudes.  Outputs whose every element is
zero or subnormal are compared by their absolute difference.  This module also runs under
NUMBA_DISABLE_JIT=1 (see test_backends.py), where the kernels are plain Python.
"""
import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npvae
from npvae import activations, kernels, likelihoods, optim, posterior
from npvae.kernels import arrays, sums
from npvae.testing import strategies as nst

from helpers import DTYPES, TOL, agree, agree_elementwise, agree_sum, rel_err


class Backend:
    """The engine's in-place operations as run on one kernel backend, under the old names
    of the per-operation dispatch (so that each test reads as one call on both)."""

    def __init__(self, name):
        self.name = name

    def _on(self, fn, *args):
        before = kernels.get_backend()
        kernels.set_backend(self.name)
        try:
            return fn(*args)
        finally:
            kernels.set_backend(before)

    def bias_act_(self, a, b, act):
        return self._on(activations.bias_activation_inplace, a, b, act)

    def act_backward_bias_grad_(self, dy, y, act, db):
        return self._on(activations.activation_backward_inplace, dy, y, act, db)

    def reparam_kl_(self, *args):
        return self._on(posterior.reparametrize_kl_inplace, *args)

    def reparam_kl_backward_(self, *args):
        return self._on(posterior.reparametrize_kl_backward_inplace, *args)

    def bernoulli_(self, logits, x, w, nll):
        return self._on(likelihoods.Bernoulli().loss_and_grad_, x, (logits,), {}, w, nll, {})

    def continuous_bernoulli_(self, logits, x, w, nll):
        return self._on(likelihoods.ContinuousBernoulli().loss_and_grad_, x, (logits,), {}, w, nll, {})

    def gaussian_fixed_(self, mean, x, logvar, w, nll):
        lik = likelihoods.Gaussian(sigma=float(np.exp(0.5 * logvar)))
        return self._on(lik.loss_and_grad_, x, (mean,), {}, w, nll, {})

    def gaussian_learned_(self, mean, x, logvar, w, nll, dlogvar):
        return self._on(likelihoods.Gaussian("learned").loss_and_grad_, x, (mean,), {"logvar": logvar}, w, nll,
                        {"logvar": dlogvar})

    def gaussian_per_example_(self, mean, x, logvar, w, nll):
        return self._on(likelihoods.Gaussian("per_example").loss_and_grad_, x, (mean, logvar), {}, w, nll, {})

    def adam_(self, p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
        if self.name == "numpy":
            return optim.adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled)
        c = np.array(optim.adam_constants(step, lr, beta1, beta2, eps, weight_decay, decoupled), dtype=p.dtype)
        return optim.adam_update_(p, g, m, v, c)

    def sgd_(self, p, g, buf, lr, momentum, nesterov, weight_decay):
        if self.name == "numpy":
            return optim.sgd_update(p, g, buf if momentum else None, lr, momentum, nesterov, weight_decay)
        t = p.dtype.type
        return optim.sgd_update_(p, g, buf, t(lr), t(momentum), nesterov, t(weight_decay))

    def all_finite(self, a):
        return arrays.all_finite(a) if self.name == "numba" else bool(np.isfinite(a).all())

    def sum_squares(self, a):
        return float(sums.sum_squares(a)) if self.name == "numba" else optim.sum_of_squares(a)

    def standard_normal_(self, rng, out):
        if self.name == "numba":
            return arrays.standard_normal_(rng, out)
        if out.flags.c_contiguous:
            rng.standard_normal(out=out, dtype=out.dtype)
        else:
            out[...] = rng.standard_normal(out.shape, dtype=out.dtype)

    def binarize_(self, x, u):
        if self.name == "numba":
            return arrays.binarize_(x, u)
        np.less(u, x, out=x, casting="unsafe")


NB = Backend("numba")
NP = Backend("numpy")

SHAPES = dict(batch=(1, 40), width=(1, 40))


def draw(data, shape, dtype, low=-4.0, high=4.0):
    return data.draw(nst.arrays(shape, low=low, high=high, dtype=np.float64)).astype(dtype)


def both(fn_name, *arrays_and_args):
    """Run a kernel in both backends on copies of the arrays; return both argument lists."""
    a1 = [x.copy() if isinstance(x, np.ndarray) else x for x in arrays_and_args]
    a2 = [x.copy() if isinstance(x, np.ndarray) else x for x in arrays_and_args]
    r1 = getattr(NB, fn_name)(*a1)
    r2 = getattr(NP, fn_name)(*a2)
    return (a1, r1), (a2, r2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", range(len(kernels.ACT_NAMES)), ids=kernels.ACT_NAMES)
@given(data=st.data())
def test_bias_activation_forward_and_backward(dtype, act, data):
    B, H = data.draw(nst.shapes(**SHAPES))
    a, b, dy = draw(data, (B, H), dtype), draw(data, (H,), dtype), draw(data, (B, H), dtype)
    (n1, _), (n2, _) = both("bias_act_", a, b, act)
    agree(dtype, (n1[0], n2[0]))
    y = n2[0]
    (m1, _), (m2, _) = both("act_backward_bias_grad_", dy, y, act, np.empty(H, dtype))
    agree(dtype, (m1[0], m2[0]), (m1[3], m2[3]))


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_reparametrisation_and_kl(dtype, data):
    B, J = data.draw(nst.shapes(batch=(1, 40), width=(1, 8)))
    mu, lv, eps = (draw(data, (B, J), dtype) for _ in range(3))
    e = lambda *s: np.empty(s, dtype)
    (f1, _), (f2, _) = both("reparam_kl_", mu, lv, eps, e(B, J), e(B, J), e(B))
    agree(dtype, (f1[3], f2[3]), (f1[4], f2[4]))
    m64, v64 = mu.astype(np.float64), lv.astype(np.float64)
    agree_sum(dtype, f1[5], f2[5], [0.5 * m64**2, 0.5 * np.expm1(v64), 0.5 * v64])
    dz = draw(data, (B, J), dtype)
    w = dtype(draw(data, (1,), dtype, 0, 1)[0])  # the KL weight β/B
    mask = draw(data, (J,), dtype, 0, 1)
    (g1, _), (g2, _) = both("reparam_kl_backward_", dz, eps, f2[4], mu, lv, w, mask, e(B, J), e(B, J))
    agree(dtype, (g1[7], g2[7]), (g1[8], g2[8]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["bernoulli_", "continuous_bernoulli_"])
@given(data=st.data())
def test_bernoulli_likelihoods(dtype, name, data):
    B, D = data.draw(nst.shapes(**SHAPES))
    logits = draw(data, (B, D), dtype, -30, 30)
    x = draw(data, (B, D), dtype, 0, 1)
    w = draw(data, (B,), dtype, 0, 1)
    (k1, _), (k2, _) = both(name, logits, x, w, np.empty(B, dtype))
    l64, x64 = logits.astype(np.float64), x.astype(np.float64)
    # the gradient w (σ(l) − x [− d ln C/dl]) is a difference of O(1) terms that may cancel
    # (l ≈ 0, x = ½): compared relative to the terms' magnitudes, element by element
    grad_terms = [w[:, None] * t for t in (1 / (1 + np.exp(-l64)), x64)]
    terms = [np.logaddexp(0, l64), x64 * l64]
    if name == "continuous_bernoulli_":
        log_c, dlog_c = npvae.ops.cb_log_normaliser(l64)
        terms.append(log_c)
        grad_terms.append(w[:, None] * dlog_c)
    agree_elementwise(dtype, k1[0], k2[0], grad_terms)
    agree_sum(dtype, k1[3], k2[3], terms)


def gaussian_terms(mean, x, s):
    r = mean.astype(np.float64) - x.astype(np.float64)
    s = np.broadcast_to(np.asarray(s, np.float64), r.shape)
    return [0.5 * r * r * np.exp(-s), 0.5 * s, np.full(r.shape, 0.5 * np.log(2 * np.pi))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["fixed", "learned", "per_example"])
@given(data=st.data())
def test_gaussian_likelihoods(dtype, variant, data):
    B, D = data.draw(nst.shapes(**SHAPES))
    mean, x = draw(data, (B, D), dtype), draw(data, (B, D), dtype)
    w = draw(data, (B,), dtype, 0, 1)
    nll = np.empty(B, dtype)
    if variant == "fixed":
        s = float(data.draw(st.floats(-3, 3)))
        (k1, _), (k2, _) = both("gaussian_fixed_", mean, x, s, w, nll)
        agree(dtype, (k1[0], k2[0]))
        agree_sum(dtype, k1[4], k2[4], gaussian_terms(mean, x, s))
    elif variant == "learned":
        s = draw(data, (D,), dtype, -3, 3)
        (k1, _), (k2, _) = both("gaussian_learned_", mean, x, s, w, nll, np.empty(D, dtype))
        agree(dtype, (k1[0], k2[0]), (k1[5], k2[5]))
        agree_sum(dtype, k1[4], k2[4], gaussian_terms(mean, x, s))
    else:
        s = draw(data, (B, D), dtype, -3, 3)
        (k1, _), (k2, _) = both("gaussian_per_example_", mean, x, s, w, nll)
        agree(dtype, (k1[0], k2[0]), (k1[2], k2[2]))
        agree_sum(dtype, k1[4], k2[4], gaussian_terms(mean, x, s))


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data(), step=st.integers(1, 50), decoupled=st.booleans(),
       wd=st.sampled_from([0.0, 0.01]))
def test_adam(dtype, data, step, decoupled, wd):
    n = data.draw(st.integers(1, 300))
    p, g = draw(data, (n,), dtype), draw(data, (n,), dtype)
    m = draw(data, (n,), dtype, -1, 1)
    v = draw(data, (n,), dtype, 0, 1)
    (a1, _), (a2, _) = both("adam_", p, g, m, v, step, 1e-3, 0.9, 0.999, 1e-8, wd, decoupled)
    agree(dtype, (a1[0], a2[0]), (a1[2], a2[2]), (a1[3], a2[3]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_division_follows_numpy(dtype):
    """The kernels use NumPy's error model (error_model="numpy", which lets LLVM vectorise
    loops with a division): Adam with eps = 0 on a zero gradient and zero moments computes
    0/0 and gives NaN, as the reference does, instead of raising ZeroDivisionError."""
    z = np.zeros(5, dtype)
    with np.errstate(invalid="ignore"):  # the reference warns about its 0/0: expected here
        (a1, _), (a2, _) = both("adam_", np.ones(5, dtype), z, z, z, 1, 1e-3, 0.9, 0.999, 0.0, 0.0, False)
    assert np.isnan(a1[0]).all() and np.isnan(a2[0]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data(), momentum=st.sampled_from([0.0, 0.9]), nesterov=st.booleans())
def test_sgd(dtype, data, momentum, nesterov):
    n = data.draw(st.integers(1, 300))
    p, g, buf = (draw(data, (n,), dtype) for _ in range(3))
    nesterov = nesterov and momentum > 0
    (a1, _), (a2, _) = both("sgd_", p, g, buf, 0.1, momentum, nesterov, 0.01)
    agree(dtype, (a1[0], a2[0]))
    if momentum:
        agree(dtype, (a1[2], a2[2]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_checks_and_data_kernels(dtype):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 7)).astype(dtype)
    assert NB.all_finite(a) and NP.all_finite(a)
    a[3, 2] = np.nan
    assert not NB.all_finite(a) and not NP.all_finite(a)
    a[3, 2] = -np.inf
    assert not NB.all_finite(a)
    flat = rng.normal(size=1000).astype(dtype)
    assert NB.sum_squares(flat) == pytest.approx(NP.sum_squares(flat), rel=1e-12)
    x, u = rng.random((30, 7)).astype(dtype), rng.random((30, 7)).astype(dtype)
    x1, x2 = x.copy(), x.copy()
    NB.binarize_(x1, u)
    NP.binarize_(x2, u)
    assert np.array_equal(x1, x2) and set(np.unique(x1)) <= {0, 1}


def same_state(a, b):
    """Bit generators' state dicts equal, arrays inside (Philox, MT19937) element by element."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


BIT_GENERATORS = [np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64, np.random.MT19937]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bit_generator", BIT_GENERATORS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("size", ["small", "compiled", "compiled, 3-d"])
def test_normals_are_numpys_numbers_in_numpys_order(dtype, bit_generator, size):
    """The compiled draw (ln p(x)'s ε) gives exactly rng.standard_normal's numbers, and
    leaves the generator in exactly NumPy's state (the buffered half of a 64-bit output
    included): below NORMALS_COMPILED_FROM numbers it is NumPy's call; from there on,
    numba's port of the same ziggurat, on 300,000 numbers here."""
    n = arrays.NORMALS_COMPILED_FROM
    shape = {"small": (n // 2 - 1,), "compiled": (300_000 + 1,), "compiled, 3-d": (75, n // 64, 64)}[size]
    assert (np.prod(shape) >= n) == (size != "small")
    seed = 11
    want = np.random.Generator(bit_generator(seed)).standard_normal(shape, dtype=dtype)
    after = np.random.Generator(bit_generator(seed))
    after.standard_normal(shape, dtype=dtype)
    for impl in (NB, NP):
        rng = np.random.Generator(bit_generator(seed))
        got = np.full(shape, np.nan, dtype)
        impl.standard_normal_(rng, got)
        assert np.array_equal(got, want)
        assert same_state(rng.bit_generator.state, after.bit_generator.state)


@pytest.mark.parametrize("dtype", DTYPES)
def test_normals_into_a_strided_view_from_threads_and_their_moments(dtype):
    """Into a view that is not contiguous (NumPy's own call fills it); from four threads
    sharing one generator (the compiled draw holds its lock, as NumPy's does: the numbers
    drawn are a permutation of blocks of the one stream); and the sampler's moments: mean 0,
    variance 1, skewness 0 and kurtosis 3 within 5 standard errors."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(3)
    buf = np.zeros((4000, 2, 50), dtype)
    arrays.standard_normal_(rng, buf[:, 0])
    assert np.all(buf[:, 1] == 0) and np.all(buf[:, 0] != 0)
    assert np.array_equal(buf[:, 0], np.random.default_rng(3).standard_normal((4000, 50), dtype=dtype))
    shared, n = np.random.default_rng(5), arrays.NORMALS_COMPILED_FROM * 4
    blocks = [np.empty(n, dtype) for _ in range(16)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda b: arrays.standard_normal_(shared, b), blocks))
    stream = np.random.default_rng(5).standard_normal(16 * n, dtype=dtype).reshape(16, n)
    assert sorted(map(bytes, blocks)) == sorted(map(bytes, stream))
    z = np.empty(400_000, dtype)
    arrays.standard_normal_(rng, z)
    z = z.astype(np.float64)
    n = z.size
    for value, want, se in ((z.mean(), 0.0, 1 / n ** .5), (z.var(), 1.0, (2 / n) ** .5),
                            (np.mean(z ** 3), 0.0, (15 / n) ** .5), (np.mean(z ** 4), 3.0, (96 / n) ** .5)):
        assert abs(value - want) < 5 * se, (value, want, se)


def test_set_backend():
    before = kernels.get_backend()
    try:
        npvae.set_backend("numpy")
        assert npvae.get_backend() == kernels.get_backend() == "numpy"
        npvae.set_backend("numba")
        assert npvae.get_backend() == "numba"
    finally:
        npvae.set_backend(before)
    with pytest.raises(ValueError, match="backend must be one of"):
        npvae.set_backend("cuda")


@settings(max_examples=5)
@given(seed=st.integers(0, 100))
def test_model_gradients_agree_across_backends(seed):
    before = kernels.get_backend()
    rng = np.random.default_rng(seed)
    x = rng.random((9, 12))
    eps = rng.standard_normal((9, 3))
    out = {}
    try:
        for backend in ("numba", "numpy"):
            npvae.set_backend(backend)
            model = npvae.VAE(12, 3, hidden=(10, 7), activation="softplus", dtype=np.float64, seed=seed,
                              likelihood="continuous_bernoulli")
            out[backend] = model.loss_and_grad(x, eps=eps, beta=0.7)
    finally:
        npvae.set_backend(before)
    (l1, g1, _), (l2, g2, _) = out["numba"], out["numpy"]
    assert l1 == pytest.approx(l2, rel=1e-12)
    for k in g1:
        assert rel_err(g1[k], g2[k]) <= 1e-12


# ----------------------------------------------------------------------------------------
# NaN and inf propagate exactly as in the reference, kernel by kernel, on both backends
# ----------------------------------------------------------------------------------------
def kernel_calls(dtype, rng):
    """(kernel name, its arguments, the indices of its array arguments to poison, the indices
    of its outputs) for every kernel, on small random inputs."""
    B, H, J = 6, 5, 3
    r = lambda *s: rng.normal(size=s).astype(dtype)
    u = lambda *s: rng.random(s).astype(dtype)
    e = lambda *s: np.empty(s, dtype)
    calls = [("bias_act_", [r(B, H), r(H), act], [0, 1], [0]) for act in range(len(kernels.ACT_NAMES))]
    calls += [("act_backward_bias_grad_", [r(B, H), np.abs(r(B, H)) if act == 1 else np.tanh(r(B, H)) if act == 4
               else u(B, H), act, e(H)], [0, 1], [0, 3]) for act in range(len(kernels.ACT_NAMES))]
    calls += [
        ("reparam_kl_", [r(B, J), r(B, J), r(B, J), e(B, J), e(B, J), e(B)], [0, 1, 2], [3, 4, 5]),
        ("reparam_kl_backward_", [r(B, J), r(B, J), np.exp(r(B, J)), r(B, J), r(B, J), 0.25, u(J), e(B, J), e(B, J)],
         [0, 1, 2, 3, 4], [7, 8]),
        ("bernoulli_", [r(B, H), u(B, H), u(B), e(B)], [0, 1], [0, 3]),
        ("continuous_bernoulli_", [r(B, H), u(B, H), u(B), e(B)], [0, 1], [0, 3]),
        ("gaussian_fixed_", [r(B, H), r(B, H), 0.3, u(B), e(B)], [0, 1], [0, 4]),
        ("gaussian_learned_", [r(B, H), r(B, H), r(H), u(B), e(B), e(H)], [0, 1, 2], [0, 4, 5]),
        ("gaussian_per_example_", [r(B, H), r(B, H), r(B, H), u(B), e(B)], [0, 1, 2], [0, 2, 4]),
        ("adam_", [r(40), r(40), r(40), u(40), 3, 1e-3, 0.9, 0.999, 1e-8, 0.01, False], [0, 1, 2, 3], [0, 2, 3]),
        ("adam_", [r(40), r(40), r(40), u(40), 3, 1e-3, 0.9, 0.999, 1e-8, 0.01, True], [0, 1, 2, 3], [0, 2, 3]),
        ("sgd_", [r(40), r(40), r(40), 0.1, 0.9, True, 0.01], [0, 1, 2], [0, 2]),
        ("sgd_", [r(40), r(40), r(40), 0.1, 0.0, False, 0.0], [0, 1], [0]),
    ]
    return calls


def poisoned_outputs(impl, name, args, outs):
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    with np.errstate(all="ignore"):
        result = getattr(impl, name)(*args)
    return [np.asarray(args[i]) for i in outs], result


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="under NUMBA_DISABLE_JIT the kernels are plain Python, "
                    "whose math module raises on log(-inf) where the compiled kernels and NumPy give NaN; "
                    "this test is about the compiled backend, which runs in the normal suite")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nan_and_inf_propagate_as_in_the_reference(dtype, bad):
    """A NaN or inf in any input array reaches the same output elements in both backends, as
    non-finite values (the numba ReLU once turned a NaN into 0, so a NaN weight passed every
    divergence check): a kernel never hides a bad value that the reference shows."""
    rng = np.random.default_rng(7)
    failures = []
    for name, args, poison, outs in kernel_calls(dtype, rng):
        for i in poison:
            for flat in (0, args[i].size - 1):
                a = [x.copy() if isinstance(x, np.ndarray) else x for x in args]
                a[i].reshape(-1)[flat] = bad
                got, _ = poisoned_outputs(NB, name, a, outs)
                want, _ = poisoned_outputs(NP, name, a, outs)
                for k, (g, w) in enumerate(zip(got, want)):
                    where = f"{name}{args[2:3] if name.startswith(('bias', 'act')) else ''} " \
                            f"args[{i}].flat[{flat}] = {bad} -> output {outs[k]}"
                    if not np.array_equal(np.isfinite(g), np.isfinite(w)):
                        failures.append(where)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_finiteness_checks_see_every_nan(dtype):
    for impl in (NB, NP):
        for size in (1, 7, 1000, 100_003):
            a = np.zeros(size, dtype)
            for pos in (0, size // 2, size - 1):
                for bad in (np.nan, np.inf, -np.inf):
                    a[pos] = bad
                    assert not impl.all_finite(a) and not np.isfinite(impl.sum_squares(a))
                    a[pos] = 0
            assert impl.all_finite(a) and impl.sum_squares(a) == 0
