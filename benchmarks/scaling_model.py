"""The data-parallel cost model of docs/scaling.md: predicted step time and efficiency of
``fit`` under MPI at 8, 64 and 512 ranks, from constants fitted to this machine's
measurements (benchmarks/bench_mpi.py).

    step(N) = c0 + c·b + allreduce(N),    b = rows per rank
    allreduce(N) = 2(N−1)·α + 2(N−1)/N · 4P / bandwidth     (a ring over one flat buffer)

Run:  python benchmarks/scaling_model.py
"""
# fitted on the 2-core development machine, one rank on one thread (bench_mpi.py, 2026-12-01):
# 784-400-20, float32, batch 128: 3.89 ms; batch 1024: 30.18 ms
C_PER_ROW = (30.18 - 3.89) / (1024 - 128)   # ms per example (forward + backward + noise)
C0 = 3.89 - 128 * C_PER_ROW                 # ms per step (the optimizer, Python, small kernels)
P_SMALL = 784 * 400 + 400 + 2 * (400 * 20 + 20) + 20 * 400 + 400 + 400 * 784 + 784

NETWORKS = {  # name: (bandwidth in bytes per ms, latency per message in ms)
    "10 GB/s (α = 2 µs)": (10e9 / 1e3, 0.002),
    "100 Gb/s (12.5 GB/s, α = 2 µs)": (12.5e9 / 1e3, 0.002),
    "10 Gb/s Ethernet (1.25 GB/s, α = 25 µs)": (1.25e9 / 1e3, 0.025),
}


def allreduce_ms(N, P, bandwidth, alpha):
    if N == 1:
        return 0.0
    return 2 * (N - 1) * alpha + 2 * (N - 1) / N * 4 * P / bandwidth


def step_ms(N, rows_per_rank, P, scale, bandwidth, alpha):
    return C0 * scale + C_PER_ROW * scale * rows_per_rank + allreduce_ms(N, P, bandwidth, alpha)


def table(batch_per_rank=None, global_batch=None):
    lines = []
    for name, (bw, alpha) in NETWORKS.items():
        for label, P, scale in (("784-400-20", P_SMALL, 1), ("10x larger", 10 * P_SMALL, 10)):
            cells = []
            for N in (8, 64, 512):
                b = batch_per_rank if batch_per_rank else max(1, global_batch // N)
                t = step_ms(N, b, P, scale, bw, alpha)
                one = C0 * scale + C_PER_ROW * scale * (b * N)  # one rank doing all N·b rows
                eff = one / (N * t)
                cells.append(f"{t:8.2f} ms {eff:5.0%}")
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    print(f"fitted: c0 = {C0:.3f} ms a step, c = {C_PER_ROW * 1e3:.1f} µs an example; P = {P_SMALL}")
    for title, kw in (("128 rows per rank (weak scaling)", dict(batch_per_rank=128)),
                      ("1024 rows per rank (weak scaling)", dict(batch_per_rank=1024)),
                      ("global batch 1024 (strong scaling)", dict(global_batch=1024))):
        print(f"\n{title}: step time and efficiency at N = 8, 64, 512")
        print("| network | model | N = 8 | N = 64 | N = 512 |\n| --- | --- | --- | --- | --- |")
        print("\n".join(table(**kw)))
