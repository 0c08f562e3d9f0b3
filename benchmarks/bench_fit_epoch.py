"""Whole epochs of ``fit`` as a user runs them: training steps plus the epoch's validation
ELBO, timed from the call to its return (compiled kernels loaded before the first repeat).

Config: 784-400-20, ReLU, Bernoulli, float32, batch 128; --train random binary images
(default 12,800: 100 steps an epoch), --val validation images (default 10,000, the size of
Fashion-MNIST's test set), --epochs per call.  Prints the median and spread over --repeats.
To compare two versions, run it with each on PYTHONPATH in turn, in the same minutes.

Run:  python benchmarks/bench_fit_epoch.py [--repeats 5] [--json out.json]
"""
import argparse
import json
import statistics
import time
import warnings

import numpy as np

import npvae


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train", type=int, default=12800)
    ap.add_argument("--val", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = (rng.random((args.train, 784)) < 0.3).astype(np.float32)
    x_val = (rng.random((args.val, 784)) < 0.3).astype(np.float32)

    def run():
        model = npvae.VAE(784, 20, hidden=(400,), seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random images: the posterior collapses, as it should
            t0 = time.perf_counter()
            npvae.fit(model, x, x_val=x_val, epochs=args.epochs, batch_size=128, progress=False, seed=0)
            return time.perf_counter() - t0

    run()  # compile or load the kernels
    times = [run() for _ in range(args.repeats)]
    med = statistics.median(times)
    print(f"fit, {args.epochs} epochs of {args.train // 128} steps, validation ELBO of {args.val} images "
          f"each epoch: {med:.3f} s (median of {args.repeats}; {min(times):.3f} to {max(times):.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seconds": times, "median": med, **vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
