"""The public verification API: the gradient checker must catch wrong gradients."""
import numpy as np
import pytest
from hypothesis import given

from npvae.testing import GradientCheckError, check_gradients
from npvae.testing import strategies as nst


def quadratic(p):
    W, b = p["W"], p["b"]
    return float(np.sum(W**2) + np.sum(np.sin(b))), {"W": 2 * W, "b": np.cos(b)}


def test_correct_gradient_passes_with_a_readable_table():
    p = {"W": np.arange(6.0).reshape(2, 3), "b": np.array([0.1, -0.4])}
    before = {k: v.copy() for k, v in p.items()}
    report = check_gradients(quadratic, p)
    assert report.ok and report.max_rel < 1e-9
    text = str(report)
    assert "parameter" in text and "max rel" in text and "W" in text and "yes" in text
    for k in p:  # values restored exactly
        assert np.array_equal(p[k], before[k])


def test_wrong_gradient_is_caught_and_named():
    def wrong(p):
        loss, g = quadratic(p)
        g["b"] = g["b"] * 1.001
        return loss, g

    p = {"W": np.ones((2, 2)), "b": np.array([0.3])}
    with pytest.raises(GradientCheckError) as info:
        check_gradients(wrong, p)
    assert "b" in str(info.value) and "NO" in str(info.value)
    assert info.value.report.rows[0].max_rel < 1e-9  # W is fine
    report = check_gradients(wrong, p, raise_on_failure=False)
    assert not report.ok and report.rows[1].max_rel == pytest.approx(1e-3, rel=0.01)


def test_loss_only_functions_take_grads_separately():
    p = {"W": np.ones(3)}
    check_gradients(lambda q: float(np.sum(q["W"] ** 3)), p, grads={"W": 3 * np.ones(3)})
    with pytest.raises(ValueError, match="pass the analytic gradients"):
        check_gradients(lambda q: float(np.sum(q["W"])), p)


def test_float32_parameters_are_refused():
    with pytest.raises(TypeError, match="must be a float64 ndarray"):
        check_gradients(quadratic, {"W": np.ones(2, np.float32), "b": np.ones(1)})


def test_exception_in_fn_restores_the_parameter():
    p = {"W": np.ones(2)}
    calls = []

    def fn(q):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("boom")
        return float(q["W"].sum()), {"W": np.ones(2)}

    with pytest.raises(RuntimeError):
        check_gradients(fn, p)
    assert np.array_equal(p["W"], np.ones(2))


@given(nst.vae_configs())
def test_vae_config_strategy_builds_models(cfg):
    import npvae
    model = npvae.VAE(**cfg)
    assert model.dtype == np.float64 and 1 <= model.n_latent <= 6
