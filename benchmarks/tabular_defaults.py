"""Defaults for ``npvae train`` on small real-valued tabular data, chosen by measurement.

Four synthetic data sets, each split 8000 train / 2000 validation / 2000 test rows and
standardised with ``npvae.data.Standardizer().fit(x_train)`` exactly as the CLI does:

  ring   2-D mixture of 8 Gaussians on a ring (radius 4, σ 0.3); true density known.
  moons  2-D two moons (unit arcs, noise σ 0.1); true density by 1-D quadrature over the arc.
  tanh16 16 features, x = f(z) + N(0, 0.1²), z ~ N(0, I_3), f a fixed random 2-layer tanh map.
  gauss10 10-feature correlated Gaussian (a linear model is optimal); true density known.
  (tanh16_int, only with --datasets: tanh16 with 6 integer-valued features, a stress test.)

Every configuration is trained through the Python API (``npvae.VAE`` + ``npvae.fit``, Gaussian
likelihood, Adam) and scored on the test rows by the importance-sampled ln p(x)
(``model.log_likelihood``, K = 1000, fixed rng), in nats per row in standardised units.
References in the same units: a single full-covariance Gaussian fitted to the training rows
(closed form), and the true density where known, moved into standardised units by the
standardiser's Jacobian: ln p_std(x') = ln p(x) + Σ_j ln std_j.

Configurations are varied one (or two) factors at a time from a base (seed 0); the finalists
are trained with seeds 0, 1, 2.  A ``npvae.DivergenceError`` (or a non-finite test ln p) is
recorded as a failure.  Training runs one at a time with one BLAS thread and one numba thread.
Results and the chosen defaults: benchmarks/tabular_defaults.md.

Run:  python benchmarks/tabular_defaults.py [--stage sweep|stage2|finalists|all]
                                            [--json PATH [--resume]] [--datasets a,b]
      python benchmarks/tabular_defaults.py --quick   (old vs chosen defaults, seed 0, K = 200)
--resume reuses the finished runs stored in --json PATH, so a later stage only adds runs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import npvae

N_TRAIN, N_VAL, N_TEST = 8000, 2000, 2000
DATA_SEED = 20240601
K_EVAL = 1000


# ----------------------------------------------------------------------------------------
# Data sets: raw samples and, where known, the true ln p(x) in raw units
# ----------------------------------------------------------------------------------------
def _logsumexp(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))).squeeze(axis)


def ring(rng, n):
    k, r, s = 8, 4.0, 0.3
    ang = 2 * np.pi * np.arange(k) / k
    centres = r * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    x = centres[rng.integers(k, size=n)] + s * rng.standard_normal((n, 2))

    def logp(x):
        d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
        return _logsumexp(-0.5 * d2 / s**2, 1) - math.log(k) - math.log(2 * np.pi * s**2)

    return x, logp


def moons(rng, n):
    """sklearn-style two moons with t ~ U(0, π) (continuous) and isotropic noise σ."""
    s = 0.1
    t = rng.uniform(0, np.pi, n)
    which = rng.integers(2, size=n)
    c = np.where(which[:, None] == 0, np.stack([np.cos(t), np.sin(t)], 1),
                 np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
    x = c + s * rng.standard_normal((n, 2))
    # p(x) = ½ Σ_moon (1/π) ∫_0^π N(x; c(t), s² I) dt, midpoint rule on 4000 nodes per moon
    # (node spacing 8e-4 ≪ s, so the quadrature error is negligible)
    m = 4000
    tq = (np.arange(m) + 0.5) * np.pi / m
    nodes = np.concatenate([np.stack([np.cos(tq), np.sin(tq)], 1),
                            np.stack([1 - np.cos(tq), 0.5 - np.sin(tq)], 1)])

    def logp(x):
        out = np.empty(len(x))
        for i in range(0, len(x), 500):
            d2 = ((x[i:i + 500, None, :] - nodes[None]) ** 2).sum(-1)
            out[i:i + 500] = _logsumexp(-0.5 * d2 / s**2, 1) - math.log(2 * m) - math.log(2 * np.pi * s**2)
        return out

    return x, logp


def tanh16(rng, n):
    """x = f(z) + N(0, 0.1² I), z ~ N(0, I_3), f = tanh(z W1 + b1) W2 + b2 (a fixed map)."""
    frng = np.random.default_rng(7)  # the map f is fixed, whatever the data seed
    W1 = frng.standard_normal((3, 32)) * 1.5 / math.sqrt(3)
    b1 = 0.5 * frng.standard_normal(32)
    W2 = frng.standard_normal((32, 16)) / math.sqrt(32) * 2.0
    b2 = frng.standard_normal(16)
    z = rng.standard_normal((n, 3))
    x = np.tanh(z @ W1 + b1) @ W2 + b2 + 0.1 * rng.standard_normal((n, 16))
    return x, None


def gauss10(rng, n):
    grng = np.random.default_rng(11)
    A = grng.standard_normal((10, 10)) / math.sqrt(10)
    cov = A @ A.T + 0.05 * np.eye(10)
    mean = 3 * grng.standard_normal(10)
    L = np.linalg.cholesky(cov)
    x = mean + rng.standard_normal((n, 10)) @ L.T
    icov = np.linalg.inv(cov)
    _, logdet = np.linalg.slogdet(cov)

    def logp(x):
        d = x - mean
        return -0.5 * np.einsum("ij,jk,ik->i", d, icov, d) - 0.5 * logdet - 5 * math.log(2 * np.pi)

    return x, logp


def tanh16_int(rng, n):
    """A stress test, not one of the four: tanh16 with its first 6 features rounded to
    integers after scaling by 2 (like counts or ratings), so that a decoder can place its
    mean on a value that occurs many times and shrink σ there; ln p is then unbounded."""
    x, _ = tanh16(rng, n)
    x[:, :6] = np.round(2 * x[:, :6])
    return x, None


DATASETS = {"ring": ring, "moons": moons, "tanh16": tanh16, "gauss10": gauss10,
            "tanh16_int": tanh16_int}
MAIN = ("ring", "moons", "tanh16", "gauss10")


def gaussian_baseline(x_train, x_test):
    """Test ln p under one full-covariance Gaussian fitted (max. likelihood) to x_train."""
    mu = x_train.mean(0)
    cov = np.cov(x_train, rowvar=False, bias=True)
    icov = np.linalg.inv(cov)
    _, logdet = np.linalg.slogdet(cov)
    d = x_test - mu
    D = x_train.shape[1]
    return -0.5 * np.einsum("ij,jk,ik->i", d, icov, d) - 0.5 * logdet - 0.5 * D * math.log(2 * np.pi)


def make_dataset(name):
    rng = np.random.default_rng([DATA_SEED, list(DATASETS).index(name)])
    x, logp = DATASETS[name](rng, N_TRAIN + N_VAL + N_TEST)
    xtr, xva, xte = x[:N_TRAIN], x[N_TRAIN:N_TRAIN + N_VAL], x[N_TRAIN + N_VAL:]
    st = npvae.data.Standardizer().fit(xtr)
    out = {"name": name, "D": x.shape[1],
           "train": st.transform(xtr).astype(np.float32), "val": st.transform(xva).astype(np.float32),
           "test": st.transform(xte).astype(np.float32)}
    out["ll_gaussian"] = float(gaussian_baseline(st.transform(xtr), st.transform(xte)).mean())
    out["ll_true"] = None if logp is None else float((logp(xte) + np.log(st.std).sum()).mean())
    return out


# ----------------------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------------------
OLD = dict(latent=2, hidden="256", activation="relu", sigma=1.0, epochs=30, batch=64, lr=1e-3,
           warmup=5, early_stopping=None)
BASE = dict(latent=4, hidden="64,64", activation="tanh", sigma="per_example", epochs=100,
            batch=64, lr=1e-3, warmup=5, early_stopping=None)


def cfg(base, **kw):
    c = dict(base)
    c.update(kw)
    return c


def key(c):
    es = "" if c["early_stopping"] is None else f" es{c['early_stopping']}"
    return (f"J{c['latent']} h{c['hidden']} {c['activation']} s={c['sigma']} "
            f"E{c['epochs']}{es} B{c['batch']} lr{c['lr']:g} w{c['warmup']:g}")


def sweep_configs():
    """The old defaults (and the old with each σ), the base, and one-factor variations."""
    cs = [("old", OLD), ("old+learned", cfg(OLD, sigma="learned")),
          ("old+per_example", cfg(OLD, sigma="per_example")),
          ("old+per_example+E100", cfg(OLD, sigma="per_example", epochs=100)),
          ("base", BASE)]
    for k, vals in [("sigma", [1.0, "learned"]), ("latent", [2, 8]), ("hidden", ["256", "128,128"]),
                    ("activation", ["relu", "elu"]), ("epochs", [30]), ("batch", [128]),
                    ("lr", [3e-3]), ("warmup", [0, 10])]:
        for v in vals:
            cs.append((f"base {k}={v}", cfg(BASE, **{k: v})))
    cs.append(("base early-stop", cfg(BASE, epochs=300, early_stopping=20)))
    return cs


# Second stage: two-factor variations and the finalists (filled in after the sweep; see the
# report benchmarks/tabular_defaults.md for how they were picked).
J8 = cfg(BASE, latent=8)
STAGE2 = [
    ("J8 E200", cfg(J8, epochs=200)),
    ("J8 early-stop", cfg(J8, epochs=300, early_stopping=20)),
    ("J8 w10", cfg(J8, warmup=10)),
    ("J8 lr3e-3", cfg(J8, lr=3e-3)),
    ("J8 h128,128", cfg(J8, hidden="128,128")),
    ("J8 h128,128 early-stop", cfg(J8, hidden="128,128", epochs=300, early_stopping=20)),
    ("J4 h128,128 early-stop", cfg(BASE, hidden="128,128", epochs=300, early_stopping=20)),
    ("J16 (beyond the grid)", cfg(BASE, latent=16)),
    ("J8 E200 learned", cfg(J8, epochs=200, sigma="learned")),
]
FINALISTS = [
    ("old", OLD),
    ("base (J4 E100)", BASE),
    ("J8 E100", J8),
    ("J8 E200", cfg(J8, epochs=200)),
    ("J8 early-stop", cfg(J8, epochs=300, early_stopping=20)),
    ("J8 E200 learned", cfg(J8, epochs=200, sigma="learned")),
]
SEEDS_FINAL = (0, 1, 2)


# ----------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------
def run_one(ds, c, seed, k_eval):
    hidden = tuple(int(h) for h in c["hidden"].split(","))
    model = npvae.VAE(ds["D"], c["latent"], hidden=hidden, activation=c["activation"],
                      likelihood="gaussian", sigma=c["sigma"], seed=seed)
    beta = npvae.LinearBeta(c["warmup"]) if c["warmup"] > 0 else 1.0
    rec = {"dataset": ds["name"], "config": key(c), "cfg": c, "seed": seed}
    t0 = time.perf_counter()
    try:
        hist = npvae.fit(model, ds["train"], x_val=ds["val"], optimizer=npvae.Adam(lr=c["lr"]),
                         epochs=c["epochs"], batch_size=c["batch"], beta=beta, seed=seed,
                         progress=False, early_stopping=c["early_stopping"], restore_best=True)
    except npvae.DivergenceError as exc:
        rec.update(status="diverged", error=str(exc), train_s=time.perf_counter() - t0)
        return rec
    rec["train_s"] = time.perf_counter() - t0
    rec["epochs_run"] = len(hist)
    rec["best_epoch"] = hist.best_epoch
    t1 = time.perf_counter()
    ll, ess = model.log_likelihood(ds["test"], n_samples=k_eval, rng=np.random.default_rng(1),
                                   return_ess=True)
    elbo = model.elbo(ds["test"], rng=np.random.default_rng(2))
    rec["eval_s"] = time.perf_counter() - t1
    if not np.all(np.isfinite(ll)):
        rec.update(status="nonfinite", test_ll=float("nan"))
        return rec
    rec.update(status="ok", test_ll=float(ll.mean()), test_elbo=float(elbo.mean()),
               ess_median=float(np.median(ess)), val_elbo=float(hist[-1]["val_elbo"]),
               best_val_elbo=max(r["val_elbo"] for r in hist))
    return rec


# ----------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------
def summarise(results, datasets):
    """{(dataset, config): {mean, spread, n, failures, names, train_s}} over seeds."""
    groups = {}
    for r in results:
        groups.setdefault((r["dataset"], r["config"]), []).append(r)
    out = {}
    for (d, k), rs in groups.items():
        ok = [r["test_ll"] for r in rs if r["status"] == "ok"]
        out[(d, k)] = {"mean": float(np.mean(ok)) if ok else float("nan"),
                       "spread": float(np.max(ok) - np.min(ok)) if len(ok) > 1 else 0.0,
                       "n": len(rs), "fail": len(rs) - len(ok),
                       "train_s": float(np.mean([r["train_s"] for r in rs])),
                       "epochs_run": [r.get("epochs_run") for r in rs]}
    return out


def print_table(results, datasets, names, file=sys.stdout):
    summ = summarise(results, datasets)
    dnames = [d for d in DATASETS if d in datasets]
    configs = []
    for r in results:
        if r["config"] not in configs:
            configs.append(r["config"])
    w = max(len(c) for c in configs) + 2
    nw = max([len(n) for n in names.values()] + [16]) + 2
    head = f"{'name':<{nw}}{'configuration':<{w}}" + "".join(f"{d:>22}" for d in dnames) + f"{'train s':>9}"
    print(head, file=file)
    print(f"{'single Gaussian':<{nw}}{'':<{w}}" + "".join(f"{datasets[d]['ll_gaussian']:>22.3f}" for d in dnames), file=file)
    print(f"{'true density':<{nw}}{'':<{w}}" + "".join(
        f"{'—' if datasets[d]['ll_true'] is None else format(datasets[d]['ll_true'], '.3f'):>22}" for d in dnames), file=file)
    for c in configs:
        cells, ts = [], []
        for d in dnames:
            s = summ.get((d, c))
            if s is None:
                cells.append(f"{'':>22}")
                continue
            ts.append(s["train_s"])
            txt = f"{s['mean']:.3f}" if s["n"] > s["fail"] else "DIVERGED"
            if s["n"] > 1:
                txt += f" ±{s['spread'] / 2:.3f} n{s['n']}"
            if s["fail"]:
                txt += f" ({s['fail']} div)"
            cells.append(f"{txt:>22}")
        print(f"{names.get(c, ''):<{nw}}{c:<{w}}" + "".join(cells) + f"{np.mean(ts):>9.1f}", file=file)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="old defaults vs the chosen defaults only, 1 seed, K = 200")
    ap.add_argument("--json", help="write every run (and the baselines) to this JSON file")
    ap.add_argument("--resume", action="store_true", help="reuse finished runs from --json")
    ap.add_argument("--stage", default="all", choices=["sweep", "stage2", "finalists", "all"])
    ap.add_argument("--datasets", default=",".join(MAIN),
                    help=f"comma-separated, from {', '.join(DATASETS)} (default: the first four)")
    args = ap.parse_args(argv)

    npvae.set_threads(blas=1, numba=1)
    datasets = {d: make_dataset(d) for d in args.datasets.split(",")}
    for d, ds in datasets.items():
        true = "unknown" if ds["ll_true"] is None else f"{ds['ll_true']:.3f}"
        print(f"{d}: D={ds['D']}  single Gaussian {ds['ll_gaussian']:.3f}  true {true} nats/row "
              f"(test, standardised units)", flush=True)

    k_eval = 200 if args.quick else K_EVAL
    plan = []  # (name, cfg, seeds)
    if args.quick:
        plan = [("old", OLD, (0,)), ("chosen", CHOSEN, (0,))]
    else:
        if args.stage in ("sweep", "all"):
            plan += [(n, c, (0,)) for n, c in sweep_configs()]
        if args.stage in ("stage2", "all"):
            plan += [(n, c, (0,)) for n, c in STAGE2]
        if args.stage in ("finalists", "all"):
            plan += [(n, c, SEEDS_FINAL) for n, c in FINALISTS]

    done = {}
    if args.resume and args.json and Path(args.json).exists():
        for r in json.loads(Path(args.json).read_text())["runs"]:
            done[(r["dataset"], r["config"], r["seed"], r.get("k_eval", K_EVAL))] = r
    results, names = [], {}
    seen = set()
    for name, c, seeds in plan:
        names.setdefault(key(c), name)
        for d, ds in datasets.items():
            for s in seeds:
                k = (d, key(c), s, k_eval)
                if k in seen:
                    continue
                seen.add(k)
                if k in done:
                    results.append(done[k])
                    continue
                with threadpool_limits(1):
                    r = run_one(ds, c, s, k_eval)
                r["k_eval"] = k_eval
                r["name"] = name
                results.append(r)
                done[k] = r
                msg = (f"{r['test_ll']:.3f}" if r["status"] == "ok" else r["status"])
                print(f"  {d:8s} {name:28s} seed {s}  ln p {msg:>9}  "
                      f"train {r['train_s']:.1f}s eval {r.get('eval_s', 0):.1f}s "
                      f"epochs {r.get('epochs_run')}", flush=True)
                if args.json:
                    _write_json(args.json, datasets, list(done.values()))
    print()
    print_table(results, datasets, {key(c): n for n, c, _ in plan})
    if args.json:
        _write_json(args.json, datasets, list(done.values()))


def _write_json(path, datasets, runs):
    meta = {}
    if Path(path).exists():  # keep the entries of data sets not loaded in this invocation
        try:
            meta = json.loads(Path(path).read_text()).get("datasets", {})
        except (OSError, ValueError):
            meta = {}
    meta.update({d: {k: v for k, v in ds.items() if k not in ("train", "val", "test")}
                 for d, ds in datasets.items()})
    payload = {"datasets": meta,
               "n_train": N_TRAIN, "n_val": N_VAL, "n_test": N_TEST, "k_eval": K_EVAL,
               "runs": runs}
    Path(path).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


# The chosen defaults for tabular data (see benchmarks/tabular_defaults.md): "J8 E200".
CHOSEN = cfg(J8, epochs=200)

if __name__ == "__main__":
    main()
