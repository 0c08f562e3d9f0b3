"""Two checkouts of npvae side by side: the compiled step's speed before and after a change.

Runs the same measurements with each checkout first on ``PYTHONPATH``, in alternating
subprocesses (base, new, base, new, ...), and reports each measurement's median over
``--repeats`` processes per checkout, and the ratio new / base (below 1: the new one is
faster).  What is measured, all float32, Adam, npvae's default threads:

- ``A``: one training step of 784-400-20 ReLU Bernoulli at batch 128 (the compiled path,
  chunks of 16 steps as ``fit`` runs them); ``B``: 16-64-64-4 tanh Gaussian (σ = 1) at 64;
- ``A iwae k=5``: the importance-weighted step of A with five samples;
- ``A ln p(x)``: ln p(x) of 64 examples with K = 1000 (``npvae.estimators.log_likelihood``);
- ``A user loop``: a user's own loop, ``model.loss_and_grad`` then ``optimizer.update``;
- ``cold start``: a process that imports npvae and trains A for one step on an empty kernel
  cache (``--cold``, once per checkout: it compiles for tens of seconds).

Run:  python benchmarks/compare_checkouts.py --base ../base --new . [--repeats 5] [--json out.json]
Nothing else should run on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r'''
import json, sys, time
import numpy as np
import npvae

def median_time(fn, n, repeats=5):
    fn(max(1, n // 4))  # warm: compiled, buffers made
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(n)
        times.append((time.perf_counter() - t) / n)
    return sorted(times)[len(times) // 2]

def compiled_steps(cfg, objective="elbo", k=1):
    model = npvae.VAE(cfg["n_inputs"], cfg["n_latent"], hidden=cfg["hidden"], activation=cfg["activation"],
                      likelihood=cfg["likelihood"], seed=0)
    opt = npvae.Adam(lr=1e-3)
    state = opt.init(model.params)
    grads = npvae.optim.flat_like(model.params)
    steps = npvae.compiled.AdamSteps(model, opt, state, grads, objective=objective, n_samples=k)
    rng = np.random.default_rng(0)
    B = cfg["batch"]
    x = (np.random.default_rng(1).random((B * 8, cfg["n_inputs"])) < 0.3).astype(np.float32)
    if cfg["likelihood"] == "gaussian":
        x = np.random.default_rng(1).standard_normal((B * 8, cfg["n_inputs"])).astype(np.float32)
    idx = np.arange(B * 8).reshape(8, B)
    betas = np.ones(16)
    def run(n):
        done = 0
        with npvae.threads.limited(**steps.thread_settings(B)):
            while done < n:
                s = min(16, n - done)
                steps.run(x, idx[np.arange(done, done + s) % 8], rng, betas[:s])
                done += s
    return model, x, run

A = dict(n_inputs=784, hidden=(400,), n_latent=20, activation="relu", likelihood="bernoulli", batch=128)
B = dict(n_inputs=16, hidden=(64, 64), n_latent=4, activation="tanh", likelihood="gaussian", batch=64)
out = {}
if sys.argv[1] == "cold":
    t = time.perf_counter()
    compiled_steps(A)[2](1)
    out["cold start"] = time.perf_counter() - t
else:
    model, x, run = compiled_steps(A)
    out["A"] = median_time(run, 48)
    out["B"] = median_time(compiled_steps(B)[2], 400)
    out["A iwae k=5"] = median_time(compiled_steps(A, "iwae", 5)[2], 16)
    xs = x[:64].astype(np.float32)
    def lp(n):
        for _ in range(n):
            npvae.estimators.log_likelihood(model, xs, n_samples=1000, rng=np.random.default_rng(0), progress=False)
    out["A ln p(x)"] = median_time(lp, 2, repeats=3)
    opt = npvae.Adam(lr=1e-3)
    state = opt.init(model.params)
    rng = np.random.default_rng(2)
    def user(n):
        for i in range(n):
            _, g, _ = model.loss_and_grad(x[(i % 8) * 128:(i % 8 + 1) * 128], rng=rng)
            opt.update(model.params, g, state)
    out["A user loop"] = median_time(user, 32)
print(json.dumps(out))
'''


def measure(checkout: Path, mode: str, cache: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout.resolve()))
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = cache
    proc = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        sys.exit(f"{checkout}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--new", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="also time a cold start per checkout")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs = {"base": [], "new": []}
    for r in range(args.repeats):
        for name in ("base", "new"):
            runs[name].append(measure(getattr(args, name), "warm", None))
            print(f"repeat {r + 1}/{args.repeats} {name}: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in runs[name][-1].items()),
                  file=sys.stderr)
    if args.cold:
        for name in ("base", "new"):
            with tempfile.TemporaryDirectory() as cache:
                runs[name].append(measure(getattr(args, name), "cold", cache))
    table = {}
    for key in runs["base"][0].keys() | {"cold start"}:
        b = [m[key] for m in runs["base"] if key in m]
        n = [m[key] for m in runs["new"] if key in m]
        if b and n:
            table[key] = {"base": statistics.median(b), "new": statistics.median(n),
                          "ratio": statistics.median(n) / statistics.median(b)}
    print(f"| measurement | base ({args.base}) | new ({args.new}) | new / base |\n| --- | --- | --- | --- |")
    for key in ("A", "B", "A iwae k=5", "A ln p(x)", "A user loop", "cold start"):
        if key in table:
            t = table[key]
            unit, f = ("s", 1) if key == "cold start" else ("ms", 1e3)
            print(f"| {key} | {t['base'] * f:.3f} {unit} | {t['new'] * f:.3f} {unit} | {t['ratio']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
