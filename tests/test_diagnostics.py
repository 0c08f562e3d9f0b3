import warnings

import numpy as np
import pytest

import npvae
from npvae import diagnostics


def model_with_one_active_unit():
    model = npvae.VAE(3, 2, hidden=(), dtype=np.float64)
    P = model.params
    P["encoder.mu.W"][...] = [[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    P["encoder.mu.b"][...] = [0.0, 0.3]
    P["encoder.logvar.W"][...] = 0.0
    P["encoder.logvar.b"][...] = [-1.0, 0.0]
    return model


def test_active_units_and_kl_per_dimension():
    model = model_with_one_active_unit()
    x = np.random.default_rng(0).random((500, 3))
    n, var = diagnostics.active_units(model, x)
    assert n == 1
    np.testing.assert_allclose(var, [4 * x[:, 0].var(), 0.0], atol=1e-12)
    kl = diagnostics.kl_per_dim(model, x)
    mu0 = 2 * x[:, 0]
    np.testing.assert_allclose(kl, [np.mean(0.5 * (mu0**2 + np.exp(-1) - 1 + 1)), 0.5 * 0.09], rtol=1e-12)


def test_gradient_norms_and_update_ratios():
    grads = {"a.W": np.full((2, 2), 1.0), "a.b": np.full(2, 2.0), "b.W": np.array([[3.0]]), "b.b": np.array([4.0])}
    norms = diagnostics.layer_grad_norms(grads)
    assert norms == pytest.approx({"a": np.sqrt(4 + 8), "b": 5.0})
    before = {"a.W": np.ones((2, 2)), "a.b": np.zeros(2)}
    after = {"a.W": np.ones((2, 2)) * 1.01, "a.b": np.zeros(2)}
    assert diagnostics.update_ratios(before, after)["a"] == pytest.approx(0.01)


def test_dead_relu_fraction():
    model = npvae.VAE(4, 2, hidden=(6,), activation="relu", dtype=np.float64)
    model.params["encoder.0.b"][:3] = -100.0  # three units never fire
    stats = diagnostics.activation_stats(model, np.random.default_rng(0).random((50, 4)))
    assert stats["encoder.0"]["dead"] == pytest.approx(0.5)
    tanh = npvae.VAE(4, 2, hidden=(6,), activation="tanh")
    assert diagnostics.activation_stats(tanh, np.ones((3, 4)) * 0.5)["encoder.0"]["dead"] is None


def test_posterior_collapse_warning():
    model = npvae.VAE(3, 2, hidden=(), dtype=np.float64)
    for k in ("encoder.mu.W", "encoder.mu.b", "encoder.logvar.W", "encoder.logvar.b"):
        model.params[k][...] = 0.0
    x = np.random.default_rng(0).random((100, 3))
    with pytest.warns(diagnostics.PosteriorCollapseWarning, match="0 of 2 latent units active"):
        assert diagnostics.check_posterior_collapse(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not diagnostics.check_posterior_collapse(model_with_one_active_unit(), x)


def test_a_narrow_but_informative_latent_is_not_a_collapse():
    """μ spread over ±0.05 (Var < 0.01: 'inactive' by the unit count) with σ = 0.001 carries
    several nats: no warning (the old criterion warned here)."""
    model = npvae.VAE(3, 1, hidden=(), dtype=np.float64)
    model.params["encoder.mu.W"][...] = 0.0
    model.params["encoder.mu.W"][0, 0] = 0.1
    model.params["encoder.mu.b"][...] = -0.05
    model.params["encoder.logvar.W"][...] = 0.0
    model.params["encoder.logvar.b"][...] = 2 * np.log(1e-3)
    x = np.random.default_rng(0).random((200, 3))
    n_active, var = diagnostics.active_units(model, x)
    assert n_active == 0 and var[0] < 0.01
    assert diagnostics.kl_per_dim(model, x)[0] > 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not diagnostics.check_posterior_collapse(model, x)


def test_fit_records_diagnostics(tmp_path):
    x = (np.random.default_rng(0).random((400, 16)) < 0.3).astype(np.float32)
    model = npvae.VAE(16, 3, hidden=(12,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", diagnostics.PosteriorCollapseWarning)
        h = npvae.fit(model, x, epochs=2, batch_size=50, diagnostics=x[:100], progress=False)
    d = h[-1]["diagnostics"]
    assert set(d) == {"active_units", "mu_variance", "kl_per_dim", "activations", "grad_norms", "update_ratios"}
    assert set(d["grad_norms"]) == {"encoder.0", "encoder.mu", "encoder.logvar", "decoder.0", "decoder.out"}
    assert all(0 < r < 1 for r in d["update_ratios"].values())
    assert h["active_units"][-1] == d["active_units"]
    assert "diagnostics" not in h.to_csv().splitlines()[0]
    h.to_json(tmp_path / "h.json")


def test_dead_units_of_a_separate_relu_layer_are_counted():
    from npvae import layers
    a = npvae.VAE(4, 2, encoder=[layers.Dense(3, "relu")], decoder=[layers.Dense(3, "relu")], dtype=np.float64)
    b = npvae.VAE(4, 2, encoder=[layers.Dense(3), layers.Activation("relu")],
                  decoder=[layers.Dense(3), layers.Activation("relu")], dtype=np.float64)
    x = np.random.default_rng(0).random((20, 4))
    sa, sb = diagnostics.activation_stats(a, x), diagnostics.activation_stats(b, x)
    assert sa["encoder.0"]["dead"] is not None and sb["encoder.1"]["dead"] is not None
    assert sb["encoder.0"]["dead"] is None  # a plain Dense can not die
