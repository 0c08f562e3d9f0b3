"""The matrix products of one config-A training step (784-400-20, batch 128: for every layer
the forward x W, and the backward xᵀ dY and dY Wᵀ), under ``jax.jit`` and through NumPy's
OpenBLAS on 2 threads, side by side in one process: how fast each library's products are
on their own, apart from everything else a step does.

Run:  python benchmarks/bench_products.py [--repeats 9]   (needs jax: the bench extra)
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

# (rows, inputs, outputs) of config A's layers: encoder, the μ and ln σ² heads, decoder, output
SHAPES = [(128, 784, 400), (128, 400, 40), (128, 20, 400), (128, 400, 784)]


def products(A, W, G):
    out = []
    for a, w, g in zip(A, W, G):
        out += [a @ w, a.T @ g, g @ w.T]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args(argv)
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    A = [rng.standard_normal((m, k)).astype(np.float32) for m, k, n in SHAPES]
    W = [rng.standard_normal((k, n)).astype(np.float32) for m, k, n in SHAPES]
    G = [rng.standard_normal((m, n)).astype(np.float32) for m, k, n in SHAPES]
    jitted = jax.jit(products)
    jA, jW, jG = ([jnp.asarray(a) for a in L] for L in (A, W, G))

    def run_jax():
        t = time.perf_counter()
        for _ in range(args.steps):
            r = jitted(jA, jW, jG)
        jax.block_until_ready(r)
        return (time.perf_counter() - t) / args.steps

    def run_numpy():
        with threadpool_limits(2, user_api="blas"):
            t = time.perf_counter()
            for _ in range(args.steps):
                products(A, W, G)
            return (time.perf_counter() - t) / args.steps

    run_jax(), run_numpy()  # compile, warm
    tj, tn = [], []
    for _ in range(args.repeats):  # round-robin
        tj.append(run_jax())
        tn.append(run_numpy())
    j, n = statistics.median(tj) * 1e3, statistics.median(tn) * 1e3
    print(f"config A's products, median of {args.repeats} x {args.steps}: JAX jit {j:.3f} ms "
          f"({min(tj) * 1e3:.3f}-{max(tj) * 1e3:.3f}), NumPy's OpenBLAS on 2 threads {n:.3f} ms "
          f"({min(tn) * 1e3:.3f}-{max(tn) * 1e3:.3f}): JAX's {n / j:.2f}x as fast")


if __name__ == "__main__":
    main()
