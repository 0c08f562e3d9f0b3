"""The matrix products of one config-A training step (784-400-20, batch 128: for every layer
the forward x W, and the backward xᵀ dY and dY Wᵀ), side by side in one process: under
``jax.jit``; through NumPy's OpenBLAS on 2 threads; and npvae's own kernel
(:mod:`npvae.kernels.gemm`) the way the compiled step runs it, the batch in 2 row blocks on
2 numba threads (the blocks' xᵀ dY into separate buffers). How fast each library's
products are on their own, apart from everything else a step does.

Run:  python benchmarks/bench_products.py [--repeats 9]   (JAX optional: the bench extra)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from npvae.kernels import gemm

from bench_step import own_products

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
    ap.add_argument("--json", help="write the medians here")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    A = [rng.standard_normal((m, k)).astype(np.float32) for m, k, n in SHAPES]
    W = [rng.standard_normal((k, n)).astype(np.float32) for m, k, n in SHAPES]
    G = [rng.standard_normal((m, n)).astype(np.float32) for m, k, n in SHAPES]
    typed = numba.typed.List
    tA, tW = typed(A), typed(W)
    tY = typed([np.empty((m, n), np.float32) for m, k, n in SHAPES])
    tDX = typed([np.empty((m, k), np.float32) for m, k, n in SHAPES])
    tGW = typed([typed([np.empty((k, n), np.float32) for m, k, n in SHAPES]) for _ in range(2)])
    has_dx = np.ones(len(SHAPES), dtype=np.bool_)  # every layer's dY Wᵀ, as products() does

    runs = {}

    def run_numpy():
        with threadpool_limits(2, user_api="blas"):
            t = time.perf_counter()
            for _ in range(args.steps):
                products(A, W, G)
            return (time.perf_counter() - t) / args.steps
    runs["NumPy's OpenBLAS, 2 threads"] = run_numpy

    def run_own():
        with threadpool_limits(1, user_api="blas"):
            numba.set_num_threads(2)
            t = time.perf_counter()
            own_products(tA, tW, tY, tGW, tDX, has_dx, args.steps)
            return (time.perf_counter() - t) / args.steps
    runs[f"npvae's kernel ({gemm.VECTOR_BITS}-bit), 2 numba threads"] = run_own

    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        print("JAX not installed: skipped")
    else:
        jitted = jax.jit(products)
        jA, jW, jG = ([jnp.asarray(a) for a in L] for L in (A, W, G))

        def run_jax():
            t = time.perf_counter()
            for _ in range(args.steps):
                r = jitted(jA, jW, jG)
            jax.block_until_ready(r)
            return (time.perf_counter() - t) / args.steps
        runs["JAX jit"] = run_jax

    for run in runs.values():  # compile, warm
        run()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # round-robin, a pause before each (OpenBLAS's threads spin)
        for name, run in runs.items():
            time.sleep(0.3)
            times[name].append(run())
    print(f"config A's products, ms, median of {args.repeats} x {args.steps} (min-max):")
    medians = {}
    for name, ts in times.items():
        medians[name] = statistics.median(ts) * 1e3
        print(f"  {name:45s} {medians[name]:.3f} ({min(ts) * 1e3:.3f}-{max(ts) * 1e3:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeats": args.repeats, "steps": args.steps, "median_ms": medians,
                       "all_ms": {k: [t * 1e3 for t in v] for k, v in times.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
