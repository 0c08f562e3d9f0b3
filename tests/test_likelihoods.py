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
