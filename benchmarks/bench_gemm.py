"""One thread, one product: npvae's own kernel (:mod:`npvae.kernels.gemm`, at the machine's
vector width and, built beside it, at 256 and 128 bits) against NumPy's OpenBLAS on one
thread, for the products each of the compiled step's two row blocks runs in config A
(784-400-20, 64 rows a block) and in the 784-300-300-40 model, float32 and float64.
Round-robin, medians.

Run:  python benchmarks/bench_gemm.py [--repeats 7] [--json bench_gemm.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from npvae.kernels import gemm

# (name, m, k, n, a transposed, b transposed): a block's forward x W, backward xᵀ dY, dY Wᵀ
CASES = [("x W, 64x784 by 784x400", 64, 784, 400, False, False),
         ("xT dY, 784x64 by 64x400", 784, 64, 400, True, False),
         ("dY WT, 64x400 by 400x784", 64, 400, 784, False, True),
         ("h W, 64x400 by 400x784 (decoder output)", 64, 400, 784, False, False),
         ("h W, 64x300 by 300x300", 64, 300, 300, False, False),
         ("z W, 64x20 by 20x400", 64, 20, 400, False, False)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    widths = sorted({gemm.VECTOR_BITS, 256, 128}, reverse=True)
    kernels = {bits: (gemm.product if bits == gemm.VECTOR_BITS else gemm.build(bits)) for bits in widths}
    rng = np.random.default_rng(0)
    results = {}
    for dtype in (np.float32, np.float64):
        for name, m, k, n, ta, tb in CASES:
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
            a, b = (a.T if ta else a), (b.T if tb else b)
            c = np.empty((m, n), dtype)
            runs = {f"npvae {bits}-bit": (lambda p=p: p(a, b, c, False)) for bits, p in kernels.items()}
            runs["OpenBLAS"] = lambda: np.matmul(a, b, out=c)
            times = {key: [] for key in runs}
            with threadpool_limits(1, user_api="blas"):
                for f in runs.values():
                    f()
                for _ in range(args.repeats):
                    for key, f in runs.items():
                        t = time.perf_counter()
                        for _ in range(args.calls):
                            f()
                        times[key].append((time.perf_counter() - t) / args.calls)
            med = {key: statistics.median(v) * 1e6 for key, v in times.items()}
            flops = 2 * m * k * n
            label = f"{np.dtype(dtype).name} {name}"
            results[label] = med
            print(label)
            for key, us in med.items():
                print(f"  {key:14s} {us:9.1f} us  {flops / us / 1e3:6.1f} GFLOP/s  "
                      f"OpenBLAS / this {med['OpenBLAS'] / us:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"vector_bits": gemm.VECTOR_BITS, "median_us": results, "repeats": args.repeats,
                       "calls": args.calls}, f, indent=1)


if __name__ == "__main__":
    main()
