"""npvae against PyTorch (CPU) on the classic Fashion-MNIST VAE: test ELBOs side by side.

Both train 784-400-20, ReLU, Bernoulli, dynamic binarisation, Adam lr 1e-3, batch 128, for
the same number of epochs, in this one process.  Both are then evaluated by the *same*
function: the PyTorch weights are copied into an npvae.VAE (every layer is x @ W + b, so
W = linear.weight.T) and scored with VAE.elbo on the test set binarised once with seed 777
(1 sample of z per image, fixed seed).  PyTorch's own estimate is printed as a cross-check.

Run:  pip install torch==2.13.0  (optional; never a dependency of npvae)
      python benchmarks/fashion_mnist_vs_torch.py [--epochs 10] [--threads 1] [--json out.json]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import npvae  # noqa: E402
from fashion_mnist import test_elbo, test_set  # noqa: E402


def train_npvae(x_train, epochs, seed):
    model = npvae.VAE(784, 20, hidden=(400,), seed=seed)
    t = time.perf_counter()
    npvae.fit(model, x_train, optimizer=npvae.Adam(lr=1e-3), epochs=epochs, batch_size=128,
              binarize="dynamic", seed=seed, progress=False)
    return model, time.perf_counter() - t


def train_torch(x_train, epochs, seed):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class TorchVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.mu, self.logvar = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
            self.dec, self.out = nn.Linear(20, 400), nn.Linear(400, 784)

        def loss(self, x):
            h = torch.relu(self.enc(x))
            mu, lv = self.mu(h), self.logvar(h)
            z = mu + torch.exp(0.5 * lv) * torch.randn_like(mu)
            logits = self.out(torch.relu(self.dec(z)))
            rec = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + lv - mu.pow(2) - lv.exp())
            return (rec + kl) / x.shape[0]

    net = TorchVAE()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.from_numpy(x_train)
    gen = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            xb = torch.bernoulli(x[perm[i:i + 128]], generator=gen)
            opt.zero_grad()
            loss = net.loss(xb)
            loss.backward()
            opt.step()
    elapsed = time.perf_counter() - t

    model = npvae.VAE(784, 20, hidden=(400,))
    with torch.no_grad():
        for name, layer in [("encoder.0", net.enc), ("encoder.mu", net.mu), ("encoder.logvar", net.logvar),
                            ("decoder.0", net.dec), ("decoder.out", net.out)]:
            model.params[f"{name}.W"][...] = layer.weight.T.numpy()
            model.params[f"{name}.b"][...] = layer.bias.numpy()
    return model, net, elapsed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="BLAS / torch threads (default: as is)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        sys.exit("PyTorch is not installed: pip install torch==2.13.0 (CPU build, optional)")

    limits = None
    if args.threads:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(args.threads)
        torch.set_num_threads(args.threads)

    x_train = npvae.data.load_fashion_mnist("train", args.data)
    x_test = test_set(args.data)
    ours, t_ours = train_npvae(x_train, args.epochs, args.seed)
    theirs, net, t_torch = train_torch(x_train, args.epochs, args.seed)
    with torch.no_grad():
        torch.manual_seed(0)
        torch_own = -float(net.loss(torch.from_numpy(x_test)))
    res = {
        "epochs": args.epochs, "threads": args.threads or "default",
        "npvae_test_elbo": test_elbo(ours, x_test), "torch_test_elbo": test_elbo(theirs, x_test),
        "torch_test_elbo_own_estimate": torch_own,
        "npvae_train_seconds": t_ours, "torch_train_seconds": t_torch,
        "torch_version": torch.__version__, "numpy_version": np.__version__,
    }
    res["difference_nats"] = res["npvae_test_elbo"] - res["torch_test_elbo"]
    print(f"{'':22s}{'npvae':>12s}{'PyTorch':>12s}")
    print(f"{'test ELBO (nats)':22s}{res['npvae_test_elbo']:12.3f}{res['torch_test_elbo']:12.3f}")
    print(f"{'training time (s)':22s}{t_ours:12.1f}{t_torch:12.1f}")
    print(f"npvae - PyTorch = {res['difference_nats']:+.3f} nats "
          f"(PyTorch's own estimate of its ELBO: {torch_own:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    if limits is not None:
        limits.unregister() if hasattr(limits, "unregister") else None
    return res


if __name__ == "__main__":
    main()
