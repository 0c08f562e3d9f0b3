"""The gradient-flow trace: the engine's own step, recorded; the same numbers as without it."""
import numpy as np
import pytest

import npvae

LIKELIHOODS = [("bernoulli", {}), ("gaussian", {"sigma": 0.5}), ("gaussian", {"sigma": "learned"}),
               ("gaussian", {"sigma": "per_example"}), ("continuous_bernoulli", {})]


@pytest.mark.parametrize("lik,opts", LIKELIHOODS, ids=[f"{l}-{o.get('sigma', '')}" for l, o in LIKELIHOODS])
@pytest.mark.parametrize("hidden", [(), (5,), (6, 4)])
def test_trace_agrees_with_the_fused_step(lik, opts, hidden):
    model = npvae.VAE(7, 3, hidden=hidden, activation="elu", likelihood=lik, dtype=np.float64, **opts)
    x = np.random.default_rng(0).random((4, 7))
    eps = np.random.default_rng(1).standard_normal((4, 3))
    loss, grads, parts, trace = model.loss_and_grad(x, eps=eps, beta=0.6, trace=True)
    loss2, grads2, parts2 = model.loss_and_grad(x, eps=eps, beta=0.6)
    assert loss == pytest.approx(loss2, rel=1e-12)
    for k in grads2:
        np.testing.assert_allclose(grads[k], grads2[k], rtol=1e-11, atol=1e-14)
        np.testing.assert_array_equal(trace[f"grad.param.{k}"], grads[k])
    assert parts["kl"] == pytest.approx(parts2["kl"], rel=1e-12)


def test_trace_names_and_hand_checks():
    model = npvae.VAE(2, 1, hidden=(2,), activation="tanh", dtype=np.float64, seed=0)
    x, eps = np.array([[1.0, 0.0]]), np.array([[0.5]])
    beta = 0.8
    *_, T = model.loss_and_grad(x, eps=eps, beta=beta, trace=True)
    for name in ("x", "eps", "encoder.0.pre", "encoder.0.out", "mu", "logvar", "sigma", "z",
                 "decoder.0.out", "decoder.out", "reconstruction", "kl", "loss", "grad.decoder.out",
                 "grad.decoder.0.out", "grad.z", "grad.mu", "grad.logvar", "grad.encoder.0.out"):
        assert name in T
    mu, v, sig, z = T["mu"], T["logvar"], T["sigma"], T["z"]
    # the numbers a student checks by hand (corrections L6 and L7)
    np.testing.assert_allclose(sig, np.exp(v / 2))
    np.testing.assert_allclose(z, mu + sig * eps)
    np.testing.assert_allclose(T["kl"], 0.5 * (mu**2 + np.exp(v) - 1 - v).sum(1))
    np.testing.assert_allclose(T["grad.decoder.out"], 1 / (1 + np.exp(-T["decoder.out"])) - x)
    np.testing.assert_allclose(T["grad.mu"], T["grad.z"] + beta * mu)
    np.testing.assert_allclose(T["grad.logvar"], T["grad.z"] * 0.5 * sig * eps + beta * 0.5 * (np.exp(v) - 1))
    text = str(T)
    assert "grad.param.encoder.0.W" in text and "(2, 2)" in text


@pytest.mark.parametrize("kw", [dict(objective="iwae", n_samples=3), dict(free_bits=0.2), dict(beta=0.3)],
                         ids=["iwae", "free-bits", "beta"])
def test_trace_is_the_step_itself_for_every_objective(kw):
    """trace=True returns the loss, the gradients and the parts of the engine's step bit for
    bit (the same engine code, with a recorder), for ELBO and IWAE alike; the untraced call
    is that step too (free bits), or, for the ELBO and IWAE of a model the compiled path
    takes, the compiled step, equal to it to rounding."""
    from npvae import engine
    model = npvae.VAE(5, 2, hidden=(4,), activation="tanh", dtype=np.float64, seed=3)
    x = np.random.default_rng(0).random((6, 5))
    shape = (kw["n_samples"], 6, 2) if "n_samples" in kw else (6, 2)
    eps = np.random.default_rng(1).standard_normal(shape)
    out = model.loss_and_grad(x, eps=eps, trace=True, **kw)
    assert len(out) == 4
    loss, grads, parts, T = out
    loss2, grads2, parts2 = model.loss_and_grad(x, eps=eps, **kw)
    if "free_bits" in kw:  # the untraced call: the engine's step too
        assert loss == loss2 and parts == parts2
        for k in grads2:
            np.testing.assert_array_equal(grads[k], grads2[k])
    else:  # the untraced ELBO and IWAE: the compiled step
        G = model.new_grads()
        if "n_samples" in kw:
            ref, ref_parts = engine.iwae_step(model.plan, model.params, G, x, eps, model.workspaces(6),
                                              model.workspaces(6 * kw["n_samples"]), estimator="iwae")
        else:
            ref, ref_parts = engine.elbo_step(model.plan, model.params, G, x, eps, model.workspaces(6), **kw)
        assert loss == ref and parts == ref_parts and all(np.array_equal(grads[k], G[k]) for k in G)
        assert abs(loss - loss2) <= 1e-12 * abs(loss) and set(parts2) == set(parts)
        for k in parts2:
            assert abs(parts2[k] - parts[k]) <= 1e-12 * max(1.0, abs(parts[k])), k
        for k in grads2:
            np.testing.assert_allclose(grads[k], grads2[k], rtol=1e-12, atol=1e-15)
    for k in grads:
        np.testing.assert_array_equal(T[f"grad.param.{k}"], grads[k])
    assert T["z"].shape == shape and float(T["loss"]) == float(loss)
    if "n_samples" in kw:  # the normalised importance weights sum to 1 per example
        np.testing.assert_allclose(T["weights"].sum(axis=0), 1.0)
        np.testing.assert_allclose(T["z"], T["mu"] + T["sigma"] * eps)
