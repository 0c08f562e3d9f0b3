"""A training step inside ``fit`` (the compiled path: chunks of steps) against the same step
in a user's own loop (the README's ``loss_and_grad`` + ``update``, and
``AdamSteps.run`` one step per call), and the evaluation calls (``elbo``, which fit runs for
its validation, and ``log_likelihood``) against the same calls under fit's thread settings,
with no thread settings from the user: they must run as fast as inside fit.

Config: 784-400-20, ReLU, Bernoulli, batch 128, float32, Adam; the IWAE rows (K = 5)
784-300-300-40 at batch 100.  Each repeat times --steps
steps of each loop, round-robin in one process; the table gives medians over --repeats.

Run:  python benchmarks/bench_outside_fit.py [--repeats 7] [--json out.json]
"""
import argparse
import json
import statistics
import time

import numpy as np

import npvae
from bench_step import settle


def as_fit_runs(chunks, x, rows, rng):
    """n steps as fit runs them: chunks of compiled steps (``chunks``, an AdamSteps) under
    its thread settings, on the batches ``rows`` (8, B) in turn."""
    B = rows.shape[1]

    def run(n):
        with npvae.threads.limited(**chunks.thread_settings(B)):
            done = 0
            while done < n:
                s = min(npvae.compiled.CHUNK, n - done)
                chunks.run(x, rows[np.arange(done, done + s) % len(rows)], rng, np.ones(s))
                done += s
    return run


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = (rng.random((128 * 8, 784)) < 0.3).astype(np.float32)
    B = 128

    fit_model = npvae.VAE(784, 20, hidden=(400,))
    own_model = npvae.VAE(784, 20, hidden=(400,))
    opt = npvae.Adam(lr=1e-3)
    fit_state, own_state = opt.init(fit_model.params), opt.init(own_model.params)
    step = npvae.train.TrainStep(fit_model)
    chunks = npvae.compiled.AdamSteps(fit_model, opt, fit_state, step.grads)
    r1, r2, r3 = np.random.default_rng(1), np.random.default_rng(1), np.random.default_rng(1)
    own_steps_model = npvae.VAE(784, 20, hidden=(400,))
    own_steps_state = opt.init(own_steps_model.params)
    own_steps = npvae.compiled.AdamSteps(own_steps_model, opt, own_steps_state,
                                             npvae.optim.flat_like(own_steps_model.params))
    rows = np.arange(8 * B).reshape(8, B)

    inside_fit = as_fit_runs(chunks, x, rows, r1)

    def own_compiled_loop(n):  # a user's loop of compiled steps, one call per step, no settings
        for i in range(n):
            own_steps.run(x, rows[i % 8:i % 8 + 1], r3, np.ones(1))

    def own_loop(n):  # the README's loop: no thread settings
        for i in range(n):
            xb = x[(i % 8) * B:(i % 8 + 1) * B]
            _, grads, _ = own_model.loss_and_grad(xb, rng=r2)
            opt.update(own_model.params, grads, own_state)

    def log_likelihood(n):
        own_model.log_likelihood(x[:64], n_samples=50 * n)

    def elbo(n):  # one call per "step" (not one call on n copies: a 0.6 GB array to fault in)
        for _ in range(n):
            own_model.elbo(x)

    # the importance-weighted bound, K = 5, on 784-300-300-40 at batch 100 (the IWAE row's config)
    Bi, Ki = 100, 5
    xi = (rng.random((Bi * 8, 784)) < 0.3).astype(np.float32)
    iw_fit_model, iw_own_model = (npvae.VAE(784, 40, hidden=(300, 300)) for _ in range(2))
    iw_fit_state, iw_own_state = opt.init(iw_fit_model.params), opt.init(iw_own_model.params)
    iw_step = npvae.train.TrainStep(iw_fit_model, objective="iwae", n_samples=Ki)
    iw_chunks = npvae.compiled.AdamSteps(iw_fit_model, opt, iw_fit_state, iw_step.grads, objective="iwae",
                                         n_samples=Ki)
    iw_rows = np.arange(8 * Bi).reshape(8, Bi)
    r4, r5 = np.random.default_rng(4), np.random.default_rng(5)

    iwae_inside_fit = as_fit_runs(iw_chunks, xi, iw_rows, r4)

    def iwae_own_loop(n):
        for i in range(n):
            _, grads, _ = iw_own_model.loss_and_grad(xi[(i % 8) * Bi:(i % 8 + 1) * Bi], rng=r5, objective="iwae",
                                                     n_samples=Ki)
            opt.update(iw_own_model.params, grads, iw_own_state)

    def under_fit_settings(f, evaluation=False):  # under fit's settings; evaluation: as fit
        def run(n):                                   # runs its validation ELBO inside them
            with npvae.threads.limited(**chunks.thread_settings(B)), \
                    npvae.threads.limited(**(npvae.threads.engine_limits() if evaluation else {})):
                f(n)
        return run

    runs = {"step inside fit": inside_fit, "step in a user's own loop": own_loop,
            "compiled step in a user's own loop": own_compiled_loop,
            "log_likelihood, 64 examples, K = 50/step": log_likelihood, "elbo, 1024 examples/step": elbo,
            "log_likelihood under fit's thread settings": under_fit_settings(log_likelihood),
            "elbo as fit's validation runs it": under_fit_settings(elbo, evaluation=True),
            "IWAE K=5 step inside fit (784-300-300-40)": iwae_inside_fit,
            "IWAE K=5 step in a user's own loop": iwae_own_loop}
    for f in runs.values():
        f(2)  # compile, warm the caches
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, f in runs.items():
            settle(f, args.steps)
            t0 = time.perf_counter()
            f(args.steps)
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'what':45s} {'ms per step (median)':>22s} {'min':>8s} {'max':>8s}")
    for k, v in times.items():
        print(f"{k:45s} {med[k]:22.3f} {min(v):8.3f} {max(v):8.3f}")
    ratio = med["step in a user's own loop"] / med["step inside fit"]
    ratio_c = med["compiled step in a user's own loop"] / med["step inside fit"]
    print(f"own loop (loss_and_grad + update) / inside fit: {ratio:.2f}x  (target <= 1.2x)")
    print(f"own loop of compiled steps / inside fit: {ratio_c:.2f}x")
    ratio_ll = med["log_likelihood, 64 examples, K = 50/step"] / med["log_likelihood under fit's thread settings"]
    ratio_elbo = med["elbo, 1024 examples/step"] / med["elbo as fit's validation runs it"]
    print(f"log_likelihood / under fit's settings: {ratio_ll:.2f}x; elbo / as fit's validation: {ratio_elbo:.2f}x"
          "  (target <= 1.2x)")
    ratio_iw = med["IWAE K=5 step in a user's own loop"] / med["IWAE K=5 step inside fit (784-300-300-40)"]
    print(f"IWAE own loop (loss_and_grad + update) / inside fit: {ratio_iw:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ms": times, "median": med, "ratio_own_loop_to_fit": ratio,
                       "ratio_own_compiled_loop_to_fit": ratio_c, "ratio_log_likelihood": ratio_ll,
                       "ratio_elbo": ratio_elbo, "ratio_iwae_own_loop_to_fit": ratio_iw}, f, indent=1)


if __name__ == "__main__":
    main()
