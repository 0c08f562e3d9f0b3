"""The VAE's public contract: the loss and its gradient, shapes, dtypes and bad input."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npvae
from npvae.testing import check_gradients
from npvae.testing import strategies as nst

from helpers import reference_forward

ACTIVATIONS = sorted(npvae.activations.ACTIVATIONS)
LIKELIHOODS = [
    ("bernoulli", {}),
    ("gaussian", {"sigma": 0.5}),
    ("gaussian", {"sigma": "learned"}),
    ("gaussian", {"sigma": "per_example"}),
    ("continuous_bernoulli", {}),
]
FD_EXAMPLES = int(os.environ.get("NPVAE_FD_EXAMPLES", "6"))


def _data(data, lik, n_inputs, batch):
    if lik == "gaussian":
        return data.draw(nst.arrays((batch, n_inputs), low=-2, high=2))
    return data.draw(nst.unit_arrays((batch, n_inputs)))


@pytest.mark.parametrize("lik,opts", LIKELIHOODS, ids=[f"{l}-{o.get('sigma', '')}" for l, o in LIKELIHOODS])
@pytest.mark.parametrize("act", ACTIVATIONS)
@settings(max_examples=FD_EXAMPLES)
@given(data=st.data())
def test_loss_and_grad_matches_finite_differences(act, lik, opts, data):
    n_inputs = data.draw(st.integers(1, 16), label="n_inputs")
    n_latent = data.draw(st.integers(1, 6), label="n_latent")
    hidden = tuple(data.draw(st.lists(st.integers(1, 16), max_size=2), label="hidden"))
    batch = data.draw(st.integers(1, 8), label="batch")
    beta = data.draw(st.floats(0, 2), label="beta")
    model = npvae.VAE(n_inputs, n_latent, hidden=hidden, activation=act, likelihood=lik,
                      dtype=np.float64, seed=data.draw(nst.seeds()), **opts)
    x = _data(data, lik, n_inputs, batch)
    eps = data.draw(nst.arrays((batch, n_latent)), label="eps")
    ref_loss, _, _ = reference_forward(model, x, eps, beta, clear_kinks=0.05)

    loss, grads, parts = model.loss_and_grad(x, eps=eps, beta=beta)
    assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-12)
    assert list(grads) == list(model.params)
    check_gradients(lambda p: model.loss_and_grad(x, eps=eps, beta=beta), model.params)


@pytest.mark.parametrize("lik,opts", LIKELIHOODS, ids=[f"{l}-{o.get('sigma', '')}" for l, o in LIKELIHOODS])
def test_parameter_names_follow_the_contract(lik, opts):
    model = npvae.VAE(10, 3, hidden=(8, 6), likelihood=lik, **opts)
    names = ["encoder.0.W", "encoder.0.b", "encoder.1.W", "encoder.1.b",
             "encoder.mu.W", "encoder.mu.b", "encoder.logvar.W", "encoder.logvar.b",
             "decoder.0.W", "decoder.0.b", "decoder.1.W", "decoder.1.b",
             "decoder.out.W", "decoder.out.b"]
    if opts.get("sigma") == "per_example":
        names += ["decoder.out_logvar.W", "decoder.out_logvar.b"]
    if opts.get("sigma") == "learned":
        names += ["likelihood.logvar"]
    assert list(model.params) == names
    shapes = {k: v.shape for k, v in model.params.items()}
    assert shapes["encoder.0.W"] == (10, 8) and shapes["encoder.1.W"] == (8, 6)
    assert shapes["encoder.mu.W"] == (6, 3) and shapes["decoder.0.W"] == (3, 6)
    assert shapes["decoder.1.W"] == (6, 8) and shapes["decoder.out.W"] == (8, 10)


def test_linear_model_with_no_hidden_layers():
    model = npvae.VAE(5, 2, hidden=(), likelihood="gaussian", dtype=np.float64)
    assert list(model.params) == ["encoder.mu.W", "encoder.mu.b", "encoder.logvar.W",
                                  "encoder.logvar.b", "decoder.out.W", "decoder.out.b"]
    x = np.random.default_rng(0).normal(size=(7, 5))
    eps = np.random.default_rng(1).normal(size=(7, 2))
    check_gradients(lambda p: model.loss_and_grad(x, eps=eps), model.params)
    P = model.params
    np.testing.assert_allclose(model.encode(x)[0], x @ P["encoder.mu.W"] + P["encoder.mu.b"])
    z = np.ones((1, 2))
    np.testing.assert_allclose(model.decode(z), z @ P["decoder.out.W"] + P["decoder.out.b"])


def test_loss_is_minus_elbo_at_beta_one():  # correction L2: the cost is F = −ELBO
    model = npvae.VAE(6, 2, hidden=(5,), dtype=np.float64)
    x = np.random.default_rng(0).random((9, 6))
    eps = np.random.default_rng(1).normal(size=(9, 2))
    loss, _, parts = model.loss_and_grad(x, eps=eps)
    assert loss == pytest.approx(-parts["elbo"])
    assert loss == pytest.approx(parts["reconstruction"] + parts["kl"])
    loss_half, _, parts_half = model.loss_and_grad(x, eps=eps, beta=0.5)
    assert loss_half == pytest.approx(parts["reconstruction"] + 0.5 * parts["kl"])
    assert parts_half["elbo"] == pytest.approx(parts["elbo"])


def test_gradient_descent_raises_the_elbo():
    """Following −grads must improve the ELBO: the sign of the cost is right (correction L2)."""
    rng = np.random.default_rng(0)
    x = (rng.random((64, 12)) < 0.3).astype(np.float64)
    model = npvae.VAE(12, 2, hidden=(16,), dtype=np.float64)
    eps = rng.normal(size=(64, 2))
    before = model.loss_and_grad(x, eps=eps)[0]
    for _ in range(50):
        _, grads, _ = model.loss_and_grad(x, eps=eps)
        for k in model.params:
            model.params[k] -= 0.05 * grads[k]
    assert model.loss_and_grad(x, eps=eps)[0] < before - 0.5


def test_elbo_per_example_matches_the_loss_terms():
    model = npvae.VAE(6, 3, hidden=(4,), activation="tanh", dtype=np.float64)
    x = np.random.default_rng(0).random((5, 6))
    # one block of examples: its noise is the block's stream, spawned from the generator
    eps = npvae.parallel.block_streams(np.random.default_rng(3), 1)[0].standard_normal((5, 3))
    _, rec, kl = reference_forward(model, x, eps)
    np.testing.assert_allclose(model.elbo(x, rng=np.random.default_rng(3)), -(rec + kl), rtol=1e-12)
    assert np.array_equal(model.elbo(x), model.elbo(x))  # rng=None is repeatable
    many = model.elbo(x, n_samples=4000, rng=np.random.default_rng(1))
    # more samples, less noise: E_q[ln p(x|z)] converges, the KL is analytic
    again = model.elbo(x, n_samples=4000, rng=np.random.default_rng(2))
    np.testing.assert_allclose(many, again, atol=0.05)
    # blocks of 2 examples: block j draws its ε from the j-th stream spawned from the generator
    streams = npvae.parallel.block_streams(np.random.default_rng(3), 3)
    eps2 = np.concatenate([streams[j].standard_normal((len(x[2 * j:2 * j + 2]), 3)) for j in range(3)])
    _, rec2, kl2 = reference_forward(model, x, eps2)
    np.testing.assert_allclose(model.elbo(x, batch_size=2, rng=np.random.default_rng(3)), -(rec2 + kl2),
                               rtol=1e-12)


def test_eps_makes_the_call_deterministic_and_rng_reproducible():
    model = npvae.VAE(8, 2, hidden=(6,))
    x = np.random.default_rng(0).random((4, 8)).astype(np.float32)
    eps = np.random.default_rng(1).standard_normal((4, 2)).astype(np.float32)
    a = model.loss_and_grad(x, eps=eps)
    b = model.loss_and_grad(x, eps=eps)
    assert a[0] == b[0] and all(np.array_equal(a[1][k], b[1][k]) for k in a[1])
    c = model.loss_and_grad(x, rng=np.random.default_rng(5))
    d = model.loss_and_grad(x, rng=np.random.default_rng(5))
    assert c[0] == d[0]
    # with neither, the model's own seeded stream is used: same seed, same sequence
    m1, m2 = npvae.VAE(8, 2, hidden=(6,), seed=4), npvae.VAE(8, 2, hidden=(6,), seed=4)
    assert [m1.loss_and_grad(x)[0] for _ in range(3)] == [m2.loss_and_grad(x)[0] for _ in range(3)]


@pytest.mark.parametrize("lik,opts", LIKELIHOODS, ids=[f"{l}-{o.get('sigma', '')}" for l, o in LIKELIHOODS])
def test_float32_stays_float32(lik, opts):
    model = npvae.VAE(6, 2, hidden=(5,), likelihood=lik, **opts)
    assert all(p.dtype == np.float32 for p in model.params.values())
    x = np.random.default_rng(0).random((4, 6))  # float64 data is cast to the model dtype
    loss, grads, parts = model.loss_and_grad(x, rng=np.random.default_rng(0), beta=0.3)
    assert loss.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    assert parts["reconstruction"].dtype == np.float32 and parts["kl"].dtype == np.float32
    mu, lv = model.encode(x)
    assert mu.dtype == np.float32 and lv.dtype == np.float32
    assert model.decode(mu).dtype == np.float32
    assert model.sample(3, np.random.default_rng(0)).dtype == np.float32
    assert model.sample(3, np.random.default_rng(0), mean=False).dtype == np.float32
    assert model.reconstruct(x).dtype == np.float32
    assert model.reconstruct(x, rng=np.random.default_rng(0)).dtype == np.float32
    assert model.elbo(x).dtype == np.float32


def test_float32_agrees_with_float64():
    m32 = npvae.VAE(20, 4, hidden=(16,), activation="tanh", seed=2)
    m64 = npvae.VAE(20, 4, hidden=(16,), activation="tanh", seed=2, dtype=np.float64)
    x = np.random.default_rng(0).random((8, 20))
    eps = np.random.default_rng(1).normal(size=(8, 4))
    l32, g32, _ = m32.loss_and_grad(x, eps=eps)
    l64, g64, _ = m64.loss_and_grad(x, eps=eps)
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in g64:
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-5)


def test_decode_sample_reconstruct():
    model = npvae.VAE(6, 2, hidden=(5,))
    p = model.decode(np.zeros((3, 2)))
    assert p.shape == (3, 6) and np.all((p > 0) & (p < 1))
    s = model.sample(10, np.random.default_rng(0), mean=False)
    assert s.shape == (10, 6) and set(np.unique(s)) <= {0.0, 1.0}
    assert np.array_equal(model.sample(4, np.random.default_rng(1)), model.sample(4, np.random.default_rng(1)))
    x = np.random.default_rng(0).random((3, 6))
    assert model.reconstruct(x).shape == (3, 6)


def test_repr_and_config():
    model = npvae.VAE(784, 20, likelihood="gaussian", sigma="learned")
    r = repr(model)
    assert "n_inputs=784" in r and "sigma='learned'" in r and "float32" in r
    cfg = model.config()
    assert cfg["hidden"] == [400] and cfg["sigma"] == "learned"
    assert model.n_params == sum(v.size for v in model.params.values())


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------
@pytest.fixture
def model():
    return npvae.VAE(4, 2, hidden=(3,))


GOOD = np.full((2, 4), 0.5)


@pytest.mark.parametrize("x,match", [
    (np.full((2, 5), 0.5), r"x must have shape \(any, 4\), got \(2, 5\)"),
    (np.full((4,), 0.5), r"x must have shape"),
    (np.full((0, 4), 0.5), r"x is empty"),
    (np.array([[0.5, np.nan, 0.5, 0.5]]), r"x contains 1 NaN or infinite"),
    (np.array([[0.5, np.inf, 0.5, 0.5]]), r"x contains 1 NaN or infinite"),
    (np.array([[0.5, 1.2, 0.5, 0.5]]), r"Bernoulli targets x must lie in \[0, 1\]"),
    (np.array([[0.5, -0.2, 0.5, 0.5]]), r"Bernoulli targets x must lie in \[0, 1\]"),
])
def test_bad_x_raises_value_error(model, x, match):
    with pytest.raises(ValueError, match=match):
        model.loss_and_grad(x, eps=np.zeros((x.shape[0] if x.ndim else 1, 2)))


@pytest.mark.parametrize("x", [np.ones((2, 4), dtype=int), np.ones((2, 4), dtype=bool),
                               np.ones((2, 4), dtype=complex), np.array([["a"] * 4] * 2)])
def test_non_float_x_raises_type_error(model, x):
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        model.loss_and_grad(x, eps=np.zeros((2, 2)))


@pytest.mark.parametrize("eps,match", [
    (np.zeros((2, 3)), r"eps must have shape \(2, 2\), got \(2, 3\)"),
    (np.zeros((3, 2)), r"eps must have shape \(2, 2\)"),
    (np.array([[0.0, np.nan], [0.0, 0.0]]), "eps contains 1 NaN"),
])
def test_bad_eps(model, eps, match):
    with pytest.raises(ValueError, match=match):
        model.loss_and_grad(GOOD, eps=eps)


def test_bad_beta_and_rng(model):
    with pytest.raises(ValueError, match="beta must be >= 0"):
        model.loss_and_grad(GOOD, beta=-1)
    with pytest.raises(ValueError, match="beta must be finite"):
        model.loss_and_grad(GOOD, beta=float("nan"))
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        model.loss_and_grad(GOOD, rng=42)


def test_bad_z_and_sizes(model):
    with pytest.raises(ValueError, match=r"z must have shape \(any, 2\)"):
        model.decode(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="n must be >= 1"):
        model.sample(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        model.elbo(GOOD, n_samples=0)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(n_inputs=0, n_latent=2), ValueError, "n_inputs must be >= 1"),
    (dict(n_inputs=3, n_latent=-1), ValueError, "n_latent must be >= 1"),
    (dict(n_inputs=3.5, n_latent=2), TypeError, "n_inputs must be an integer"),
    (dict(n_inputs=3, n_latent=2, hidden=(4, 0)), ValueError, r"hidden\[1\] must be >= 1"),
    (dict(n_inputs=3, n_latent=2, activation="swish"), ValueError, "activation must be one of"),
    (dict(n_inputs=3, n_latent=2, likelihood="poisson"), ValueError, "likelihood must be one of"),
    (dict(n_inputs=3, n_latent=2, dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (dict(n_inputs=3, n_latent=2, likelihood="gaussian", sigma=-1), ValueError, "sigma must be"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        npvae.VAE(**kwargs)


@settings(max_examples=3 * FD_EXAMPLES)
@given(data=st.data())
def test_free_bits_gradient_matches_finite_differences(data):
    from hypothesis import assume
    n_latent = data.draw(st.integers(1, 6))
    batch = data.draw(st.integers(1, 8))
    model = npvae.VAE(7, n_latent, hidden=(6,), activation="tanh", dtype=np.float64,
                      seed=data.draw(nst.seeds()))
    x = data.draw(nst.unit_arrays((batch, 7)))
    eps = data.draw(nst.arrays((batch, n_latent)))
    mu, lv = model.encode(x)
    kl_dims = npvae.ops.kl_normal_per_dim(mu, lv).mean(axis=0)
    lam = data.draw(st.floats(0.001, 2.0))
    assume(np.all(np.abs(kl_dims - lam) > 0.01))  # the stencil must not cross the floor
    beta = data.draw(st.floats(0.1, 2.0))
    loss, _, parts = model.loss_and_grad(x, eps=eps, beta=beta, free_bits=lam)
    assert parts["kl_objective"] == pytest.approx(np.maximum(kl_dims, lam).sum())
    assert parts["kl"] == pytest.approx(kl_dims.sum())
    assert loss == pytest.approx(parts["reconstruction"] + beta * np.maximum(kl_dims, lam).sum())
    check_gradients(lambda p: model.loss_and_grad(x, eps=eps, beta=beta, free_bits=lam), model.params)


def test_free_bits_below_the_floor_leaves_no_kl_gradient():
    model = npvae.VAE(5, 2, hidden=(), dtype=np.float64)
    x = np.random.default_rng(0).random((4, 5))
    eps = np.zeros((4, 2))
    g_big = model.loss_and_grad(x, eps=eps, free_bits=100.0)[1]
    g_rec = model.loss_and_grad(x, eps=eps, beta=0.0)[1]
    for k in g_big:
        np.testing.assert_allclose(g_big[k], g_rec[k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("init", ["fan_in", "glorot", "he", "auto"])
def test_initialisation_choices(init):
    model = npvae.VAE(300, 4, hidden=(200,), init=init)
    W = model.params["encoder.0.W"]
    want = {"fan_in": 1 / (3 * 300), "glorot": 2 / 500, "he": 2 / 300, "auto": 2 / 300}[init]
    assert W.var() == pytest.approx(want, rel=0.05)
    assert all(np.all(model.params[k] == 0) for k in model.params if k.endswith(".b"))
    assert model.config()["init"] == init
    with pytest.raises(ValueError, match="init must be 'auto' or one of"):
        npvae.VAE(3, 2, init="zeros")


# ----------------------------------------------------------------------------------------
# A user's layer needs only init and forward; config() only to be saved
# ----------------------------------------------------------------------------------------
class Bare:
    """A user's layer with init and forward only: y = tanh(x W + b)."""

    def __init__(self, n_out):
        self.n_out = n_out

    def init(self, rng, n_in):
        return self.n_out, {"W": rng.normal(0, 1 / np.sqrt(n_in), (n_in, self.n_out)), "b": np.zeros(self.n_out)}

    def forward(self, params, x):
        W, b = params["W"], params["b"]
        y = np.tanh(x @ W + b)

        def backward(dy):
            da = dy * (1 - y * y)
            return da @ W.T, {"W": x.T @ da, "b": da.sum(axis=0)}
        return y, backward


def _bare_model(cls=Bare):
    return npvae.VAE(6, 2, encoder=[cls(5)], decoder=[cls(4)], seed=3)


def _binary_data(n=200):
    return (np.random.default_rng(0).random((n, 6)) < 0.3).astype(np.float32)


def test_a_layer_with_only_init_and_forward_builds_trains_and_evaluates():
    model = _bare_model()
    x = _binary_data()
    history = npvae.fit(model, x, epochs=4, batch_size=25, progress=False)  # the engine path
    assert history[-1]["loss"] < history[0]["loss"]
    elbo = model.elbo(x[:50])
    ll = model.log_likelihood(x[:10], n_samples=64, progress=False)
    assert elbo.shape == (50,) and np.all(np.isfinite(elbo))
    assert ll.shape == (10,) and np.all(np.isfinite(ll))
    assert model.reconstruct(x[:3]).shape == (3, 6) and model.sample(2, np.random.default_rng(0)).shape == (2, 6)
    model64 = npvae.VAE(6, 2, encoder=[Bare(5)], decoder=[Bare(4)], dtype=np.float64, seed=1)
    x64 = x[:4].astype(np.float64)
    eps = np.random.default_rng(1).standard_normal((4, 2))
    check_gradients(lambda p: model64.loss_and_grad(x64, eps=eps), model64.params)


def _assert_the_config_message(exc_info, where="encoder[0]"):
    msg = str(exc_info.value)
    for part in (f"{where} (Bare) has no config() method", "def config(self):", 'return {"n_out": self.n_out}',
                 "npvae.load(path, layers=[Bare])", "Nothing has been written"):
        assert part in msg, (part, msg)


def test_saving_a_model_of_a_layer_without_config_says_what_to_add_and_writes_nothing(tmp_path):
    model = _bare_model()
    before = {k: v.copy() for k, v in model.params.items()}
    x = _binary_data()
    with pytest.raises(TypeError) as exc_info:
        model.save(tmp_path / "sub" / "m.npz")
    _assert_the_config_message(exc_info)
    with pytest.raises(TypeError) as exc_info:
        model.config()
    _assert_the_config_message(exc_info)
    # fit with a checkpoint folder refuses before training or creating anything
    with pytest.raises(TypeError) as exc_info:
        npvae.fit(model, x, epochs=2, batch_size=25, progress=False, checkpoint_dir=tmp_path / "ck")
    _assert_the_config_message(exc_info)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary file, no folder
    assert all(np.array_equal(model.params[k], before[k]) for k in before)


def test_adding_config_makes_the_same_model_save_and_load(tmp_path):
    class Bare2(Bare):  # a class of this test's own: config() is added to it below
        pass

    model = _bare_model(Bare2)
    x = _binary_data()
    npvae.fit(model, x, epochs=2, batch_size=25, progress=False)
    with pytest.raises(TypeError, match="Bare2"):
        model.save(tmp_path / "m.npz")
    Bare2.config = lambda self: {"n_out": self.n_out}  # what the message says to add; the trained model is kept
    path = model.save(tmp_path / "m.npz")
    again = npvae.load(path, layers=[Bare2])
    assert all(np.array_equal(again.params[k], model.params[k]) for k in model.params)
    np.testing.assert_array_equal(again.elbo(x[:20]), model.elbo(x[:20]))
    h = npvae.fit(model, x, epochs=1, batch_size=25, progress=False, checkpoint_dir=tmp_path / "ck")
    assert len(h) == 1 and list((tmp_path / "ck").glob("ckpt-*.npz"))


def test_a_layer_needs_init_and_forward():
    class NoForward:
        def init(self, rng, n_in):
            return 3, {}

    with pytest.raises(TypeError, match=r"encoder\[0\].*no forward\(\) method.*init\(rng, n_in\)"):
        npvae.VAE(6, 2, encoder=[NoForward()], decoder=[])


def test_a_saveable_layer_named_like_a_built_in_one_is_refused_at_once():
    class Dense(Bare):  # would load as npvae's Dense
        def config(self):
            return {"n_out": self.n_out}

    with pytest.raises(TypeError, match="like npvae's built-in layer"):
        npvae.VAE(6, 2, encoder=[Dense(3)], decoder=[])
