"""One data point through a tiny VAE, every intermediate and gradient printed.

The model is 2-2-1 (two inputs, one tanh hidden layer of 2 units, one latent dimension),
Bernoulli likelihood, float64, seed 0; x = (1, 0), ε = 0.5, β = 1.  docs/gradient_flow.md
walks through these numbers by hand.

Run:  python examples/gradient_flow.py
"""
import numpy as np

import npvae
from npvae.testing import check_gradients


def main():
    model = npvae.VAE(2, 1, hidden=(2,), activation="tanh", dtype=np.float64, seed=0)
    x = np.array([[1.0, 0.0]])
    eps = np.array([[0.5]])
    print("parameters:")
    with np.printoptions(precision=6, suppress=True):
        for name, p in model.params.items():
            print(f"  {name:18s} {p.tolist()}")
    loss, grads, parts, trace = model.loss_and_grad(x, eps=eps, beta=1.0, trace=True)
    print("\nthe step, forward then backward:")
    print(trace)
    print("\nfinite differences agree:")
    print(check_gradients(lambda p: model.loss_and_grad(x, eps=eps), model.params))


if __name__ == "__main__":
    main()
