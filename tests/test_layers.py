import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from npvae import activations, layers
from npvae.testing import check_gradients
from npvae.testing import strategies as nst

from helpers import agree_elementwise

KINKED = ("relu", "leaky_relu", "elu")


@pytest.mark.parametrize("act", sorted(activations.ACTIVATIONS))
@given(data=st.data())
def test_dense_gradients(act, data):
    kinked = act in KINKED
    b, n_in = data.draw(nst.shapes(batch=(1, 4) if kinked else (1, 8), width=(1, 8)))
    p = data.draw(nst.dense_params(n_in=n_in, n_out=data.draw(st.integers(1, 8))))
    x = data.draw(nst.arrays((b, n_in)))
    if kinked:  # keep the stencil (steps up to 2e-3) away from the kink at 0
        assume(np.all(np.abs(x @ p["W"] + p["b"]) > 0.05))
    dy = data.draw(nst.arrays((b, p["W"].shape[1])))
    params = {"x": x, "W": p["W"], "b": p["b"]}

    def fn(q):
        y, bp = layers.dense(q["x"], q["W"], q["b"], act)
        dx, dW, db = bp(dy)
        return float(np.sum(y * dy)), {"x": dx, "W": dW, "b": db}

    check_gradients(fn, params)


@given(data=st.data(), act=st.sampled_from(["tanh", "sigmoid", "softplus", "identity"]))
def test_mlp_gradients(data, act):
    widths = data.draw(st.lists(st.integers(1, 8), min_size=2, max_size=4))
    mlp = layers.MLP("net", [(str(i), widths[i], widths[i + 1], act) for i in range(len(widths) - 1)])
    params = mlp.init(np.random.default_rng(data.draw(nst.seeds())), np.float64)
    b = data.draw(st.integers(1, 6))
    x = data.draw(nst.arrays((b, widths[0])))
    dy = data.draw(nst.arrays((b, widths[-1])))
    params["x"] = x

    def fn(q):
        y, bp = mlp.forward(q, q["x"])
        dx, grads = bp(dy)
        grads["x"] = dx
        return float(np.sum(y * dy)), grads

    check_gradients(fn, params)


def test_mlp_names_and_repr():
    mlp = layers.MLP("encoder", [("0", 4, 3, "relu"), ("1", 3, 2, "tanh")])
    params = mlp.init(np.random.default_rng(0), np.float32)
    assert list(params) == ["encoder.0.W", "encoder.0.b", "encoder.1.W", "encoder.1.b"]
    assert params["encoder.0.W"].shape == (4, 3) and params["encoder.1.b"].shape == (2,)
    assert all(v.dtype == np.float32 for v in params.values())
    assert "encoder.0: 4->3 relu" in repr(mlp)


def test_first_layer_skips_input_gradient():
    x = np.ones((2, 3))
    _, bp = layers.dense(x, np.ones((3, 2)), np.zeros(2), need_dx=False)
    dx, dW, db = bp(np.ones((2, 2)))
    assert dx is None and dW.shape == (3, 2) and db.shape == (2,)


@pytest.mark.parametrize("init,var", [("glorot", lambda i, o: 2 / (i + o)), ("he", lambda i, o: 2 / i)])
def test_initialiser_variance(init, var):
    n_in, n_out = 300, 200
    W, b = layers.init_dense(np.random.default_rng(0), n_in, n_out, init=init, dtype=np.float64)
    assert W.shape == (n_in, n_out) and np.all(b == 0)
    assert W.var() == pytest.approx(var(n_in, n_out), rel=0.03)
    assert abs(W.mean()) < 5 * np.sqrt(var(n_in, n_out) / W.size)


def test_initialisers_are_seeded_and_typed():
    a = layers.init_dense(np.random.default_rng(7), 5, 4, dtype=np.float32)[0]
    b = layers.init_dense(np.random.default_rng(7), 5, 4, dtype=np.float32)[0]
    assert a.dtype == np.float32 and np.array_equal(a, b)
    with pytest.raises(ValueError, match="init must be one of"):
        layers.init_dense(np.random.default_rng(0), 2, 2, init="lecun")


# ----------------------------------------------------------------------------------------
# Layer objects: the contract, gradients by central differences, the intended mathematics
# ----------------------------------------------------------------------------------------
from npvae.testing import check_layer  # noqa: E402


@given(data=st.data(), kind=st.sampled_from(["dense", "dense-tanh", "activation-elu", "gated"]))
def test_layer_objects_match_finite_differences(data, kind):
    n_in, n_out = data.draw(st.integers(1, 7)), data.draw(st.integers(1, 7))
    layer = {"dense": layers.Dense(n_out), "dense-tanh": layers.Dense(n_out, "tanh"),
             "activation-elu": layers.Activation("elu"), "gated": layers.GatedDense(n_out)}[kind]
    x = data.draw(nst.arrays((data.draw(st.integers(1, 5)), n_in)))
    if kind == "activation-elu":
        assume(np.all(np.abs(x) > 0.05))  # away from the kink
    check_layer(layer, n_in, x=x, seed=data.draw(nst.seeds()))


def test_gated_dense_is_a_linear_unit_times_a_sigmoid_gate():
    layer = layers.GatedDense(3)
    n_out, p = layer.init(np.random.default_rng(0), 4)
    assert n_out == 3 and set(p) == {"W", "b", "V", "c"}
    x = np.random.default_rng(1).normal(size=(5, 4))
    h, _ = layer.forward(p, x)
    np.testing.assert_allclose(h, (x @ p["W"] + p["b"]) / (1 + np.exp(-(x @ p["V"] + p["c"]))))
    p["V"][...] = 0.0
    p["c"][...] = 50.0  # gate open: the plain linear unit
    np.testing.assert_allclose(layer.forward(p, x)[0], x @ p["W"] + p["b"])
    p["c"][...] = -50.0  # gate shut
    assert np.abs(layer.forward(p, x)[0]).max() < 1e-15


def test_dense_object_draws_what_the_model_always_drew():
    """Dense.init uses the same generator draws as the model's initialiser (fan-in, glorot,
    he), so a VAE built from layers starts where the classic one does."""
    for scheme in layers.INITIALISERS:
        n, p = layers.Dense(4, init=scheme).init(np.random.default_rng(3), 5)
        W, b = layers.init_dense(np.random.default_rng(3), 5, 4, init=scheme, dtype=np.float64)
        assert n == 4 and np.array_equal(p["W"], W) and np.array_equal(p["b"], b)


def test_layer_arguments_are_checked():
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="positive number of outputs"):
            layers.Dense(bad)
    with pytest.raises(ValueError, match="swish"):
        layers.Activation("swish")
    with pytest.raises(ValueError, match="init must be"):
        layers.Dense(3, init="lecun")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(data=st.data(), shape=nst.shapes(batch=(1, 20), width=(1, 24)))
def test_gated_dense_kernels_match_the_layer(dtype, data, shape):
    """The compiled step's gated-dense kernels (after its two products x W and x V) give the
    layer's forward h and its backward's da, dĝ, db, dc."""
    B, H = shape
    xw, xv, dh = (data.draw(nst.arrays((B, H), low=-6, high=6)).astype(dtype) for _ in range(3))
    b, c = (data.draw(nst.arrays((H,), low=-2, high=2)).astype(dtype) for _ in range(2))
    a_ref = xw.astype(np.float64) + b
    g_ref = 1 / (1 + np.exp(-(xv.astype(np.float64) + c)))
    h_ref = a_ref * g_ref
    h, g = xw.copy(), xv.copy()
    layers.gated_dense_forward_(h, b, g, c)
    agree_elementwise(dtype, g, g_ref.astype(dtype), [g_ref])
    agree_elementwise(dtype, h, h_ref.astype(dtype), [np.abs(xw) * g_ref, np.abs(b) * g_ref])
    d, dg, db, dc = dh.copy(), np.empty_like(dh), np.empty(H, dtype), np.empty(H, dtype)
    layers.gated_dense_backward_(d, h, g, dg, db, dc)
    da_ref = dh * g_ref
    dgate_ref = dh * h_ref * (1 - g_ref)
    agree_elementwise(dtype, d, da_ref.astype(dtype), [da_ref])
    agree_elementwise(dtype, dg, dgate_ref.astype(dtype), [np.abs(dh * a_ref) * g_ref])
    agree_elementwise(dtype, db, da_ref.sum(axis=0).astype(dtype), [np.abs(da_ref).sum(axis=0)])
    agree_elementwise(dtype, dc, dgate_ref.sum(axis=0).astype(dtype), [np.abs(dh * a_ref * g_ref).sum(axis=0)])
