"""Write your own layer, then prove its backward right with npvae's tools.

The layer: a dense layer with the Swish activation (Ramachandran et al. 2017),
    y = s(x W + b),   s(a) = a σ(a),   s'(a) = σ(a) + a σ(a) (1 − σ(a)),
written as npvae writes every layer: the forward returns the value and a backprop closure.

Two checks, as for npvae's own code:
1. check_gradients: central differences in float64, a table per parameter.
2. A hypothesis property test over drawn shapes and values (npvae.testing.strategies).

Run:  python examples/custom_layer.py          (prints the table)
      python -m pytest examples/custom_layer.py (runs the property test too)
"""
import numpy as np

from npvae.activations import sigmoid
from npvae.testing import check_gradients


def swish_dense(x, W, b):
    """y = swish(x W + b).  Shapes: x (B, n_in), W (n_in, n_out), b (n_out,)."""
    a = x @ W + b
    s = sigmoid(a)
    y = a * s

    def backprop(dy):
        da = dy * (s + a * s * (1 - s))      # s'(a), from the saved a and σ(a)
        return da @ W.T, x.T @ da, da.sum(axis=0)

    return y, backprop


def loss_and_grads(params, x, dy):
    """A scalar that exercises every output: L = Σ y ⊙ dy, so ∂L/∂y = dy."""
    y, backprop = swish_dense(params["x"], params["W"], params["b"])
    dx, dW, db = backprop(dy)
    return float(np.sum(y * dy)), {"x": dx, "W": dW, "b": db}


def main():
    rng = np.random.default_rng(0)
    params = {"x": rng.normal(size=(4, 3)), "W": rng.normal(size=(3, 5)), "b": rng.normal(size=5)}
    dy = rng.normal(size=(4, 5))
    report = check_gradients(lambda p: loss_and_grads(p, x=None, dy=dy), params)
    print(report)
    print(f"largest relative error: {report.max_rel:.1e} (tolerance {report.rtol:g})")


# --- the property test: pytest collects it when this file is given to pytest ----------
try:
    from hypothesis import given
    from hypothesis import strategies as st

    from npvae.testing import strategies as nst

    @given(data=st.data())
    def test_swish_dense_gradients(data):
        batch, n_in = data.draw(nst.shapes(batch=(1, 8), width=(1, 16)))
        p = data.draw(nst.dense_params(n_in=n_in))
        params = {"x": data.draw(nst.arrays((batch, n_in))), "W": p["W"], "b": p["b"]}
        dy = data.draw(nst.arrays((batch, p["W"].shape[1])))
        check_gradients(lambda q: loss_and_grads(q, x=None, dy=dy), params)
except ImportError:  # hypothesis is only in the test extra
    pass


if __name__ == "__main__":
    main()
