"""Model quality on Fashion-MNIST: train within a time budget, then estimate the test
ln p(x) once, with K = 5000 importance samples on all 10,000 test images.

Protocol (the published table's: Fashion-MNIST dynamically binarised, test ln p(x) with
K = 5000): the 60,000 training images are split once into 50,000 for training and 10,000
for validation (seeded, the same for every run); the model is trained on the first with a
fresh binarisation of every minibatch; every choice (early stopping, the best epoch) uses the
validation images, binarised once (``--select-by``: their ELBO, or their bound L_K of the
training objective); the 10,000 test images, binarised once with a fixed seed,
are touched once, at the end. Training stops at ``--epochs`` or at ``--minutes`` of wall time,
whichever comes first; the learning rate warms up over 1000 steps and then follows a cosine
down to lr/10 over the planned epochs.

Reported (JSON and one line): the wall time of training, the epochs, test ln p(x) (K = 5000),
the test ELBO and the K = 5 importance-weighted bound (the gap between bound and likelihood),
the active units (Var_x E_q[z_j] > 0.01), and float32 against float64 ln p(x) on 100 images.

Run:  python benchmarks/fashion_mnist_quality.py --seed 0 --minutes 30 --json q0.json
"""
import argparse
import json
import time

import numpy as np

import npvae
from npvae.diagnostics import active_units


def train(model, x_train, x_val, args):
    """Train within the budget; returns (history, the best validation epoch, seconds), the
    model holding the best epoch's parameters."""
    steps = args.epochs * -(-len(x_train) // args.batch)
    lr = npvae.schedules.Warmup(npvae.schedules.Cosine(args.lr, steps, args.lr / 10), 1000)
    kw = dict(objective=args.objective, n_samples=args.k) if args.objective != "elbo" else \
        dict(beta=npvae.LinearBeta(10))
    budget = args.minutes * 60
    t0 = time.perf_counter()

    best = {"val": -np.inf, "params": None, "epoch": None, "curve": []}
    by_bound = args.select_by == "bound"

    def keep_best_and_watch_the_clock(record, m):
        # the best validation epoch's parameters, whatever ends the training: by the
        # validation ELBO, or by the validation bound L_K (K = --k; the same ε every epoch)
        bound = float(m.log_likelihood(x_val, n_samples=args.k, rng=np.random.default_rng(7)).mean()) \
            if by_bound else None
        best["curve"].append((record["epoch"], record["val_elbo"], bound))
        score = bound if by_bound else record["val_elbo"]
        if score > best["val"]:
            best.update(val=score, epoch=record["epoch"], params={k: v.copy() for k, v in m.params.items()})
        stale = by_bound and record["epoch"] - best["epoch"] >= args.patience  # (fit stops on the ELBO)
        best["stale"] = stale
        return stale or time.perf_counter() - t0 > budget

    history = npvae.fit(model, x_train, x_val=x_val, optimizer=npvae.Adam(lr=lr), epochs=args.epochs,
                        batch_size=args.batch, seed=args.seed, binarize="dynamic", progress=not args.quiet,
                        early_stopping=None if by_bound else args.patience,
                        callbacks=[keep_best_and_watch_the_clock], **kw)
    train_seconds = time.perf_counter() - t0
    for k, v in best["params"].items():
        model.params[k][...] = v
    return history, best, train_seconds


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=30.0, help="training wall-time budget")
    ap.add_argument("--epochs", type=int, default=1000, help="at most (the cosine's length)")
    ap.add_argument("--objective", default="iwae-dreg", choices=["elbo", "iwae", "iwae-dreg", "iwae-stl"])
    ap.add_argument("--k", type=int, default=5, help="importance samples of the training objective")
    ap.add_argument("--hidden", default="300,300")
    ap.add_argument("--latent", type=int, default=40)
    ap.add_argument("--activation", default="relu", help="of the dense hidden layers")
    ap.add_argument("--layer", choices=["dense", "gated"], default="dense",
                    help="gated: every hidden layer a GatedDense (the published tables' gated MLP)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--patience", type=int, default=50, help="early stopping: epochs without a better "
                                                              "validation score (see --select-by)")
    ap.add_argument("--select-by", choices=["elbo", "bound"], default="elbo",
                    help="the validation score of early stopping and the best epoch: the ELBO, or the "
                         "bound L_K of the training objective (K = --k)")
    ap.add_argument("--eval-k", type=int, default=5000)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--val-images", type=int, default=2000, help="validation images scored every epoch")
    ap.add_argument("--score-on", choices=["test", "validation"], default="test",
                    help="validation: score held-out validation images (not those of early stopping) "
                         "instead of the test set, for choosing a recipe without touching the test set")
    ap.add_argument("--save", help="save the trained model (the best validation epoch's) here, .npz")
    ap.add_argument("--load", help="skip training: score this saved model (say --score-on test only once "
                                   "the recipe is chosen on validation)")
    ap.add_argument("--json")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    x_all = npvae.data.load_fashion_mnist("train")
    x_train, x_val_all = npvae.data.train_val_split(x_all, 1 / 6, 2026)  # 50,000 / 10,000, every run alike
    x_val_all = npvae.data.binarize(x_val_all, np.random.default_rng(1))
    x_val = x_val_all[:args.val_images]
    hidden = tuple(int(h) for h in args.hidden.split(","))

    def build(dtype):
        if args.layer == "gated":
            return npvae.VAE(784, args.latent, encoder=[npvae.layers.GatedDense(h) for h in hidden],
                             decoder=[npvae.layers.GatedDense(h) for h in hidden[::-1]], seed=args.seed,
                             dtype=dtype)
        return npvae.VAE(784, args.latent, hidden=hidden, activation=args.activation, seed=args.seed, dtype=dtype)
    model = build(np.float32)
    if args.load:
        trained = npvae.load(args.load)
        for k in model.params:
            model.params[k][...] = trained.params[k]
        history, best, train_seconds = [], {"val": float("nan"), "epoch": None}, float("nan")
    else:
        history, best, train_seconds = train(model, x_train, x_val, args)
        if args.save:
            model.save(args.save)

    # the test set, once (or, for choosing a recipe, validation images early stopping did not see)
    if args.score_on == "test":
        x_test = npvae.data.binarize(npvae.data.load_fashion_mnist("test"), np.random.default_rng(2))
    else:
        x_test = x_val_all[args.val_images:]
    x_test = x_test[:args.test_images]
    t1 = time.perf_counter()
    ll = model.log_likelihood(x_test, n_samples=args.eval_k, rng=np.random.default_rng(3), progress=not args.quiet)
    eval_seconds = time.perf_counter() - t1
    elbo = model.elbo(x_test, rng=np.random.default_rng(4))
    iw5 = model.log_likelihood(x_test, n_samples=5, rng=np.random.default_rng(5))
    n_active, _ = active_units(model, x_test[:2000])
    # float32 (the model's dtype, the compiled log-weights) against float64 (the engine's),
    # on the same ε, for 100 images
    m64 = build(np.float64)
    for k in m64.params:
        m64.params[k][...] = model.params[k]
    r = np.random.default_rng(6)
    ll32, ll64 = [], []
    for i in range(0, min(100, len(x_test)), 10):
        xb = x_test[i:i + 10]
        eps = r.standard_normal((args.eval_k, len(xb), args.latent))
        for m, out, e, xx in ((model, ll32, eps.astype(np.float32), xb),
                              (m64, ll64, eps, xb.astype(np.float64))):
            lw = (npvae.compiled.log_weights(m, xx, e) if m is model else
                  npvae.estimators.log_weights(m, xx, e))
            top = lw.max(axis=0)
            out.append(top + np.log(np.exp(lw - top).sum(axis=0)) - np.log(args.eval_k))
    ll32, ll64 = np.concatenate(ll32), np.concatenate(ll64)

    res = {"seed": args.seed, "objective": args.objective, "k": args.k, "hidden": list(hidden),
           "latent": args.latent, "layer": args.layer, "activation": args.activation, "batch": args.batch, "lr": args.lr,
           "epochs_run": len(history), "best_epoch": best["epoch"],
           "stopped_early": bool(getattr(history, "stopped_early", False) or best.get("stale")),
           "loaded": args.load,
           "train_minutes": train_seconds / 60, "eval_minutes": eval_seconds / 60,
           "test_log_px": float(ll.mean()), "test_log_px_se": float(ll.std(ddof=1) / np.sqrt(len(ll))),
           "test_elbo": float(elbo.mean()), "test_iwae5": float(iw5.mean()), "active_units": n_active,
           "select_by": args.select_by, "val_best": best["val"],
           "val_curve": best.get("curve", []),
           "float32_vs_float64_max_abs": float(np.abs(ll32 - ll64).max()),
           "float32_vs_float64_mean": float(ll32.mean() - ll64.mean()),
           "scored_on": args.score_on, "test_images": len(x_test), "eval_k": args.eval_k}
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
