"""Training-step throughput: npvae (numba and NumPy backends), PyTorch eager, torch.compile,
JAX jit, and the GEMM floor.

Config A: 784-400-20, ReLU, Bernoulli, batch 128.  Config B: 16-64-64-4, tanh, Gaussian
(fixed σ = 1), batch 64.  Every implementation does one full Adam step in float32 (noise
draw, loss, gradient, update).  Each repeat times ``--steps`` steps; the implementations
are measured round-robin within each repeat, in one process per config (``--same-process``:
all configs in one), and the table reports the
median over ``--repeats`` repeats (≥ 5); before each timed run, the same implementation runs
untimed for 0.2 s, so that the previous one's idle threads have gone quiet (``settle``).  Thread settings are explicit (threadpoolctl for
BLAS, numba.set_num_threads, torch.set_num_threads) and each is measured.

The GEMM floor runs only the matrix products of one npvae step (same shapes, preallocated
outputs): forward x W, and backward xᵀ dY and dY Wᵀ (none for the input layer).

Run:  python benchmarks/bench_step.py [--repeats 7] [--json bench_step.json]
(The peers are optional, each skipped when missing: pip install ".[bench]" gives torch 2.13.0
CPU, jax and optax.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import npvae
from npvae import kernels
from npvae.kernels import blas as products, gemm

CONFIGS = {
    "A": dict(n_inputs=784, hidden=(400,), n_latent=20, activation="relu",
              likelihood="bernoulli", batch=128, steps=40),
    "B": dict(n_inputs=16, hidden=(64, 64), n_latent=4, activation="tanh",
              likelihood="gaussian", batch=64, steps=400),
}


def make_data(cfg, seed=0):
    rng = np.random.default_rng(seed)
    shape = (cfg["batch"] * 8, cfg["n_inputs"])
    if cfg["likelihood"] == "bernoulli":
        return (rng.random(shape) < 0.3).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def npvae_runner(cfg, x, backend, blas, nthreads):
    model = npvae.VAE(cfg["n_inputs"], cfg["n_latent"], hidden=cfg["hidden"],
                      activation=cfg["activation"], likelihood=cfg["likelihood"])
    opt = npvae.Adam(lr=1e-3)
    state = opt.init(model.params)
    step = npvae.train.TrainStep(model)
    rng = np.random.default_rng(0)
    B = cfg["batch"]
    batches = [np.arange(i * B, (i + 1) * B) for i in range(len(x) // B)]

    def run(n):
        kernels.set_backend(backend)
        with threadpool_limits(limits=blas, user_api="blas"):
            numba.set_num_threads(nthreads)
            t = time.perf_counter()
            for k in range(n):
                step(x, batches[k % len(batches)], rng, 1.0)
                opt.update(model.params, step.grads, state, grad_norm=step.grad_norm)
            return time.perf_counter() - t

    return run


def compiled_runner(cfg, x, blocks, threads, chunk=npvae.compiled.CHUNK):
    """The compiled path fit takes: chunks of ``chunk`` whole steps per call, the batch in
    ``blocks`` row blocks; ``threads`` is npvae's thread setting (set_threads(blas=...)):
    with one block, BLAS's threads; with two, numba threads running the blocks on 1-thread BLAS."""
    model = npvae.VAE(cfg["n_inputs"], cfg["n_latent"], hidden=cfg["hidden"],
                      activation=cfg["activation"], likelihood=cfg["likelihood"])
    opt = npvae.Adam(lr=1e-3)
    state = opt.init(model.params)
    grads = npvae.optim.flat_like(model.params)
    steps = npvae.compiled.AdamSteps(model, opt, state, grads)
    steps.blocks = blocks
    rng = np.random.default_rng(0)
    B = cfg["batch"]
    idx = np.arange(len(x) // B * B).reshape(-1, B)
    betas = np.ones(chunk)

    def run(n):
        kernels.set_backend("numba")
        saved = npvae.get_threads()
        npvae.set_threads(blas=threads, numba=1)
        try:
            with npvae.threads.limited(**steps.thread_settings(B)):  # as fit enters them
                t = time.perf_counter()
                done = 0
                while done < n:
                    s = min(chunk, n - done)
                    rows = idx[np.arange(done, done + s) % len(idx)]
                    steps.run(x, rows, rng, betas[:s])
                    done += s
                return time.perf_counter() - t
        finally:
            npvae.set_threads(**saved)

    return run


def fit_blocks(cfg):
    """The row blocks ``fit`` splits this config's batch into (its default, by the step's work)."""
    model = npvae.VAE(cfg["n_inputs"], cfg["n_latent"], hidden=cfg["hidden"],
                      activation=cfg["activation"], likelihood=cfg["likelihood"])
    opt = npvae.Adam()
    steps = npvae.compiled.AdamSteps(model, opt, opt.init(model.params), npvae.optim.flat_like(model.params))
    return steps.blocks_for(cfg["batch"])


def gemm_runner(cfg, blas):
    model = npvae.VAE(cfg["n_inputs"], cfg["n_latent"], hidden=cfg["hidden"],
                      activation=cfg["activation"], likelihood=cfg["likelihood"])
    B = cfg["batch"]
    ops = []
    for name, W in model.params.items():
        if not name.endswith(".W"):
            continue
        n_in, n_out = W.shape
        x = np.ones((B, n_in), np.float32)
        y = np.empty((B, n_out), np.float32)
        gW = np.empty_like(W)
        ops.append((x, W, y))          # forward  x @ W
        ops.append((x.T, y, gW))       # backward xᵀ dY
        is_input_layer = name == "encoder.0.W" or (not cfg["hidden"] and name.startswith("encoder."))
        if not is_input_layer:
            ops.append((y, W.T, np.empty((B, n_in), np.float32)))  # backward dY Wᵀ

    def run(n):
        with threadpool_limits(limits=blas, user_api="blas"):
            t = time.perf_counter()
            for _ in range(n):
                for a, b, out in ops:
                    np.matmul(a, b, out=out)
            return time.perf_counter() - t

    return run


@numba.njit(parallel=True)
def own_products(X, W, Y, GW, DX, has_dx, n):
    """The floor's products through npvae's own kernel, the way the compiled step runs them:
    the batch in 2 row blocks on 2 numba threads, each block's xᵀ dY into its own buffer."""
    for _ in range(n):
        for tu in numba.prange(2):
            t = np.int64(tu)  # (prange's index is unsigned)
            for i in range(len(X)):
                B = X[i].shape[0]
                r0, r1 = t * B // 2, (t + 1) * B // 2
                gemm.product(X[i][r0:r1], W[i], Y[i][r0:r1], False)
                gemm.product(X[i][r0:r1].T, Y[i][r0:r1], GW[t][i], False)
                if has_dx[i]:
                    gemm.product(Y[i][r0:r1], W[i].T, DX[i][r0:r1], False)


def own_gemm_runner(cfg):
    """The GEMM floor's products by npvae's own kernel (:mod:`npvae.kernels.gemm`), on 2
    numba threads: the floor of the products the compiled step calls."""
    model = npvae.VAE(cfg["n_inputs"], cfg["n_latent"], hidden=cfg["hidden"],
                      activation=cfg["activation"], likelihood=cfg["likelihood"])
    B = cfg["batch"]
    L = numba.typed.List
    X, W, Y, DX, has_dx = L(), L(), L(), L(), []
    GW = [L(), L()]
    for name, w in model.params.items():
        if not name.endswith(".W"):
            continue
        n_in, n_out = w.shape
        X.append(np.ones((B, n_in), np.float32))
        W.append(np.ascontiguousarray(w, np.float32))
        Y.append(np.ones((B, n_out), np.float32))
        DX.append(np.empty((B, n_in), np.float32))
        for t in range(2):
            GW[t].append(np.empty((n_in, n_out), np.float32))
        has_dx.append(not (name == "encoder.0.W" or (not cfg["hidden"] and name.startswith("encoder."))))
    GWs, has = L(GW), np.array(has_dx)

    def run(n):
        with threadpool_limits(limits=1, user_api="blas"):
            numba.set_num_threads(2)
            t = time.perf_counter()
            own_products(X, W, Y, GWs, DX, has, n)
            return time.perf_counter() - t

    return run


def torch_runner(cfg, x_np, nthreads, compiled=False):
    """PyTorch eager, or with the loss and its backward compiled by torch.compile (inductor);
    Adam (foreach) from torch.optim in both."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    act = {"relu": torch.relu, "tanh": torch.tanh}[cfg["activation"]]
    D, H, J = cfg["n_inputs"], cfg["hidden"], cfg["n_latent"]
    enc = nn.ModuleList([nn.Linear(a, b) for a, b in zip((D,) + H[:-1], H)])
    mu, lv = nn.Linear(H[-1], J), nn.Linear(H[-1], J)
    dec = nn.ModuleList([nn.Linear(a, b) for a, b in zip((J,) + H[::-1][:-1], H[::-1])])
    out = nn.Linear(H[0], D)
    params = [p for m in (enc, mu, lv, dec, out) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    x_all = torch.from_numpy(x_np)
    B = cfg["batch"]
    half_log_2pi = 0.5 * float(np.log(2 * np.pi))

    def loss_fn(xb, eps):
        h = xb
        for layer in enc:
            h = act(layer(h))
        m, v = mu(h), lv(h)
        z = m + torch.exp(0.5 * v) * eps
        h = z
        for layer in dec:
            h = act(layer(h))
        o = out(h)
        if cfg["likelihood"] == "bernoulli":
            rec = nn.functional.binary_cross_entropy_with_logits(o, xb, reduction="sum")
        else:
            rec = 0.5 * ((xb - o) ** 2).sum() + half_log_2pi * xb.numel()
        kl = -0.5 * torch.sum(1 + v - m ** 2 - v.exp())
        return (rec + kl) / xb.shape[0]

    forward = torch.compile(loss_fn) if compiled else loss_fn

    def step(xb):
        loss = forward(xb, torch.randn(xb.shape[0], J))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def run(n):
        torch.set_num_threads(nthreads)
        t = time.perf_counter()
        for k in range(n):
            i = (k % (len(x_all) // B)) * B
            step(x_all[i:i + B])
        return time.perf_counter() - t

    return run


def jax_runner(cfg, x_np):
    """jax.jit of the whole step: noise, loss, gradient and optax Adam, buffers donated.
    XLA's CPU thread pool is fixed when JAX starts (it uses every core); it is not set here."""
    import functools

    import jax
    import jax.numpy as jnp
    import optax

    D, H, J = cfg["n_inputs"], cfg["hidden"], cfg["n_latent"]
    act = {"relu": jax.nn.relu, "tanh": jnp.tanh}[cfg["activation"]]
    rng = np.random.default_rng(0)

    def linear(n_in, n_out):
        lim = 1 / np.sqrt(n_in)
        return (jnp.asarray(rng.uniform(-lim, lim, (n_in, n_out)).astype(np.float32)),
                jnp.zeros(n_out, jnp.float32))

    params = {"enc": [linear(a, b) for a, b in zip((D,) + H[:-1], H)], "mu": linear(H[-1], J),
              "lv": linear(H[-1], J), "dec": [linear(a, b) for a, b in zip((J,) + H[::-1][:-1], H[::-1])],
              "out": linear(H[0], D)}
    half_log_2pi = 0.5 * float(np.log(2 * np.pi))

    def loss_fn(p, xb, eps):
        h = xb
        for W, b in p["enc"]:
            h = act(h @ W + b)
        m, v = h @ p["mu"][0] + p["mu"][1], h @ p["lv"][0] + p["lv"][1]
        h = m + jnp.exp(0.5 * v) * eps
        for W, b in p["dec"]:
            h = act(h @ W + b)
        o = h @ p["out"][0] + p["out"][1]
        if cfg["likelihood"] == "bernoulli":
            rec = jnp.sum(jax.nn.softplus(o) - xb * o)
        else:
            rec = 0.5 * jnp.sum((xb - o) ** 2) + half_log_2pi * xb.size
        kl = -0.5 * jnp.sum(1 + v - m ** 2 - jnp.exp(v))
        return (rec + kl) / xb.shape[0]

    opt = optax.adam(1e-3)
    state = {"params": params, "opt": opt.init(params), "key": jax.random.PRNGKey(0)}

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, o, key, xb):
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, jax.random.normal(sub, (xb.shape[0], J)))
        updates, o = opt.update(grads, o, p)
        return optax.apply_updates(p, updates), o, key, loss

    B = cfg["batch"]
    batches = [jnp.asarray(x_np[i * B:(i + 1) * B]) for i in range(len(x_np) // B)]

    def run(n):
        t = time.perf_counter()
        loss = None
        for k in range(n):
            state["params"], state["opt"], state["key"], loss = step(state["params"], state["opt"],
                                                                   state["key"], batches[k % len(batches)])
        loss.block_until_ready()
        return time.perf_counter() - t

    return run


def settle(run, steps, seconds=0.2):
    """Run untimed steps for ``seconds``: the previous implementation's idle threads (OpenBLAS
    spins about 0.1 s after its last product, on the cores this one needs) would otherwise
    slow this one's first steps, which no single training run sees."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        run(max(1, steps // 8))


def measure(runners, steps, repeats):
    for run in runners.values():  # warm-up: compile, allocate, fill caches
        run(max(3, steps // 10))
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            settle(run, steps)
            times[name].append(run(steps) / steps)
    return {name: statistics.median(ts) for name, ts in times.items()}, times


def each_in_its_own_process(names, args):
    """Run ``--configs`` one config per fresh process and merge their results: a config
    measured after another in the same process inherits the other's peers' idle thread pools
    and memory (16-64-64-4 measured 0.064 ms a step in its own process, 0.100 ms after
    784-400-20's PyTorch, torch.compile and JAX runs), which no user's training run sees.
    Within a config, every implementation is still measured round-robin in one process."""
    results = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out = os.path.join(tmp, f"{name}.json")
            subprocess.run([sys.executable, os.path.abspath(__file__), "--configs", name,
                            "--repeats", str(args.repeats), "--json", out], check=True)
            with open(out) as f:
                one = json.load(f)
            if results is None:
                results = one
            else:
                results["configs"].update(one["configs"])
    results["each_config_in_its_own_process"] = True
    print("\nAll configs (each measured in its own process):")
    for name, res in results["configs"].items():
        summ = res["summary"]
        peers = "   ".join(f"npvae / {k[len('speedup_vs_'):]}: {v:.2f}x" for k, v in summ.items()
                           if k.startswith("speedup_vs_"))
        print(f"{name}: npvae step / GEMM floor {summ['step_over_floor']:.2f}x, / npvae-kernel floor "
              f"{summ['step_over_own_kernel_floor']:.2f}x   {peers}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--configs", default="A,B")
    ap.add_argument("--json", default=None)
    ap.add_argument("--same-process", action="store_true",
                    help="measure every config in this one process (by default each config runs in a "
                         "fresh process of its own)")
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error("--repeats must be at least 5")
    names = args.configs.split(",")
    if len(set(names)) != len(names) or not set(names) <= set(CONFIGS):
        ap.error(f"--configs: distinct names of {', '.join(CONFIGS)}, comma-separated")
    if len(names) > 1 and not args.same_process:
        return each_in_its_own_process(names, args)
    have = {}
    for module, hint in (("torch", "torch==2.13.0"), ("jax", "jax optax")):
        try:
            __import__(module)
            have[module] = True
        except ImportError:
            have[module] = False
            print(f"{module} not installed: its rows are skipped (pip install {hint}, or the bench extra)")

    results = {"machine": platform.machine(), "numpy": np.__version__, "numba": numba.__version__,
               "blas": [{k: i.get(k) for k in ("internal_api", "version", "architecture")}
                        for i in threadpool_info() if i.get("user_api") == "blas"],
               "configs": {}}
    original_backend = kernels.get_backend()
    for name in names:
        cfg = CONFIGS[name]
        x = make_data(cfg)
        runners = {}
        for blas in (1, 2):
            for nt in (1, 2):
                runners[f"npvae numba (BLAS {blas}, numba {nt})"] = npvae_runner(cfg, x, "numba", blas, nt)
        for blas in (1, 2):
            runners[f"npvae compiled, 1 block (BLAS {blas})"] = compiled_runner(cfg, x, 1, blas)
        for nt in (1, 2):
            runners[f"npvae compiled, 2 blocks (numba {nt})"] = compiled_runner(cfg, x, 2, nt)
        for blas in (1, 2):
            runners[f"npvae numpy (BLAS {blas})"] = npvae_runner(cfg, x, "numpy", blas, 1)
        if have["torch"]:
            for nt in (1, 2):
                runners[f"PyTorch (threads {nt})"] = torch_runner(cfg, x, nt)
            for nt in (1, 2):
                runners[f"torch.compile (threads {nt})"] = torch_runner(cfg, x, nt, compiled=True)
        if have["jax"]:
            runners["JAX jit (XLA's own threads)"] = jax_runner(cfg, x)
        for blas in (1, 2):
            runners[f"GEMM floor (BLAS {blas})"] = gemm_runner(cfg, blas)
        runners[f"products floor, npvae kernel ({gemm.VECTOR_BITS}-bit, numba 2)"] = own_gemm_runner(cfg)
        med, raw = measure(runners, cfg["steps"], args.repeats)
        kernels.set_backend(original_backend)

        def best(prefix):
            keys = [k for k in med if k.startswith(prefix)]
            return min(keys, key=med.get) if keys else None

        ours = min(filter(None, (best("npvae compiled"), best("npvae numba"))), key=med.get)
        floor = best("GEMM floor")
        own_floor = best("products floor, npvae kernel")
        peers = {p: best(p) for p in ("PyTorch", "torch.compile", "JAX jit") if best(p)}
        B = cfg["batch"]
        print(f"\nConfig {name}: {cfg['n_inputs']}-{'-'.join(map(str, cfg['hidden']))}-"
              f"{cfg['n_latent']}, {cfg['activation']}, {cfg['likelihood']}, batch {B}, float32, "
              f"Adam; median of {args.repeats} repeats x {cfg['steps']} steps")
        print(f"{'implementation':38s} {'ms/step':>9s} {'samples/s':>11s}")
        for k in med:
            mark = " <- best" if k in (ours, floor, *peers.values()) else ""
            print(f"{k:38s} {med[k] * 1e3:9.3f} {B / med[k]:11.0f}{mark}")
        summary = {"npvae_best": ours, "gemm_floor_best": floor,
                   "step_over_floor": med[ours] / med[floor], "gemm": products.BLAS,
                   "step_over_own_kernel_floor": med[ours] / med[own_floor],
                   "fit_runs_blocks": fit_blocks(cfg)}
        for peer, key in peers.items():
            summary[f"speedup_vs_{peer}"] = med[key] / med[ours]
            print(f"npvae / {peer} throughput: {summary[f'speedup_vs_{peer}']:.2f}x   ", end="")
        spread = {k: (min(raw[k]) * 1e3, max(raw[k]) * 1e3) for k in raw}
        summary["spread_ms"] = spread
        print(f"npvae step / GEMM floor: {summary['step_over_floor']:.2f}x; / its products by npvae's kernel: "
              f"{summary['step_over_own_kernel_floor']:.2f}x (the step calls {products.BLAS}); "
              f"fit runs this config as {summary['fit_runs_blocks']} row block(s)")
        results["configs"][name] = {"config": {k: v for k, v in cfg.items()}, "median_s": med,
                                    "all_s": raw, "summary": summary}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
