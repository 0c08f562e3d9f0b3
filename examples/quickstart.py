"""A first look at npvae: one loss and its gradients, a gradient check, a short training.

Run:  python examples/quickstart.py
"""
import numpy as np

import npvae
from npvae.testing import check_gradients


def bars(n, size=6, rng=None):
    """Binary images of horizontal and vertical bars: a tiny data set with structure."""
    rng = rng or np.random.default_rng(0)
    x = np.zeros((n, size, size))
    for img in x:
        rows = rng.random(size) < 0.25
        cols = rng.random(size) < 0.25
        img[rows, :] = 1
        img[:, cols] = 1
    return x.reshape(n, -1)


def main():
    rng = np.random.default_rng(0)
    x = bars(512, rng=rng)

    # 1. One loss and its gradients, in float64, checked against finite differences.
    small = npvae.VAE(36, 2, hidden=(8,), activation="tanh", dtype=np.float64)
    eps = rng.standard_normal((4, 2))
    loss, grads, parts = small.loss_and_grad(x[:4], eps=eps)
    print(f"loss {loss:.4f} nats = reconstruction {parts['reconstruction']:.4f} + KL {parts['kl']:.4f}")
    report = check_gradients(lambda p: small.loss_and_grad(x[:4], eps=eps), small.params)
    print(report)

    # 2. A short training run with plain gradient descent and β annealed from 0 to 1.
    model = npvae.VAE(36, 4, hidden=(64,), activation="relu")
    steps, lr, batch = 600, 0.05, 64
    for step in range(steps + 1):
        idx = rng.integers(0, len(x), batch)
        beta = min(1.0, step / 300)
        loss, grads, parts = model.loss_and_grad(x[idx], rng=rng, beta=beta)
        for k in model.params:
            model.params[k] -= lr * grads[k]
        if step % 100 == 0:
            elbo = model.elbo(x, rng=np.random.default_rng(1)).mean()
            print(f"step {step:4d}  beta {beta:.2f}  loss {loss:7.3f}  KL {parts['kl']:6.3f}  "
                  f"ELBO(all data, beta=1) {elbo:8.3f} nats")


if __name__ == "__main__":
    main()
