"""Write your own layer, prove its backward right, and train a VAE with it.

The layer: a dense layer with the Swish activation (Ramachandran et al. 2017),
    y = s(x W + b),   s(a) = a σ(a),   s'(a) = σ(a) + a σ(a) (1 − σ(a)),
written to npvae's layer contract (docs/api.md, "Your own layer"):

    init(rng, n_in)        -> (n_out, {"W": ..., "b": ...})
    forward(params, x)     -> (y, backward),  backward(dy) -> (dx, {"W": dW, "b": db})
    config()               -> {"n_out": ...}  (Swish(**config) rebuilds it)

Then, all the way:
1. check the layer alone against central differences (npvae.testing.check_layer);
2. put it in a VAE's encoder and decoder and check the whole model's gradients in float64;
3. train on real data: Fashion-MNIST when Debian's dataset-fashion-mnist is installed, else
   the built-in Ising configurations;
4. save, load (naming the class: npvae.load(path, layers=[Swish])), and evaluate the held-out
   ELBO and ln p(x).

Run:  python examples/custom_layer.py [--epochs 3] [--out runs/examples/custom_layer]
      (not run in tests: 3 epochs on 20,000 images take about half a minute; the tests run
      it for 1 epoch on 1,500)
      python -m pytest examples/custom_layer.py   (a property test of the layer, too)
"""
import argparse
from pathlib import Path

import numpy as np

import npvae
from npvae.activations import sigmoid
from npvae.testing import check_gradients, check_layer


class Swish:
    """y = swish(x W + b).  Shapes: x (B, n_in), W (n_in, n_out), b (n_out,)."""

    def __init__(self, n_out):
        self.n_out = int(n_out)

    def init(self, rng, n_in):
        limit = 1.0 / np.sqrt(n_in)
        return self.n_out, {"W": rng.uniform(-limit, limit, (n_in, self.n_out)), "b": np.zeros(self.n_out)}

    def forward(self, params, x):
        a = x @ params["W"] + params["b"]
        s = sigmoid(a)

        def backward(dy):
            da = dy * (s + a * s * (1 - s))      # s'(a), from the saved a and σ(a)
            return da @ params["W"].T, {"W": x.T @ da, "b": da.sum(axis=0)}

        return a * s, backward

    def config(self):
        return {"n_out": self.n_out}

    def __repr__(self):
        return f"Swish({self.n_out})"


def load_data(n_max):
    try:
        x = npvae.data.load_fashion_mnist("train")[:n_max]
        return "Fashion-MNIST (dynamically binarised)", x, "dynamic"
    except (FileNotFoundError, npvae.data.DataError):
        from npvae import ising
        d = ising.load(L=16, temperatures=tuple(1.0 + 0.25 * i for i in range(11)), n_per_T=200)
        return "the built-in Ising configurations (16x16)", ising.as_bernoulli(d["spins"]), None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--examples", type=int, default=20000, help="training examples to use at most")
    ap.add_argument("--out", default="runs/examples/custom_layer")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    # 1. the layer alone
    report = check_layer(Swish(5), 3, batch=4)
    print(f"1. Swish alone against central differences: largest relative error {report.max_rel:.1e}")

    # 2. inside a whole model, float64
    small = npvae.VAE(6, 2, encoder=[Swish(5)], decoder=[Swish(5)], dtype=np.float64, seed=0)
    rng = np.random.default_rng(1)
    x, eps = rng.random((4, 6)), rng.standard_normal((4, 2))
    report = check_gradients(lambda p: small.loss_and_grad(x, eps=eps), small.params)
    print(f"2. a VAE with Swish layers, whole-model check: largest relative error {report.max_rel:.1e}")

    # 3. train on real data
    name, data, binarize = load_data(args.examples + 2000)
    x_train, x_val = data[:-2000], data[-2000:]
    D = data.shape[1]
    model = npvae.VAE(D, 20 if D > 300 else 2, encoder=[Swish(256)], decoder=[Swish(256)], seed=0)
    print(f"3. training {model} on {len(x_train)} examples of {name}")
    history = npvae.fit(model, x_train, x_val=x_val, epochs=args.epochs, batch_size=128, seed=0,
                        binarize=binarize, beta=npvae.LinearBeta(1), progress=False,
                        callbacks=[lambda r, m: print(f"   epoch {r['epoch']}: validation ELBO "
                                                      f"{r['val_elbo']:.2f} nats")])

    # 4. save, load, evaluate
    path = model.save(out / "model.npz")
    loaded = npvae.load(path, layers=[Swish])
    assert all(np.array_equal(loaded.params[k], model.params[k]) for k in model.params)
    x_eval = x_val[:500] if binarize is None else npvae.data.binarize(x_val[:500], np.random.default_rng(7))
    elbo = float(loaded.elbo(x_eval).mean())
    ll = float(loaded.log_likelihood(x_eval, n_samples=200).mean())
    print(f"4. saved to {path}, loaded with layers=[Swish]: held-out ELBO {elbo:.2f}, "
          f"ln p(x) (K = 200, 500 examples) {ll:.2f} nats")
    return history


# --- the property test: pytest collects it when this file is given to pytest ----------
try:
    from hypothesis import given
    from hypothesis import strategies as st

    from npvae.testing import strategies as nst

    @given(data=st.data())
    def test_swish_gradients(data):
        batch, n_in = data.draw(nst.shapes(batch=(1, 8), width=(1, 16)))
        x = data.draw(nst.arrays((batch, n_in)))
        check_layer(Swish(data.draw(st.integers(1, 8))), n_in, x=x, seed=data.draw(nst.seeds()))
except ImportError:  # hypothesis is only in the test extra
    pass


if __name__ == "__main__":
    main()
