"""DReG and STL, the two other estimators of the importance-weighted bound's encoder gradient,
verified two ways (docs/math.md, section 8):

(i)  each is the exact gradient of its stated surrogate (central finite differences, float64,
     hypothesis-drawn networks, batches, K): with q's parameters held at their current value
     inside ln q, and the weights c_k held constant,
         S(φ) = −(1/B) Σ_b Σ_k c_kb ln w_kb(φ),    c = w̃² (DReG), c = w̃ (STL);
     and the decoder's gradient is the plain IWAE gradient's;
(ii) its expectation over ε is what theory says (Monte Carlo, with a statistical tolerance):
     DReG's equals the plain IWAE gradient's; STL's equals the ELBO's at K = 1, and differs
     from the IWAE gradient's at K > 1 (a bias measured and reported, not hidden).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import npvae
from npvae import engine, ops

ESTIMATORS = {"iwae-dreg": "dreg", "iwae-stl": "stl"}


def log_weights(model, x, eps, mu0, lv0):
    """ln w (K, B) with z = μ + σ ε from the model's current encoder, and ln q evaluated with
    the given (μ0, v0): q's parameters held fixed."""
    K, B, J = eps.shape
    mu, lv = model.encode(x)
    z = mu + np.exp(0.5 * lv) * eps
    rows = z.reshape(K * B, J)
    x_rows = np.broadcast_to(x, (K, B, x.shape[1])).reshape(K * B, -1)
    log_px = engine.log_px_rows(model.plan, model.params, np.ascontiguousarray(x_rows), np.ascontiguousarray(rows),
                                model.workspaces(K * B)).reshape(K, B)
    log_q = -0.5 * (((z - mu0) ** 2) / np.exp(lv0) + lv0 + np.log(2 * np.pi)).sum(axis=-1)
    return log_px + ops.standard_normal_log_prob(z) - log_q


def normalised_weights(lw):
    e = np.exp(lw - lw.max(axis=0))
    return e / e.sum(axis=0)


@settings(max_examples=25, deadline=None)
@given(hidden=st.lists(st.integers(1, 4), max_size=2).map(tuple), J=st.integers(1, 3), B=st.integers(1, 3),
       K=st.integers(1, 4), act=st.sampled_from(["tanh", "elu", "softplus"]),
       lik=st.sampled_from(["bernoulli", "gaussian"]), objective=st.sampled_from(list(ESTIMATORS)),
       seed=st.integers(0, 2**16))
def test_each_estimator_is_the_gradient_of_its_surrogate(hidden, J, B, K, act, lik, objective, seed):
    rng = np.random.default_rng(seed)
    D = 4
    m = npvae.VAE(D, J, hidden=hidden, activation=act, likelihood=lik, dtype=np.float64, seed=seed,
                  **({"sigma": 0.8} if lik == "gaussian" else {}))
    for v in m.params.values():  # away from the initial values: weights of every size
        v += 0.3 * rng.standard_normal(v.shape)
    x = rng.random((B, D)) if lik == "bernoulli" else rng.standard_normal((B, D))
    eps = rng.standard_normal((K, B, J))
    _, G, _ = m.loss_and_grad(x, eps=eps, objective=objective, n_samples=K)
    _, G_plain, _ = m.loss_and_grad(x, eps=eps, objective="iwae", n_samples=K)
    mu0, lv0 = m.encode(x)
    wn = normalised_weights(log_weights(m, x, eps, mu0, lv0))
    c = wn ** 2 if objective == "iwae-dreg" else wn

    def surrogate():
        return -float((c * log_weights(m, x, eps, mu0, lv0)).sum()) / B

    h = 1e-6
    for name, p in m.params.items():
        if not name.startswith("encoder."):
            # the decoder's and the likelihood's gradient: the plain IWAE gradient's
            np.testing.assert_allclose(G[name], G_plain[name], rtol=1e-12, atol=1e-14, err_msg=name)
            continue
        fd = np.empty_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            up = surrogate()
            p[i] = old - h
            down = surrogate()
            p[i] = old
            fd[i] = (up - down) / (2 * h)
        scale = max(1.0, float(np.abs(fd).max()))
        np.testing.assert_allclose(G[name], fd, rtol=1e-6, atol=1e-7 * scale, err_msg=name)


def encoder_gradients(model, x, eps_draws, objective, K):
    """The encoder's gradient (flattened) for each ε draw: an (M, n) array."""
    out = []
    for eps in eps_draws:
        e = eps if objective != "elbo" else eps[0]
        kw = dict(objective=objective, n_samples=K) if objective != "elbo" else {}
        _, G, _ = model.loss_and_grad(x, eps=e, **kw)
        out.append(np.concatenate([g.ravel() for k, g in G.items() if k.startswith("encoder.")]))
    return np.array(out)


def gradients_on_shared_draws(model, x, K, M, seed, objectives):
    """{objective: (M, n) encoder gradients}, every objective on the same M draws of ε."""
    draws = np.random.default_rng(seed).standard_normal((M, K, x.shape[0], model.n_latent))
    return {o: encoder_gradients(model, x, draws, o, K) for o in objectives}


def paired_z(a, b):
    """z-scores of the mean of a − b (paired draws), per coordinate."""
    d = a - b
    se = d.std(axis=0, ddof=1) / np.sqrt(len(d))
    keep = se > 1e-12
    return d.mean(axis=0)[keep] / se[keep]


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(7)
    x = (rng.random((200, 6)) < 0.4).astype(np.float64)
    m = npvae.VAE(6, 2, hidden=(5,), activation="tanh", dtype=np.float64, seed=3)
    npvae.fit(m, x, epochs=15, batch_size=20, progress=False, compiled=False)  # a posterior that is not the prior
    return m, x[:3]


def test_dreg_is_unbiased_for_the_iwae_gradient(trained):
    m, x = trained
    g = gradients_on_shared_draws(m, x, 5, 3000, 11, ("iwae", "iwae-dreg", "iwae-stl"))
    z = paired_z(g["iwae-dreg"], g["iwae"])
    assert np.abs(z).max() < 4.5, z  # about 40 coordinates: 4.5σ is a 3e-4 family-wise false alarm
    # and the test has power: a slip (the weights w̃ instead of w̃², i.e. STL) is detected
    assert np.abs(paired_z(g["iwae-stl"], g["iwae"])).max() > 6


def test_stl_is_unbiased_for_the_elbo_gradient_at_k_1(trained):
    m, x = trained
    g = gradients_on_shared_draws(m, x, 1, 4000, 12, ("elbo", "iwae-stl"))
    z = paired_z(g["iwae-stl"], g["elbo"])
    assert np.abs(z).max() < 4.5, z
    # (its variance is lower only where q is close to the true posterior, its selling point:
    # not a property of every model, so measured in docs/math.md, not asserted here)


def test_stl_is_biased_for_the_iwae_gradient_at_k_above_1(trained):
    m, x = trained
    g = gradients_on_shared_draws(m, x, 5, 3000, 13, ("iwae", "iwae-stl"))
    plain, stl = g["iwae"], g["iwae-stl"]
    bias = stl.mean(axis=0) - plain.mean(axis=0)
    z = paired_z(stl, plain)
    assert np.abs(z).max() > 6  # measured, not hidden: docs/math.md reports its size
    rel = np.linalg.norm(bias) / np.linalg.norm(plain.mean(axis=0))
    assert 0.01 < rel < 10


def test_the_estimators_train(trained):
    # all three reach a similar bound on the same data and seed (a smoke test of fit's path)
    rng = np.random.default_rng(7)
    x = (rng.random((200, 6)) < 0.4).astype(np.float32)
    bounds = {}
    for objective in ("iwae", "iwae-dreg", "iwae-stl"):
        m = npvae.VAE(6, 2, hidden=(5,), seed=3)
        h = npvae.fit(m, x, epochs=10, batch_size=20, objective=objective, n_samples=5, progress=False)
        bounds[objective] = h[-1]["loss"]
        assert np.isfinite(bounds[objective])
    assert max(bounds.values()) - min(bounds.values()) < 0.5, bounds
