"""The engine with layers: built-in and a user's own, in a whole model, through both
objectives, the trace, fit, saving and loading."""
import numpy as np
import pytest

import npvae
from npvae import layers
from npvae.activations import sigmoid
from npvae.testing import check_gradients, check_layer


class Swish:
    """A user's layer written from the docs alone: y = a σ(a), a = x W + b."""

    def __init__(self, n_out):
        self.n_out = n_out

    def init(self, rng, n_in):
        return self.n_out, {"W": rng.normal(0, 1 / np.sqrt(n_in), (n_in, self.n_out)), "b": np.zeros(self.n_out)}

    def forward(self, params, x):
        a = x @ params["W"] + params["b"]
        s = sigmoid(a)

        def backward(dy):
            da = dy * (s + a * s * (1 - s))
            return da @ params["W"].T, {"W": x.T @ da, "b": da.sum(axis=0)}
        return a * s, backward

    def config(self):
        return {"n_out": self.n_out}


def swish_model(dtype=np.float64, **kw):
    return npvae.VAE(6, 2, encoder=[Swish(5)], decoder=[layers.GatedDense(4), Swish(3)], dtype=dtype, seed=2, **kw)


def test_the_classic_model_is_a_list_of_dense_layers():
    a = npvae.VAE(6, 2, hidden=(5, 4), activation="tanh", seed=1)
    b = npvae.VAE(6, 2, encoder=[layers.Dense(5, "tanh"), layers.Dense(4, "tanh")],
                  decoder=[layers.Dense(4, "tanh"), layers.Dense(5, "tanh")], seed=1)
    assert list(a.params) == list(b.params)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    x = np.random.default_rng(0).random((7, 6)).astype(np.float32)
    la, ga, _ = a.loss_and_grad(x, rng=np.random.default_rng(1))
    lb, gb, _ = b.loss_and_grad(x, rng=np.random.default_rng(1))
    assert la == lb and all(np.array_equal(ga[k], gb[k]) for k in ga)


def test_parameter_names_follow_the_positions_in_the_lists():
    m = npvae.VAE(6, 2, encoder=[layers.Dense(5), layers.Activation("elu"), layers.GatedDense(3)],
                  decoder=[Swish(4)])
    assert [k for k in m.params if k.startswith("encoder.")] == [
        "encoder.0.W", "encoder.0.b", "encoder.2.W", "encoder.2.b", "encoder.2.V", "encoder.2.c",
        "encoder.mu.W", "encoder.mu.b", "encoder.logvar.W", "encoder.logvar.b"]
    assert m.params["encoder.mu.W"].shape == (3, 2) and m.params["decoder.out.W"].shape == (4, 6)


@pytest.mark.parametrize("objective,shape", [("elbo", (5, 2)), ("iwae", (3, 5, 2))])
@pytest.mark.parametrize("lik,opts", [("bernoulli", {}), ("gaussian", {"sigma": "per_example"})])
def test_a_users_layer_in_the_whole_model_matches_finite_differences(objective, shape, lik, opts):
    model = swish_model(likelihood=lik, **opts)
    rng = np.random.default_rng(0)
    x = rng.random((5, 6)) if lik == "bernoulli" else rng.normal(size=(5, 6))
    eps = rng.standard_normal(shape)
    kw = dict(objective=objective, n_samples=shape[0]) if objective == "iwae" else dict(beta=0.7)
    check_gradients(lambda p: model.loss_and_grad(x, eps=eps, **kw), model.params)


def test_the_fused_and_the_generic_path_agree():
    """A built-in Dense runs fused; the same layer through its own forward (the generic path,
    as a user's layer runs) gives the same loss and gradients to float64 rounding."""

    class PlainDense(layers.Dense):  # not the built-in class: the engine runs it generically
        pass

    fused = npvae.VAE(6, 2, encoder=[layers.Dense(5, "softplus")], decoder=[layers.Dense(4, "elu")],
                      dtype=np.float64, seed=3)
    generic = npvae.VAE(6, 2, encoder=[PlainDense(5, "softplus")], decoder=[PlainDense(4, "elu")],
                        dtype=np.float64, seed=3)
    x = np.random.default_rng(0).random((8, 6))
    for kw in (dict(eps=np.random.default_rng(1).standard_normal((8, 2))),
               dict(eps=np.random.default_rng(1).standard_normal((4, 8, 2)), objective="iwae", n_samples=4)):
        l1, g1, _ = fused.loss_and_grad(x, **kw)
        l2, g2, _ = generic.loss_and_grad(x, **kw)
        assert l1 == pytest.approx(l2, rel=1e-12)
        for k in g1:
            np.testing.assert_allclose(g1[k], g2[k], rtol=1e-10, atol=1e-13)


def test_a_users_layer_trains_appears_in_the_trace_and_saves(tmp_path):
    x = (np.random.default_rng(0).random((200, 6)) < 0.3).astype(np.float32)
    model = swish_model(dtype=np.float32)
    h = npvae.fit(model, x, epochs=8, batch_size=25, progress=False, checkpoint_dir=tmp_path / "ck")
    assert h["loss"][-1] < h["loss"][0]
    *_, T = model.loss_and_grad(x[:4], eps=np.zeros((4, 2), np.float32), trace=True)
    for name in ("encoder.0.out", "decoder.0.out", "decoder.1.out", "grad.encoder.0.out", "grad.decoder.1.out",
                 "grad.param.encoder.0.W", "grad.param.decoder.0.V"):
        assert name in T
    path = model.save(tmp_path / "m.npz")
    with pytest.raises(npvae.CheckpointError, match=r"layer class 'Swish'.*npvae.load\(path, layers=\[Swish\]\)"):
        npvae.load(path)
    again = npvae.load(path, layers=[Swish])
    assert all(np.array_equal(again.params[k], model.params[k]) for k in model.params)
    assert again.config() == model.config()
    np.testing.assert_array_equal(again.elbo(x[:20]), model.elbo(x[:20]))
    import warnings
    resumed = swish_model(dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the run's own layer classes load its checkpoints
        npvae.fit(resumed, x, epochs=10, batch_size=25, progress=False, checkpoint_dir=tmp_path / "ck",
                  resume=True)
    straight = swish_model(dtype=np.float32)
    npvae.fit(straight, x, epochs=10, batch_size=25, progress=False)
    assert all(np.array_equal(resumed.params[k], straight.params[k]) for k in model.params)


def test_layers_that_break_the_contract_are_refused():
    class NoConfig:
        def init(self, rng, n_in):
            return 3, {}

        def forward(self, params, x):
            return x[:, :3], lambda dy: (dy, {})

    m = npvae.VAE(6, 2, encoder=[NoConfig()], decoder=[])  # builds; config() is needed only to save
    with pytest.raises(TypeError, match=r"encoder\[0\] \(NoConfig\) has no config\(\) method"):
        m.config()

    class WrongShape(Swish):
        def forward(self, params, x):
            y, back = super().forward(params, x)
            return y[:, :1], back

    m = npvae.VAE(6, 2, encoder=[WrongShape(3)], decoder=[])
    with pytest.raises(ValueError, match="returned shape"):
        m.encode(np.zeros((2, 6)))
    with pytest.raises(TypeError, match="both encoder= and decoder="):
        npvae.VAE(6, 2, encoder=[Swish(3)])


def test_check_layer_finds_a_wrong_backward():
    class Wrong(Swish):
        def forward(self, params, x):
            y, back = super().forward(params, x)
            return y, lambda dy: (lambda dx, g: (dx, {**g, "b": 2 * g["b"]}))(*back(dy))

    check_layer(Swish(4), 3)
    with pytest.raises(AssertionError, match="b"):
        check_layer(Wrong(4), 3)


class Scale:
    """y = x ⊙ s, with a backward that can be made wrong in shape."""

    def __init__(self, bad=None):
        self.bad = bad

    def init(self, rng, n_in):
        return n_in, {"s": np.ones(n_in)}

    def forward(self, params, x):
        s = params["s"]

        def backward(dy):
            ds, dx = (dy * x).sum(axis=0), dy * s
            return (dx[:1] if self.bad == "dx" else dx), {"s": ds.sum() if self.bad == "grad" else ds}
        return x * s, backward

    def config(self):
        return {"bad": self.bad}


@pytest.mark.parametrize("bad", ["grad", "dx"])
def test_a_wrong_shaped_backward_is_refused_not_broadcast(bad):
    m = npvae.VAE(6, 2, encoder=[layers.Dense(5), Scale(bad), layers.Dense(3)], decoder=[layers.Dense(5)],
                  dtype=np.float64)
    with pytest.raises(ValueError, match="shape"):
        m.loss_and_grad(np.random.default_rng(0).random((4, 6)), eps=np.zeros((4, 2)))


def test_layer_configs_with_tuples_resume_and_names_of_built_ins_are_refused(tmp_path):
    class Pool:
        def __init__(self, group=(2,)):
            self.group = group

        def init(self, rng, n_in):
            return n_in // self.group[0], {}

        def forward(self, params, x):
            g = self.group[0]
            return x.reshape(len(x), -1, g).mean(axis=2), lambda dy: (np.repeat(dy, g, axis=1) / g, {})

        def config(self):
            return {"group": self.group}

    x = np.random.default_rng(0).random((20, 8))
    make = lambda: npvae.VAE(8, 2, encoder=[layers.Dense(8, "tanh"), Pool((2,))], decoder=[layers.Dense(4, "tanh")])
    npvae.fit(make(), x, epochs=1, batch_size=10, checkpoint_dir=tmp_path, progress=False)
    h = npvae.fit(make(), x, epochs=2, batch_size=10, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert [r["epoch"] for r in h] == [1, 2]

    class Dense(layers.Dense):  # a user's class with a built-in's name would load as the built-in
        pass
    with pytest.raises(TypeError, match="named 'Dense'"):
        npvae.VAE(6, 2, encoder=[Dense(5)], decoder=[Dense(5)])


def test_a_layer_built_checkpoint_declaring_a_huge_layer_is_refused(tmp_path):
    import json
    from npvae import checkpoint
    m = npvae.VAE(784, 2, encoder=[layers.Dense(3)], decoder=[layers.Dense(3)])
    arrays = checkpoint.model_arrays(m)
    cfg = json.loads(str(arrays["config"]))
    cfg["encoder"] = [{"type": "Dense", "n_out": 10**9, "activation": "identity", "init": "fan_in"}]
    arrays["config"] = np.array(json.dumps(cfg))
    checkpoint.atomic_savez(tmp_path / "m.npz", arrays)
    with pytest.raises(npvae.CheckpointError, match="declares a model of"):
        npvae.load(tmp_path / "m.npz")
