"""Each likelihood is a proper density, its gradient matches finite differences, and it
rejects targets outside its support."""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npvae import likelihoods
from npvae.testing import check_gradients
from npvae.testing import strategies as nst

from helpers import DTYPES, agree_elementwise, agree_sum

VARIANTS = [
    ("bernoulli", {}),
    ("continuous_bernoulli", {}),
    ("gaussian", {"sigma": 0.3}),
    ("gaussian", {"sigma": "learned"}),
    ("gaussian", {"sigma": "per_example"}),
]


def _setup(name, opts, data):
    lik = likelihoods.make(name, **opts)
    b, d = data.draw(nst.shapes(width=(1, 10)))
    if name == "gaussian":
        x = data.draw(nst.arrays((b, d)))
    else:
        x = data.draw(nst.unit_arrays((b, d)))
    outs = tuple(data.draw(nst.arrays((b, d), low=-4, high=4)) for _ in lik.heads)
    params = {k: data.draw(nst.arrays(v.shape, low=-1, high=1))
              for k, v in lik.init_params(d, np.float64).items()}
    w = data.draw(nst.arrays((b,), low=0.1, high=2))
    return lik, x, outs, params, w


@pytest.mark.parametrize("name,opts", VARIANTS, ids=[f"{n}-{o}" for n, o in VARIANTS])
@given(data=st.data())
def test_nll_gradient_matches_finite_differences(name, opts, data):
    lik, x, outs, params, w = _setup(name, opts, data)
    live = {f"out{i}": o for i, o in enumerate(outs)}
    live.update(params)

    def fn(p):
        o = tuple(p[f"out{i}"] for i in range(len(outs)))
        nll, bp = lik.nll(x, o, {k: p[k] for k in params})
        d_outs, d_params = bp(w)
        grads = {f"out{i}": g for i, g in enumerate(d_outs)}
        grads.update(d_params)
        return float(np.dot(w, nll)), grads

    check_gradients(fn, live)


def _simpson(f, a, b, n=20000):
    x = np.linspace(a, b, 2 * n + 1)
    y = f(x)
    h = (b - a) / (2 * n)
    return h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())


def test_bernoulli_sums_to_one_over_binary_vectors():
    lik = likelihoods.make("bernoulli")
    logits = np.array([[-2.0, 0.3, 5.0]])
    total = sum(np.exp(-lik.nll(np.array([bits], dtype=float), (logits,), {})[0][0])
                for bits in itertools.product([0, 1], repeat=3))
    assert total == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("l", [-60.0, -8.0, -1.0, -0.4, -1e-5, 0.0, 1e-9, 0.7, 1.0, 3.0, 25.0])
def test_continuous_bernoulli_integrates_to_one(l):
    lik = likelihoods.make("continuous_bernoulli")

    def density(xs):
        logits = np.full((xs.size, 1), l)
        return np.exp(-lik.nll(xs[:, None], (logits,), {})[0])

    assert _simpson(density, 0.0, 1.0) == pytest.approx(1.0, abs=1e-9)
    mean = _simpson(lambda xs: xs * density(xs), 0.0, 1.0)
    assert lik.mean((np.array([[l]]),), {})[0, 0] == pytest.approx(mean, abs=1e-9)


@pytest.mark.parametrize("opts", [{"sigma": 0.3}, {"sigma": "learned"}, {"sigma": "per_example"}])
def test_gaussian_is_the_normal_density(opts):
    lik = likelihoods.make("gaussian", **opts)
    m, s = 0.4, -0.7
    outs = (np.array([[m]]), np.array([[s]])) if opts["sigma"] == "per_example" else (np.array([[m]]),)
    params = {"logvar": np.array([s])} if opts["sigma"] == "learned" else {}
    var = 0.09 if opts["sigma"] == 0.3 else np.exp(s)
    xs = np.array([[-1.0], [0.4], [2.5]])
    for x in xs:
        nll = lik.nll(x[None], outs, params)[0][0]
        want = 0.5 * np.log(2 * np.pi * var) + (x[0] - m) ** 2 / (2 * var)
        assert nll == pytest.approx(want, rel=1e-14)

    def density(grid):
        o = tuple(np.full((grid.size, 1), v[0, 0]) for v in outs)
        return np.exp(-lik.nll(grid[:, None], o, params)[0])

    assert _simpson(density, m - 12 * np.sqrt(var), m + 12 * np.sqrt(var)) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("name,opts", VARIANTS, ids=[f"{n}-{o}" for n, o in VARIANTS])
def test_sample_mean_matches_mean(name, opts):
    lik = likelihoods.make(name, **opts)
    rng = np.random.default_rng(5)
    n, d = 40000, 4
    outs = tuple(np.tile(np.array([[-3.0, -0.2, 0.0, 2.0]]), (n, 1)) for _ in lik.heads)
    params = {k: np.full(v.shape, -1.0) for k, v in lik.init_params(d, np.float64).items()}
    xs = lik.sample(outs, params, rng)
    assert xs.shape == (n, d)
    mean = lik.mean(outs, params)[0]
    se = xs.std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(xs.mean(axis=0) - mean) < 5 * se + 1e-12)
    if name != "gaussian":
        assert xs.min() >= 0 and xs.max() <= 1


@pytest.mark.parametrize("name", ["bernoulli", "continuous_bernoulli"])
@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_targets_outside_unit_interval_are_rejected(name, bad):
    lik = likelihoods.make(name)
    with pytest.raises(ValueError, match=r"targets x must lie in \[0, 1\]"):
        lik.check_targets(np.array([[0.2, bad]]))


@pytest.mark.parametrize("kwargs", [{"sigma": 0}, {"sigma": -1.0}, {"sigma": "wide"},
                                    {"sigma": float("nan")}, {"sigma": True}])
def test_bad_sigma(kwargs):
    with pytest.raises(ValueError, match="sigma must be"):
        likelihoods.make("gaussian", **kwargs)


def test_unknown_likelihood_and_stray_options():
    with pytest.raises(ValueError, match="likelihood must be one of"):
        likelihoods.make("poisson")
    with pytest.raises(ValueError, match="takes no options"):
        likelihoods.make("bernoulli", sigma=0.1)


def test_float32_stays_float32():
    for name, opts in VARIANTS:
        lik = likelihoods.make(name, **opts)
        x = np.full((2, 3), 0.25, dtype=np.float32)
        outs = tuple(np.full((2, 3), 0.5, dtype=np.float32) for _ in lik.heads)
        params = lik.init_params(3, np.float32)
        nll, bp = lik.nll(x, outs, params)
        d_outs, d_params = bp(np.full(2, 0.5, dtype=np.float32))
        assert nll.dtype == np.float32
        assert all(d.dtype == np.float32 for d in d_outs)
        assert all(d.dtype == np.float32 for d in d_params.values())
        assert lik.mean(outs, params).dtype == np.float32
        assert lik.sample(outs, params, np.random.default_rng(0)).dtype == np.float32


# ----------------------------------------------------------------------------------------
# The kernels the compiled step runs, against the references (bernoulli_nll, gaussian_nll,
# continuous_bernoulli_nll), directly
# ----------------------------------------------------------------------------------------
def _kernel_case(data, dtype, low=-8.0, high=8.0):
    b, d = data.draw(nst.shapes(batch=(1, 20), width=(1, 30)))
    out = data.draw(nst.arrays((b, d), low=low, high=high)).astype(dtype)
    x = data.draw(nst.unit_arrays((b, d))).astype(dtype)
    w = data.draw(nst.arrays((b,), low=0.0, high=2.0)).astype(dtype)
    return out, x, w


def _row_sums(terms):
    return terms.astype(np.float64).sum(axis=1)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_bernoulli_kernel_matches_its_reference(dtype, data):
    logits, x, w = _kernel_case(data, dtype, -40, 40)
    g, terms = logits.copy(), np.empty_like(logits)
    likelihoods.bernoulli_nll_(g, x, w, terms)
    # the reference in float64: σ(l) − x cancels, in a float32 reference too; the scale of
    # each gradient element is its two terms' size, w (σ(l) + x)
    nll, dl = likelihoods.bernoulli_nll(logits.astype(np.float64), x.astype(np.float64))
    agree_sum(dtype, _row_sums(terms), nll, [np.abs(logits), np.log(2) + 0 * logits])
    sig = 1 / (1 + np.exp(-logits.astype(np.float64)))
    agree_elementwise(dtype, g, (dl * w[:, None]).astype(dtype), [(sig + x) * w[:, None], 1e-30 + 0 * dl])


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_continuous_bernoulli_kernel_matches_its_reference(dtype, data):
    logits, x, w = _kernel_case(data, dtype, -30, 30)
    g, terms = logits.copy(), np.empty_like(logits)
    likelihoods.continuous_bernoulli_nll_(g, x, w, terms)
    nll, dl = likelihoods.continuous_bernoulli_nll(logits.astype(np.float64), x.astype(np.float64))
    nll, dl = nll.astype(dtype), dl.astype(dtype)  # the float32 reference cancels in ln C(l) − softplus(l)
    agree_sum(dtype, _row_sums(terms), nll.astype(np.float64), [np.abs(logits), 1 + 0 * logits])
    _, dlog_c = likelihoods.cb_log_normaliser(logits.astype(np.float64))
    sig = 1 / (1 + np.exp(-logits.astype(np.float64)))
    agree_elementwise(dtype, g, dl * w[:, None], [(sig + x + np.abs(dlog_c)) * w[:, None], 1e-30 + 0 * dl])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["fixed", "learned", "per_example"])
@given(data=st.data())
def test_gaussian_kernel_matches_its_reference(dtype, mode, data):
    mean, _, w = _kernel_case(data, dtype, -3, 3)
    B, D = mean.shape
    x = data.draw(nst.arrays((B, D), low=-3, high=3)).astype(dtype)
    if mode == "per_example":
        logvar = data.draw(nst.arrays((B, D), low=-5, high=5)).astype(dtype)
        lv2d = logvar.copy()
    else:
        logvar = data.draw(nst.arrays((D,), low=-5, high=5)).astype(dtype)
        lv2d = logvar.reshape(1, D).copy()
    g, terms, dlv = mean.copy(), np.empty_like(mean), np.zeros(D, dtype)
    code = {"fixed": 0, "learned": 1, "per_example": 2}[mode]
    likelihoods.gaussian_nll_(g, x, lv2d, mode == "per_example", w, terms, dlv, code)
    # the reference in float64, rounded: ½ − ½ r² e^{−s} cancels, in a float32 reference too
    f64 = lambda a: np.asarray(a, np.float64)
    nll, dm, ds = likelihoods.gaussian_nll(f64(mean), f64(x), f64(logvar))
    r2w = (f64(mean) - f64(x)) ** 2 * np.exp(-f64(logvar))
    agree_sum(dtype, _row_sums(terms), nll, [r2w, logvar + 0 * mean, 1 + 0 * mean])
    agree_elementwise(dtype, g, (dm * w[:, None]).astype(dtype), [np.abs(dm * w[:, None])])
    wds = ds * w[:, None]
    size = 0.5 * np.abs(w[:, None]) * (1 + r2w)  # the two terms' magnitudes
    if mode == "learned":
        agree_elementwise(dtype, dlv, wds.sum(axis=0).astype(dtype), [size.sum(axis=0) + 1e-30])
    elif mode == "per_example":
        agree_elementwise(dtype, lv2d, wds.astype(dtype), [size + 1e-30])


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_log_likelihood_row_kernels_match_the_reference(dtype, data):
    """ln p(x)'s value-only kernels give −nll of the reference, row by row (Bernoulli with
    more than FACTORS_PER_LOG outputs too, so that several products are taken)."""
    b, d = data.draw(st.tuples(st.integers(1, 3), st.sampled_from([1, 7, 600, 1100])))
    out = data.draw(nst.arrays((b, d), low=-30, high=30)).astype(dtype)
    x = (data.draw(nst.unit_arrays((b, d))) > 0.5).astype(dtype)
    lin, e, tr = np.empty(d, dtype), np.empty(d, dtype), np.empty(d)
    nll, _ = likelihoods.bernoulli_nll(out.astype(np.float64), x.astype(np.float64))
    for i in range(b):
        likelihoods.bernoulli_log_lik_row_(out, i, x, i, lin, e)
        got = likelihoods.row_log_lik(True, tr, lin, e)
        assert abs(got + nll[i]) <= (2e-6 if dtype == np.float32 else 1e-12) * (np.abs(out[i]).sum() + d)
    logvar = data.draw(nst.arrays((d,), low=-3, high=3)).astype(dtype)
    nll, _, _ = likelihoods.gaussian_nll(out.astype(np.float64), x.astype(np.float64), logvar.astype(np.float64))
    for i in range(b):
        likelihoods.gaussian_log_lik_row_(False, out, out, i, x, i, logvar, tr)
        got = likelihoods.row_log_lik(False, tr, lin, e)
        r2w = (out[i].astype(np.float64) - x[i]) ** 2 * np.exp(-logvar.astype(np.float64))
        assert abs(got + nll[i]) <= (2e-6 if dtype == np.float32 else 1e-12) * (r2w.sum() + np.abs(logvar).sum() + d)


@pytest.mark.parametrize("dtype", DTYPES)
def test_likelihood_kernels_at_the_edges(dtype):
    """Logits of ±1e4 and 0: finite terms equal to the reference's; a NaN logit gives a NaN
    term and gradient."""
    logits = np.array([[-1e4, -20.0, 0.0, 20.0, 1e4, np.nan]], dtype)
    x = np.array([[1.0, 0.0, 0.5, 1.0, 0.0, 1.0]], dtype)
    w = np.ones(1, dtype)
    for kernel, ref in ((likelihoods.bernoulli_nll_, likelihoods.bernoulli_nll),
                        (likelihoods.continuous_bernoulli_nll_, likelihoods.continuous_bernoulli_nll)):
        g, terms = logits.copy(), np.empty_like(logits)
        with np.errstate(all="ignore"):
            kernel(g, x, w, terms)
            nll, dl = ref(logits[:, :5], x[:, :5])
        np.testing.assert_allclose(terms[:, :5].astype(np.float64).sum(), nll[0], rtol=1e-6 if dtype == np.float32 else 1e-13)
        np.testing.assert_allclose(g[:, :5], dl, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-7)
        assert np.isnan(terms[0, 5]) and np.isnan(g[0, 5])
