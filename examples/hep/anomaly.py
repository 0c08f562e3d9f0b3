"""Unsupervised anomaly detection on simulated LHC jets with a VAE (the signature VAE use
in HEP: Farina, Nakai & Shih 2018; Heimel et al. 2018; Cerri et al. 2019).

Train on QCD only; score held-out QCD and two signals (W′ → WZ → 4q, boosted tt̄) by
−ELBO, by reconstruction error, by KL and by −ln p(x) (importance sampled, K = 100); report
ROC AUC and the background rejection 1/ε_B at 30 % signal efficiency, against two baselines
computed in the same run: the reconstruction error of a 3-component PCA, and the best single
feature.

The protocol uses QCD alone to make every choice: the QCD sample is split into fit (56 %),
validation (14 %) and test (30 %) parts; six VAEs (hidden 64-32 or 128-64, latent 2, 4 or 8)
are trained on the fit part with early stopping on the validation ELBO, and the one with the
highest validation ln p(x) is the one scored.  The −ELBO AUCs of the others are reported
afterwards, for the record.  The VAE sees the 15 features that are not ratios of others
(``--vae-inputs all`` gives it all 19); the baselines always see all 19.

Run:  pip install --only-binary=:all: ".[hep]"
      python examples/hep/anomaly.py [--qcd 20000] [--signal 5000] [--threads 2] [--out runs/hep]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate  # noqa: E402

import npvae  # noqa: E402
from npvae import metrics  # noqa: E402

LOG_FEATURES = [i for i, f in enumerate(generate.FEATURES)
                if f.endswith(("_pt", "_mass", "_trimmed_mass", "_n_constituents")) or f == "mjj"]


def preprocess(x):
    """log(1 + ·) of the momenta, masses and counts; the τ ratios as they are."""
    x = np.array(x, dtype=np.float64)
    x[:, LOG_FEATURES] = np.log1p(np.clip(x[:, LOG_FEATURES], 0, None))
    return x


roc_auc = metrics.roc_auc
rejection_at = metrics.rejection_at


def roc_curve(bkg, sig, n=200):
    cuts = np.quantile(np.concatenate([bkg, sig]), np.linspace(0, 1, n))
    return np.array([np.mean(sig >= c) for c in cuts]), np.array([np.mean(bkg >= c) for c in cuts])


def pca_scores(x_train, *xs, k=3):
    mean = x_train.mean(axis=0)
    _, _, vt = np.linalg.svd(x_train - mean, full_matrices=False)
    basis = vt[:k]
    return [np.sum(((x - mean) - (x - mean) @ basis.T @ basis) ** 2, axis=1) for x in xs]


def vae_scores(model, x, n_samples=16):
    elbo = model.elbo(x, n_samples=n_samples, rng=np.random.default_rng(0)).astype(np.float64)
    mu, lv = model.encode(x)
    kl = npvae.ops.kl_normal(mu.astype(np.float64), lv.astype(np.float64))
    rec = np.sum((model.reconstruct(x).astype(np.float64) - x) ** 2, axis=1)
    log_px = model.log_likelihood(x, n_samples=100, rng=np.random.default_rng(1))
    return {"-ELBO": -elbo, "reconstruction error": rec, "KL": kl, "-ln p(x) (K=100)": -log_px}


# The models tried, (hidden layers, latent size): fixed before any signal was scored.
GRID = [(hidden, latent) for hidden in ((64, 32), (128, 64)) for latent in (2, 4, 8)]


def train_vae(x_fit, x_val, hidden, latent, args):
    """A Gaussian (learned σ) ELU VAE on QCD, β warmed up over 10 epochs, early stopping on the
    validation ELBO (best parameters restored)."""
    model = npvae.VAE(x_fit.shape[1], latent, hidden=hidden, activation="elu",
                      likelihood="gaussian", sigma="learned", seed=args.seed)
    npvae.fit(model, x_fit, x_val=x_val, epochs=args.epochs, batch_size=128, beta=npvae.LinearBeta(10),
              seed=args.seed, progress=False, early_stopping=20)
    return model


# τ21 = τ2/τ1 and τ32 = τ3/τ2 are functions of other features: with them the features lie on
# a 15-dimensional surface in 19 dimensions, where a density (and so ln p(x) and the ELBO)
# is degenerate (a learned variance can shrink towards zero along it without bound).  The
# VAE gets the 15 other features; the baselines keep all 19.
RATIOS = ("j1_tau21", "j1_tau32", "j2_tau21", "j2_tau32")


def vae_columns(inputs):
    if inputs == "all":
        return list(range(len(generate.FEATURES)))
    return [i for i, f in enumerate(generate.FEATURES) if f not in RATIOS]


def score_all(model, xs, cols):
    scores = {s: vae_scores(model, xs[s][:, cols]) for s in ("qcd", "wprime", "ttbar")}
    pca = pca_scores(xs["qcd_train"], xs["qcd"], xs["wprime"], xs["ttbar"])
    for s, p in zip(scores, pca):
        scores[s]["PCA (3) reconstruction error"] = p
    return scores


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qcd", type=int, default=20000)
    ap.add_argument("--signal", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=200, help="at most (early stopping after 20 flat epochs)")
    ap.add_argument("--latent", type=int, default=None,
                    help="only this latent size (default: choose from 2, 4, 8 on QCD validation data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--realistic", action="store_true", help="multi-parton interactions on")
    ap.add_argument("--vae-inputs", choices=("independent", "all"), default="independent",
                    help="the VAE's inputs: the 15 features that are not ratios of others (default), or all 19")
    ap.add_argument("--threads", type=int, default=2,
                    help="Pythia threads (PythiaParallel when > 1, fast; 1 is exactly reproducible)")
    ap.add_argument("--out", default="runs/hep")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    raw = {s: generate.load(s, n, seed=args.seed, realistic=args.realistic,
                                threads=args.threads, verbose=not args.quiet)
           for s, n in (("qcd", args.qcd), ("wprime", args.signal), ("ttbar", args.signal))}
    gen_seconds = time.perf_counter() - t
    feats = {s: preprocess(v) for s, v in raw.items()}
    # QCD: test (scored against the signals), and a training part split again into fit and
    # validation; the validation part alone chooses the model
    qcd_rest, qcd_test = npvae.data.train_val_split(feats["qcd"], 0.3, args.seed)
    qcd_fit, qcd_val = npvae.data.train_val_split(qcd_rest, 0.2, args.seed + 1)
    std = npvae.data.Standardizer().fit(qcd_fit)
    xs = {"qcd_train": std.transform(qcd_fit), "qcd_val": std.transform(qcd_val),
          "qcd": std.transform(qcd_test), "wprime": std.transform(feats["wprime"]),
          "ttbar": std.transform(feats["ttbar"])}
    xs = {k: v.astype(np.float32) for k, v in xs.items()}

    cols = vae_columns(args.vae_inputs)
    grid = GRID if args.latent is None else [(h, args.latent) for h in sorted({h for h, _ in GRID})]
    models = []
    for hidden, latent in grid:
        model = train_vae(xs["qcd_train"][:, cols], xs["qcd_val"][:, cols], hidden, latent, args)
        val = float(np.mean(model.log_likelihood(xs["qcd_val"][:, cols], n_samples=100, rng=np.random.default_rng(2))))
        models.append({"hidden": list(hidden), "latent": latent, "qcd_val_log_px": val, "model": model})
        if not args.quiet:
            print(f"  VAE {len(cols)}-{'-'.join(map(str, hidden))}-{latent}: QCD validation ln p(x) {val:.4f}")
    chosen = max(models, key=lambda m: m["qcd_val_log_px"])  # QCD only: no signal seen yet

    results = {"events": {s: len(v) for s, v in raw.items()}, "generation_seconds": gen_seconds,
               "threads": args.threads, "vae_inputs": [generate.FEATURES[i] for i in cols],
               "selection": "highest QCD validation ln p(x) (K = 100)",
               "chosen": {k: chosen[k] for k in ("hidden", "latent", "qcd_val_log_px")}, "signals": {}, "grid": []}
    scores = score_all(chosen["model"], xs, cols)
    for sig in ("wprime", "ttbar"):
        res = {}
        for name in scores["qcd"]:
            res[name] = {"auc": roc_auc(scores["qcd"][name], scores[sig][name]),
                         "rejection_at_30pct": rejection_at(scores["qcd"][name], scores[sig][name])}
        best = max(((i, sgn * roc_auc(sgn * xs["qcd"][:, i], sgn * xs[sig][:, i]))
                    for i in range(xs["qcd"].shape[1]) for sgn in (1, -1)), key=lambda t: t[1])
        i, auc = best
        sgn = 1 if roc_auc(xs["qcd"][:, i], xs[sig][:, i]) == auc else -1
        res[f"best single feature ({generate.FEATURES[i]})"] = {
            "auc": auc, "rejection_at_30pct": rejection_at(sgn * xs["qcd"][:, i], sgn * xs[sig][:, i])}
        results["signals"][sig] = res
    # every grid point's −ELBO AUC, for the record (the choice above was made before these)
    for m in models:
        sc = {s: -m["model"].elbo(xs[s][:, cols], n_samples=16, rng=np.random.default_rng(0)).astype(np.float64)
              for s in ("qcd", "wprime", "ttbar")}
        results["grid"].append({"hidden": m["hidden"], "latent": m["latent"], "qcd_val_log_px": m["qcd_val_log_px"],
                                "auc_-ELBO": {sig: roc_auc(sc["qcd"], sc[sig]) for sig in ("wprime", "ttbar")},
                                "chosen": m is chosen})
    (out / "result.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nchosen on QCD validation ln p(x): {len(cols)}-{'-'.join(map(str, chosen['hidden']))}-{chosen['latent']}")
    for sig, res in results["signals"].items():
        print(f"\n{sig}: {'score':42s} {'ROC AUC':>8s} {'1/eps_B @ 30%':>14s}")
        for name, r in res.items():
            print(f"  {name:48s} {r['auc']:8.3f} {r['rejection_at_30pct']:14.1f}")
    write_plots(scores, raw, qcd_test, out)
    return results


def write_plots(scores, raw, qcd_test_pre, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install 'npvae[plot]'): no plots")
        return
    colors = {"qcd": "tab:gray", "wprime": "tab:blue", "ttbar": "tab:red"}
    labels = {"qcd": "QCD (held out)", "wprime": "W′ → WZ", "ttbar": "tt̄"}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, name in zip(axes, ("-ELBO", "reconstruction error", "KL")):
        hi = np.quantile(np.concatenate([scores[s][name] for s in scores]), 0.99)
        lo = np.quantile(np.concatenate([scores[s][name] for s in scores]), 0.001)
        for s in scores:
            ax.hist(scores[s][name], bins=60, range=(lo, hi), histtype="step", density=True,
                    color=colors[s], label=labels[s])
        ax.set(xlabel=name, ylabel="density", title=f"VAE score: {name}", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "score_distributions.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, sig in zip(axes, ("wprime", "ttbar")):
        for name in ("-ELBO", "-ln p(x) (K=100)", "reconstruction error", "KL", "PCA (3) reconstruction error"):
            eff_s, eff_b = roc_curve(scores["qcd"][name], scores[sig][name])
            ax.plot(eff_s, 1 / np.clip(eff_b, 1e-4, None), label=name)
        ax.set(xlabel="signal efficiency ε_S", ylabel="background rejection 1/ε_B", yscale="log",
               title=f"ROC: {labels[sig]} vs QCD", xlim=(0, 1))
        ax.axvline(0.3, color="k", lw=0.7, ls=":")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "roc_curves.png", dpi=100)
    plt.close(fig)

    # does a cut on the score sculpt the QCD jet mass?
    mass = np.asarray(qcd_test_pre)[:, generate.FEATURES.index("j1_mass")]
    mass = np.expm1(mass)
    score = scores["qcd"]["-ELBO"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for q, style in ((0.0, "-"), (0.9, "--"), (0.99, ":")):
        sel = score >= np.quantile(score, q)
        ax.hist(mass[sel], bins=40, range=(0, 400), histtype="step", density=True, ls=style,
                label=f"QCD, −ELBO above its {int(q * 100)}% quantile" if q else "QCD, all")
    ax.set(xlabel="leading-jet mass (GeV)", ylabel="density", title="QCD jet mass before and after a score cut")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "qcd_mass_sculpting.png", dpi=100)
    plt.close(fig)
    print(f"plots written to {out}")


if __name__ == "__main__":
    main()
