"""Where ln p(x)'s time goes (784-300-300-40, K = 5000, 20 images, as bench_estimators.py
times it): drawing ε, the compiled log-weights calls and the log-sum-exp, against the floor
of its products; then the whole ln p(x) timed right after the floor's 2-thread OpenBLAS
products and after 0.3 s of quiet; then one chunk's ε by NumPy's call, by numba's port of
its ziggurat (the same numbers, what log_likelihood runs), and by NumPy on two threads from
two streams.  Medians of --repeats.

Run:  python benchmarks/profile_log_px.py [--repeats 9]
"""
from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import npvae
from npvae import compiled, kernels
from bench_estimators import matmul_floor

K, IMAGES, MAX_ELEMENTS = 5000, 20, 1 << 22


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    x = (np.random.default_rng(0).random((IMAGES, 784)) < 0.3).astype(np.float32)
    m = npvae.VAE(784, 40, hidden=(300, 300))
    m.log_likelihood(x[:4], n_samples=64)
    chunk = max(1, min(K, MAX_ELEMENTS // (IMAGES * 784)))  # log_likelihood's chunk of samples
    floor_run = matmul_floor(m, MAX_ELEMENTS // 784, 1)
    n_chunks = IMAGES * K / (MAX_ELEMENTS // 784)
    med = lambda v: statistics.median(v) * 1e3
    parts = {"draws": [], "compiled calls": [], "log-sum-exp": [], "floor": []}
    for _ in range(args.repeats):
        r = np.random.default_rng(1)
        eps = [np.empty((min(chunk, K - k0), IMAGES, 40), np.float32) for k0 in range(0, K, chunk)]
        t = time.perf_counter()
        for e in eps:  # as log_likelihood draws them: NumPy's numbers, by numba's ziggurat
            kernels.standard_normal_(r, e)
        parts["draws"].append(time.perf_counter() - t)
        t = time.perf_counter()
        lws = [compiled.log_weights(m, x, e) for e in eps]
        parts["compiled calls"].append(time.perf_counter() - t)
        t = time.perf_counter()
        top = np.max([lw.max(axis=0) for lw in lws], axis=0)
        sum(np.exp(lw - top).sum(axis=0) for lw in lws)
        parts["log-sum-exp"].append(time.perf_counter() - t)
        time.sleep(0.3)
        parts["floor"].append(statistics.median(floor_run() for _ in range(3)) * n_chunks)
        time.sleep(0.3)
    fl = med(parts["floor"])
    print(f"{chunk} samples a chunk, {-(-K // chunk)} chunks; floor of the products {fl:.1f} ms")
    for k in ("draws", "compiled calls", "log-sum-exp"):
        print(f"  {k}: {med(parts[k]):.1f} ms, {med(parts[k]) / fl:.2f}x the floor")
    for pause in (0.0, 0.3):
        ts = []
        for _ in range(args.repeats):
            floor_run()  # 2-thread OpenBLAS products just before
            time.sleep(pause)
            t = time.perf_counter()
            m.log_likelihood(x, n_samples=K)
            ts.append(time.perf_counter() - t)
        print(f"ln p(x) right after the floor's products, {pause} s of quiet between: {med(ts):.1f} ms, "
              f"{med(ts) / fl:.2f}x the floor")
    gens = [np.random.default_rng(i) for i in range(2)]
    out = np.empty((chunk, IMAGES, 40), np.float32)
    with ThreadPoolExecutor(2) as pool:
        def two():
            h = chunk // 2
            for f in [pool.submit(gens[0].standard_normal, out=out[:h], dtype=np.float32),
                      pool.submit(gens[1].standard_normal, out=out[h:], dtype=np.float32)]:
                f.result()
        for name, f in (("NumPy's call, one thread", lambda: gens[0].standard_normal(out=out, dtype=np.float32)),
                        ("the same numbers by numba's ziggurat (what log_likelihood runs)",
                         lambda: kernels.standard_normal_(gens[0], out)),
                        ("NumPy, two threads from two streams (other numbers)", two)):
            f()
            ts = []
            for _ in range(50):
                t = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t)
            print(f"one chunk's ε ({chunk} x {IMAGES} x 40 normals), {name}: {med(ts):.2f} ms")

if __name__ == "__main__":
    main()
