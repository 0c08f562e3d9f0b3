"""Data-parallel training and evaluation over MPI: a step split into compute and communication.

Run it once per setting, side by side (nothing else running):

    python benchmarks/bench_mpi.py --threads 2                  # 1 rank, 2 BLAS threads
    mpiexec -n 2 python benchmarks/bench_mpi.py --threads 1     # 2 ranks, 1 thread each

Config: 784-400-20, ReLU, Bernoulli, float32, Adam, dynamic binarisation, the engine step
that ``fit`` runs under MPI (``npvae.train.TrainStep`` with ``comm``), at batch 128 and 1024;
then ln p(x) with K = 5000 on --images examples (compiled log-weights, the examples split
across ranks).  "comm" is the time inside the step's two Allreduce calls (the gradient buffer
and four sums), which includes waiting for the slowest rank; "compute" is the rest.  One
process also times the compiled path (fit's default without MPI) for reference.
Rank 0 prints medians over --repeats of --steps steps.
"""
import argparse
import json
import statistics
import time

import numpy as np

import npvae
from npvae import parallel


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads per rank")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    comm = parallel.world()
    rank, size = parallel.rank_of(comm), parallel.size_of(comm)
    npvae.set_threads(blas=args.threads, numba=1)
    rng = np.random.default_rng(0)
    x = rng.random((4096, 784)).astype(np.float32)
    out = {"ranks": size, "threads": args.threads, "steps": {}}

    # time the Allreduce calls of the step
    comm_time = [0.0]
    real_sum = parallel.sum_in_place

    def timed_sum(c, a):
        t = time.perf_counter()
        real_sum(c, a)
        comm_time[0] += time.perf_counter() - t
        return a
    parallel.sum_in_place = timed_sum

    for B in (128, 1024):
        model = npvae.VAE(784, 20, hidden=(400,))
        opt = npvae.Adam(lr=1e-4)
        state = opt.init(model.params)
        step = npvae.train.TrainStep(model, dynamic_binarize=True, comm=comm)
        r = np.random.default_rng(1)
        totals, comms = [], []
        with npvae.threads.limited():
            for rep in range(args.repeats + 1):
                if comm is not None:
                    comm.Barrier()
                comm_time[0] = 0.0
                t0 = time.perf_counter()
                for s in range(args.steps):
                    idx = r.integers(0, len(x), B)
                    step(x, idx, r, 1.0)
                    opt.update(model.params, step.grads, state, grad_norm=step.grad_norm)
                t = (time.perf_counter() - t0) / args.steps
                if rep:  # the first repeat warms up
                    totals.append(t)
                    comms.append(comm_time[0] / args.steps)
        med, cm = statistics.median(totals), statistics.median(comms)
        row = {"step_ms": med * 1e3, "comm_ms": cm * 1e3, "compute_ms": (med - cm) * 1e3,
               "spread_ms": [min(totals) * 1e3, max(totals) * 1e3], "params": model.n_params}
        if comm is None:  # the compiled path, fit's default in one process
            chunks = npvae.compiled.AdamSteps(model, opt, state, step.grads, dynamic_binarize=True)
            T = chunks.thread_settings(B)
            ts = []
            with npvae.threads.limited(**T):
                for rep in range(args.repeats + 1):
                    idx = r.integers(0, len(x), (args.steps, B))
                    t0 = time.perf_counter()
                    for s0 in range(0, args.steps, 16):
                        chunks.run(x, idx[s0:s0 + 16], r, np.ones(len(idx[s0:s0 + 16])))
                    if rep:
                        ts.append((time.perf_counter() - t0) / args.steps)
            row["compiled_step_ms"] = statistics.median(ts) * 1e3
        out["steps"][B] = row
    parallel.sum_in_place = real_sum

    model = npvae.VAE(784, 20, hidden=(400,))
    xb = (x[:args.images] > 0.5).astype(np.float32)
    ts = []
    for rep in range(3):
        if comm is not None:
            comm.Barrier()
        t0 = time.perf_counter()
        model.log_likelihood(xb, n_samples=5000, batch_size=10, rng=np.random.default_rng(2))
        ts.append(time.perf_counter() - t0)
    out["log_px_s"] = statistics.median(ts[1:])
    out["log_px_images"] = args.images

    # the Allreduce alone, by message size: the cost model's latency and bandwidth
    out["allreduce"] = {}
    if comm is not None:
        for n in (1, 1 << 10, 1 << 14, 1 << 17, 1 << 20, 1 << 22):
            buf = np.ones(n, np.float32)
            reps = max(5, min(200, (1 << 24) // (n * 4)))
            ts = []
            for rep in range(5):
                comm.Barrier()
                t0 = time.perf_counter()
                for _ in range(reps):
                    parallel.sum_in_place(comm, buf)
                ts.append((time.perf_counter() - t0) / reps)
            out["allreduce"][n] = statistics.median(ts)

    if rank == 0:
        for n, t in out["allreduce"].items():
            print(f"Allreduce of {n:8d} float32 ({n * 4 / 1e6:8.3f} MB): {t * 1e6:9.1f} us"
                  f"  ({n * 4 / t / 1e9:.2f} GB/s)")
        print(f"{size} rank(s) x {args.threads} BLAS thread(s); 784-400-20, float32, Adam; medians of "
              f"{args.repeats} x {args.steps} steps")
        for B, row in out["steps"].items():
            extra = f"   (compiled path, one process: {row['compiled_step_ms']:.2f} ms)" \
                if "compiled_step_ms" in row else ""
            print(f"batch {B:5d}: step {row['step_ms']:7.2f} ms = compute {row['compute_ms']:7.2f} + "
                  f"comm {row['comm_ms']:5.2f}  [{row['spread_ms'][0]:.2f}, {row['spread_ms'][1]:.2f}]{extra}")
        print(f"ln p(x), K = 5000, {args.images} images: {out['log_px_s']:.2f} s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
