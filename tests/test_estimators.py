"""Importance-weighted estimators: exact for a linear-Gaussian model, K = 1 is the ELBO,
the bound grows with K, the ESS lies in [1, K], and the IWAE gradient matches finite
differences."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npvae
from npvae import estimators, ops
from npvae.testing import check_gradients
from npvae.testing import strategies as nst

LIKELIHOODS = [("bernoulli", {}), ("gaussian", {"sigma": 0.5}), ("gaussian", {"sigma": "learned"}),
               ("gaussian", {"sigma": "per_example"}), ("continuous_bernoulli", {})]


@pytest.mark.parametrize("lik,opts", LIKELIHOODS, ids=[f"{l}-{o.get('sigma', '')}" for l, o in LIKELIHOODS])
@settings(max_examples=8)
@given(data=st.data())
def test_iwae_gradient_matches_finite_differences(lik, opts, data):
    n_inputs, n_latent = data.draw(st.integers(1, 10)), data.draw(st.integers(1, 4))
    B, K = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    hidden = tuple(data.draw(st.lists(st.integers(1, 8), max_size=1)))
    model = npvae.VAE(n_inputs, n_latent, hidden=hidden, activation="tanh", likelihood=lik,
                      dtype=np.float64, seed=data.draw(nst.seeds()), **opts)
    x = data.draw(nst.unit_arrays((B, n_inputs)))
    eps = data.draw(nst.arrays((K, B, n_latent)))
    loss, grads, parts = model.loss_and_grad(x, eps=eps, objective="iwae", n_samples=K)
    assert list(grads) == list(model.params)
    assert loss == pytest.approx(-parts["iwae"])
    check_gradients(lambda p: model.loss_and_grad(x, eps=eps, objective="iwae", n_samples=K), model.params)


def _log_weight_reference(model, x, eps):
    """ln p(x|z) + ln p(z) − ln q(z|x), every density written out directly."""
    mu, lv = model.encode(x)
    sigma = np.exp(0.5 * lv)
    z = mu + sigma * eps
    logits = model.outputs(z[0])[0]
    log_px = np.sum(x * logits - np.logaddexp(0, logits), axis=1)
    log_pz = np.sum(-0.5 * z[0] ** 2 - 0.5 * math.log(2 * math.pi), axis=1)
    log_q = np.sum(-0.5 * ((z[0] - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2 * math.pi), axis=1)
    return log_px + log_pz - log_q


def test_k_equal_one_is_the_elbo():
    model = npvae.VAE(8, 2, hidden=(6,), activation="tanh", dtype=np.float64, seed=3)
    x = np.random.default_rng(0).random((5, 8))
    eps = np.random.default_rng(1).standard_normal((1, 5, 2))
    lw = estimators.log_weights(model, x, eps)[0]
    np.testing.assert_allclose(lw, _log_weight_reference(model, x, eps), rtol=1e-12)
    loss, _, parts = model.loss_and_grad(x, eps=eps, objective="iwae", n_samples=1)
    assert loss == pytest.approx(-lw.mean(), rel=1e-12)
    # in expectation, K = 1 is the ELBO (analytic KL): compare over many draws
    ll1 = model.log_likelihood(np.repeat(x[:1], 20000, axis=0), n_samples=1,
                               rng=np.random.default_rng(2))
    elbo = model.elbo(x[:1], n_samples=20000, rng=np.random.default_rng(3))[0]
    assert ll1.mean() == pytest.approx(elbo, abs=4 * ll1.std() / math.sqrt(ll1.size))


def test_bound_grows_with_k_on_average():
    model = npvae.VAE(10, 2, hidden=(8,), dtype=np.float64, seed=1)
    x = (np.random.default_rng(0).random((4, 10)) < 0.5).astype(float)
    means = []
    for K in (1, 3, 10, 100):
        vals = [model.log_likelihood(x, n_samples=K, rng=np.random.default_rng(s)).mean()
                for s in range(60)]
        means.append(np.mean(vals))
    assert all(a < b for a, b in zip(means, means[1:])), means


def test_effective_sample_size_lies_in_one_to_k():
    model = npvae.VAE(10, 3, hidden=(8,), dtype=np.float64)
    x = np.random.default_rng(0).random((6, 10))
    for K in (1, 7, 300):
        _, ess = model.log_likelihood(x, n_samples=K, return_ess=True)
        assert np.all(ess >= 1 - 1e-12) and np.all(ess <= K + 1e-9)
    _, ess1 = model.log_likelihood(x, n_samples=1, return_ess=True)
    np.testing.assert_allclose(ess1, 1.0)


def test_chunking_does_not_change_the_estimate():
    model = npvae.VAE(12, 2, hidden=(10,), dtype=np.float64)
    x = np.random.default_rng(0).random((7, 12))
    a = estimators.log_likelihood(model, x, n_samples=500, max_elements=10**7)
    b = estimators.log_likelihood(model, x, n_samples=500, max_elements=700, batch_size=7)
    np.testing.assert_allclose(a, b, rtol=1e-10)


def linear_gaussian_log_px(model, x, sigma):
    """ln N(x; b, WᵀW + σ²I): the exact marginal of the linear-Gaussian decoder (correction L1)."""
    W, b = model.params["decoder.out.W"], model.params["decoder.out.b"]
    cov = W.T @ W + sigma ** 2 * np.eye(W.shape[1])
    r = x - b
    _, logdet = np.linalg.slogdet(cov)
    quad = np.einsum("ij,jk,ik->i", r, np.linalg.inv(cov), r)
    return -0.5 * (quad + logdet + W.shape[1] * math.log(2 * math.pi))


def test_exact_log_likelihood_of_a_linear_gaussian_model():
    rng = np.random.default_rng(0)
    D, J, sigma = 6, 2, 0.5
    A = rng.normal(size=(J, D))
    x = rng.standard_normal((800, J)) @ A + sigma * rng.standard_normal((800, D)) + 0.3
    model = npvae.VAE(D, J, hidden=(), likelihood="gaussian", sigma=sigma, dtype=np.float64)
    npvae.fit(model, x, epochs=40, batch_size=64, optimizer=npvae.Adam(lr=1e-2), progress=False)
    xt = x[:25]
    exact = linear_gaussian_log_px(model, xt, sigma)
    est = model.log_likelihood(xt, n_samples=5000, rng=np.random.default_rng(1))
    assert np.max(np.abs(est - exact)) < 0.03, np.max(np.abs(est - exact))
    elbo = model.elbo(xt, n_samples=2000)
    assert np.mean(exact - elbo) > 0.01  # the ELBO is a looser bound (mean-field q)


def test_fit_with_the_iwae_objective():
    x = (np.random.default_rng(0).random((300, 20)) < 0.3).astype(np.float32)
    model = npvae.VAE(20, 3, hidden=(16,))
    h = npvae.fit(model, x, x_val=x[:60], epochs=4, batch_size=50, objective="iwae", n_samples=5,
                  progress=False)
    assert h["loss"][-1] < h["loss"][0] and h["val_elbo"][-1] > h["val_elbo"][0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(objective="iwae", n_samples=3, beta=0.5), "takes beta=1"),
    (dict(objective="iwae", n_samples=3, free_bits=0.1), "takes beta=1 and free_bits=0"),
    (dict(objective="elbo", n_samples=3), "needs an importance-weighted objective such as 'iwae'"),
    (dict(objective="vimco"), "objective must be"),
    (dict(objective="iwae", n_samples=0), "n_samples must be >= 1"),
])
def test_bad_objectives(kwargs, match):
    model = npvae.VAE(4, 2, hidden=(3,))
    with pytest.raises(ValueError, match=match):
        model.loss_and_grad(np.full((2, 4), 0.5), rng=np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match=match):
        npvae.fit(model, np.full((8, 4), 0.5), epochs=1, progress=False, **kwargs)


def test_iwae_noise_shape_is_checked():
    model = npvae.VAE(4, 2, hidden=(3,))
    with pytest.raises(ValueError, match=r"eps must have shape \(3, 2, 2\)"):
        model.loss_and_grad(np.full((2, 4), 0.5), eps=np.zeros((2, 2)), objective="iwae", n_samples=3)


def test_log_likelihood_bad_input():
    model = npvae.VAE(4, 2, hidden=(3,))
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        model.log_likelihood(np.full((2, 4), 0.5), n_samples=0)
    with pytest.raises(ValueError, match=r"x must have shape \(any, 4\)"):
        model.log_likelihood(np.full((2, 3), 0.5))
