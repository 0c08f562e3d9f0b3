"""One 64-row block of config A's products (what each of fit's two blocks computes) on one
thread: NumPy's OpenBLAS against BLIS from PyPI (the ``blis`` package thinc uses; not a
dependency: pip install blis to run this).  Medians of 9.

Run:  python benchmarks/bench_blis.py
"""
import time, statistics, numpy as np
from threadpoolctl import threadpool_limits
import blis.py
rng = np.random.default_rng(0)
# config A's products, per block of 64 rows (what each numba thread's 1-thread BLAS gets)
shapes = [(64, 784, 400), (64, 400, 40), (64, 20, 400), (64, 400, 784)]
cases = []
for m, k, n in shapes:
    a = rng.standard_normal((m, k)).astype(np.float32); w = rng.standard_normal((k, n)).astype(np.float32)
    g = rng.standard_normal((m, n)).astype(np.float32)
    cases.append((a, w, g, np.empty((m, n), np.float32), np.empty((k, n), np.float32), np.empty((m, k), np.float32)))
def run_np(reps=50):
    with threadpool_limits(1, user_api="blas"):
        t = time.perf_counter()
        for _ in range(reps):
            for a, w, g, o1, o2, o3 in cases:
                np.matmul(a, w, out=o1); np.matmul(a.T, g, out=o2); np.matmul(g, w.T, out=o3)
        return (time.perf_counter() - t) / reps
def run_blis(reps=50):
    t = time.perf_counter()
    for _ in range(reps):
        for a, w, g, o1, o2, o3 in cases:
            blis.py.gemm(a, w, out=o1); blis.py.gemm(a, g, trans1=True, out=o2); blis.py.gemm(g, w, trans2=True, out=o3)
    return (time.perf_counter() - t) / reps
# check equal results
a, w, g, o1, o2, o3 = cases[0]
blis.py.gemm(a, g, trans1=True, out=o2); print("max diff", np.abs(o2 - a.T @ g).max())
run_np(); run_blis()
tn, tb = [], []
for _ in range(9):
    tn.append(run_np()); tb.append(run_blis())
print(f"one 64-row block of config A's products on 1 thread: OpenBLAS {statistics.median(tn)*1e3:.3f} ms, BLIS {statistics.median(tb)*1e3:.3f} ms")
