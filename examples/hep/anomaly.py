"""Unsupervised anomaly detection on simulated LHC jets with a VAE (the signature VAE use
in HEP: Farina, Nakai & Shih 2018; Heimel et al. 2018; Cerri et al. 2019).

Train on QCD only; score held-out QCD and two signals (W′ → WZ → 4q, boosted tt̄) by
−ELBO, by reconstruction error, by KL, by −ln p(x) (importance sampled, K = 100) in two
reference measures, and by the combination of the two; report ROC AUC and the background
rejection 1/ε_B at 30 % signal efficiency, against two baselines computed in the same run:
the reconstruction error of a 3-component PCA, and the best single feature.

The protocol uses QCD alone to make every choice: the QCD sample is split into fit (56 %),
validation (14 %) and test (30 %) parts; six VAEs (hidden 64-32 or 128-64, latent 2, 4 or 8)
are trained on the fit part with early stopping on the validation ELBO, and the one with the
highest validation ln p(x) is chosen.  Four more VAEs of that size are trained with other
seeds, and the equal-weight mixture of the five is scored (``--ensemble``, default 5; the
mixture is itself a density, with a higher validation ln p(x) than its members).  The
single models' AUCs are reported afterwards, for the record.  The VAE sees the 15 features
that are not ratios of others (``--vae-inputs all`` gives it all 19); the baselines always
see all 19.

Coordinates and scores.  Momenta, masses and counts enter as log(1 + ·), the τ_N as ln τ_N
(``--tau-coords linear`` keeps them as they are), then everything is standardised.  A
density depends on the coordinates it is written in, and so does "improbable": −ln p(z) in
these log coordinates, and −ln p(x) = −ln p(z) − ln |det ∂z/∂x| in the features' own units
(GeV, counts, τ) are the same model under two reference measures.  The headline score,
"combined", is Fisher's method on the two QCD tail probabilities P_QCD(S ≥ s), calibrated on
the QCD validation events: −ln p_log − ln p_units.

Run:  pip install --only-binary=:all: ".[hep]"
      python examples/hep/anomaly.py [--qcd 20000] [--signal 5000] [--threads 2] [--out runs/examples/hep]
      (not run in tests: about 5 minutes on 2 cores, 30,000 Pythia events and ten VAEs; the
      tests check its pieces, tests/test_hep.py)

On several processes (the Message Passing Interface, not the multi-parton interactions of
``--realistic``):

      pip install ".[mpi]"
      mpiexec -n 3 python examples/hep/anomaly.py
      (not run in tests: the same run on three processes)

trains the six grid models two per rank, and the ensemble's extra members one per rank
(``npvae.parallel.train_many``), splits every ln p(x) evaluation across the ranks, and gives
one process's result.json to rounding (a model trained by a group of two ranks takes the
engine step: 1e-9 relative after a short run).
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
TAU_FEATURES = [i for i, f in enumerate(generate.FEATURES) if "_tau" in f]
TAU_FLOOR = 1e-4  # τ_N = 0 (a jet of at most N constituents, 1 event in 10⁴) is taken as 10⁻⁴


def preprocess(x, tau_coords="log"):
    """Log coordinates: log(1 + ·) of the momenta, masses and counts, and (``tau_coords="log"``,
    the default) ln τ of the N-subjettiness values and their ratios (floored at TAU_FLOOR);
    ``tau_coords="linear"`` keeps the τ as they are."""
    if tau_coords not in ("log", "linear"):
        raise ValueError(f"tau_coords must be 'log' or 'linear', got {tau_coords!r}")
    x = np.array(x, dtype=np.float64)
    x[:, LOG_FEATURES] = np.log1p(np.clip(x[:, LOG_FEATURES], 0, None))
    if tau_coords == "log":
        x[:, TAU_FEATURES] = np.log(np.clip(x[:, TAU_FEATURES], TAU_FLOOR, None))
    return x


def log_jacobian(u, std, logged):
    """ln |det ∂z/∂x| per event for z = (u − mean)/std, u = log(1 + x) or ln x on the
    ``logged`` columns (u = x elsewhere).  Both logs give ∂u/∂x = e^{−u}, so
    ln |det ∂z/∂x| = −Σ_{logged} u_j − Σ_j ln std_j.  u: (n, D) before standardising; std: (D,);
    logged: boolean (D,).  A density in the features' own units is then
    ln p_x(x) = ln p_z(z) + ln |det ∂z/∂x|."""
    return -np.asarray(u, np.float64)[:, logged].sum(axis=1) - np.sum(np.log(std))


def tail_probability(calibration, score):
    """P(S ≥ s) for each s in ``score``, estimated from background ``calibration`` scores with
    one added pseudo-count: (1 + #{c ≥ s}) / (n + 1), so it is never 0 (a p-value)."""
    c = np.sort(np.asarray(calibration, np.float64))
    return (1 + len(c) - np.searchsorted(c, np.asarray(score, np.float64), "left")) / (len(c) + 1)


def fisher_combination(*p_values):
    """Fisher's method: −Σ_k ln p_k (larger = less background-like)."""
    return -np.sum([np.log(p) for p in p_values], axis=0)


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


def best_single_feature(background, signal):
    """(column, direction, AUC) of the best one-feature cut, in either direction: the signal
    may sit above (direction +1) or below (−1) the background, and the AUC of −x is 1 − AUC(x)."""
    return max(((i, sgn, roc_auc(sgn * background[:, i], sgn * signal[:, i]))
                for i in range(background.shape[1]) for sgn in (1, -1)), key=lambda t: t[2])


def bootstrap_aucs(background, signal, n_boot=200, seed=0):
    """AUCs of every score over ``n_boot`` bootstrap resamples of the events, paired: each
    resample draws the same background and signal events for every score, so differences
    between scores keep their correlation.  background, signal: {name: (n_b,) or (n_s,)}.
    Returns {name: (n_boot,)}."""
    rng = np.random.default_rng(seed)
    n_b, n_s = len(next(iter(background.values()))), len(next(iter(signal.values())))
    out = {k: np.empty(n_boot) for k in background}
    for r in range(n_boot):
        ib, is_ = rng.integers(0, n_b, n_b), rng.integers(0, n_s, n_s)
        for k in background:
            out[k][r] = roc_auc(background[k][ib], signal[k][is_])
    return out


def mixture_log_likelihood(models, x, n_samples=100, seed=1):
    """ln p(x) of the equal-weight mixture of ``models``: ln (1/M) Σ_k p_k(x), each p_k
    importance sampled with K = ``n_samples``.  x: (n, D) → (n,)."""
    log_p = [m.log_likelihood(x, n_samples=n_samples, rng=np.random.default_rng(seed)) for m in models]
    return np.logaddexp.reduce(np.stack(log_p), axis=0) - np.log(len(models))


def vae_scores(models, x, log_jac, n_samples=16):
    """The VAE's scores of standardised events x (n, D); ``log_jac`` (n,) is ln |det ∂z/∂x|
    (see log_jacobian), which turns −ln p(z) into −ln p(x) in the features' own units.
    ``models``: one VAE, or a list of them: then ln p is that of their equal-weight mixture
    and −ELBO, KL and reconstruction error are means over the members."""
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    per = []
    for model in models:
        elbo = model.elbo(x, n_samples=n_samples, rng=np.random.default_rng(0)).astype(np.float64)
        mu, lv = model.encode(x)
        kl = npvae.ops.kl_normal(mu.astype(np.float64), lv.astype(np.float64))
        rec = np.sum((model.reconstruct(x).astype(np.float64) - x) ** 2, axis=1)
        per.append({"-ELBO": -elbo, "reconstruction error": rec, "KL": kl})
    out = {k: np.mean([p[k] for p in per], axis=0) for k in per[0]}
    log_pz = mixture_log_likelihood(models, x)
    return {**out, "-ln p(x) (K=100)": -log_pz, "-ln p(x), feature units": -(log_pz + log_jac)}


# The two likelihood scores differ only in the reference measure (log coordinates, or the
# features' own units); neither is canonical, and each flags different events.  The
# combined score asks how improbable an event is for QCD under either: Fisher's method on
# the two QCD tail probabilities, calibrated on the QCD validation events.
LIKELIHOOD_SCORES = ("-ln p(x) (K=100)", "-ln p(x), feature units")
COMBINED = "combined (Fisher, both measures)"


# The models tried, (hidden layers, latent size): fixed before any signal was scored.
GRID = [(hidden, latent) for hidden in ((64, 32), (128, 64)) for latent in (2, 4, 8)]


def train_vae(x_fit, x_val, hidden, latent, args, seed=None, comm=None):
    """A Gaussian (learned σ) ELU VAE on QCD, β warmed up over 10 epochs, early stopping on the
    validation ELBO (best parameters restored); ``seed`` (default ``args.seed``) seeds both the
    initial weights and the minibatch order.  ``comm``: the MPI group that trains this model
    data-parallel (None: this process alone; see npvae.parallel.train_many)."""
    seed = args.seed if seed is None else seed
    model = npvae.VAE(x_fit.shape[1], latent, hidden=hidden, activation="elu",
                      likelihood="gaussian", sigma="learned", seed=seed)
    npvae.fit(model, x_fit, x_val=x_val, epochs=args.epochs, batch_size=128, beta=npvae.LinearBeta(10),
              seed=seed, progress=False, early_stopping=20, comm=comm)
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


def score_all(models, xs, cols, log_jacs):
    """Every VAE score for held-out QCD and both signals; the combined score is calibrated on
    the QCD validation events.  ``models``: one VAE or a list (a mixture)."""
    sets = ("qcd_val", "qcd", "wprime", "ttbar")
    scores = {s: vae_scores(models, xs[s][:, cols], log_jacs[s]) for s in sets}
    for s in sets[1:]:
        scores[s][COMBINED] = fisher_combination(
            *(tail_probability(scores["qcd_val"][k], scores[s][k]) for k in LIKELIHOOD_SCORES))
    del scores["qcd_val"]
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
    ap.add_argument("--ensemble", type=int, default=5,
                    help="score with the equal-weight mixture of this many VAEs of the chosen size "
                         "(the grid's model and ensemble − 1 more, other seeds)")
    ap.add_argument("--tau-coords", choices=("log", "linear"), default="log",
                    help="the N-subjettiness values in log coordinates (default) or as they are")
    ap.add_argument("--threads", type=int, default=2,
                    help="Pythia threads (PythiaParallel when > 1, fast; 1 is exactly reproducible)")
    ap.add_argument("--out", default="runs/examples/hep")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.ensemble < 1:
        ap.error(f"--ensemble must be at least 1, got {args.ensemble}")
    out = Path(args.out).resolve()
    # Under mpiexec the grid and the ensemble are trained one model per rank (or per group of
    # ranks), every rank receives every model, the evaluations are split across the ranks,
    # and rank 0 alone prints and writes.
    comm = npvae.parallel.world()
    rank0 = npvae.parallel.rank_of(comm) == 0
    quiet = args.quiet or not rank0
    if rank0:
        out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    if comm is not None and not rank0:
        comm.Barrier()  # rank 0 generates (and caches) the events first; the others read them
    raw = {s: generate.load(s, n, seed=args.seed, realistic=args.realistic,
                                threads=args.threads, verbose=not quiet)
           for s, n in (("qcd", args.qcd), ("wprime", args.signal), ("ttbar", args.signal))}
    if comm is not None and rank0:
        comm.Barrier()
    gen_seconds = time.perf_counter() - t
    feats = {s: preprocess(v, args.tau_coords) for s, v in raw.items()}
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
    logged = np.isin(cols, LOG_FEATURES + (TAU_FEATURES if args.tau_coords == "log" else []))
    log_jacs = {s: log_jacobian(u[:, cols], std.std[cols], logged)
                for s, u in (("qcd_val", qcd_val), ("qcd", qcd_test), ("wprime", feats["wprime"]),
                             ("ttbar", feats["ttbar"]))}
    grid = GRID if args.latent is None else [(h, args.latent) for h in sorted({h for h, _ in GRID})]
    models = []
    trained = npvae.parallel.train_many(
        grid, lambda point, group: train_vae(xs["qcd_train"][:, cols], xs["qcd_val"][:, cols], *point, args,
                                             comm=group))
    for (hidden, latent), model in zip(grid, trained):
        val = float(np.mean(model.log_likelihood(xs["qcd_val"][:, cols], n_samples=100, rng=np.random.default_rng(2))))
        models.append({"hidden": list(hidden), "latent": latent, "qcd_val_log_px": val, "model": model,
                       "qcd_val_log_px_feature_units": val + float(np.mean(log_jacs["qcd_val"]))})
        if not quiet:
            print(f"  VAE {len(cols)}-{'-'.join(map(str, hidden))}-{latent}: QCD validation ln p(x) {val:.4f}")
    chosen = max(models, key=lambda m: m["qcd_val_log_px"])  # QCD only: no signal seen yet
    members = [chosen["model"]] + npvae.parallel.train_many(
        range(1, args.ensemble),
        lambda k, group: train_vae(xs["qcd_train"][:, cols], xs["qcd_val"][:, cols], tuple(chosen["hidden"]),
                                   chosen["latent"], args, seed=args.seed + 1000 * k, comm=group))
    ensemble_val = float(np.mean(mixture_log_likelihood(members, xs["qcd_val"][:, cols], seed=2)))

    results = {"events": {s: len(v) for s, v in raw.items()}, "generation_seconds": gen_seconds,
               "threads": args.threads, "tau_coords": args.tau_coords,
               "vae_inputs": [generate.FEATURES[i] for i in cols],
               "selection": "highest QCD validation ln p(x) (K = 100)",
               "chosen": {k: chosen[k] for k in ("hidden", "latent", "qcd_val_log_px", "qcd_val_log_px_feature_units")},
               "headline": COMBINED, "signals": {}, "grid": [], "target_met": {}, "margin": {}}
    results["ensemble"] = {"members": args.ensemble, "qcd_val_log_px": ensemble_val}
    scores = score_all(members, xs, cols, log_jacs)
    # the PCA baseline: once, on all 19 features
    for s, p in zip(scores, pca_scores(xs["qcd_train"], xs["qcd"], xs["wprime"], xs["ttbar"])):
        scores[s]["PCA (3) reconstruction error"] = p
    for sig in ("wprime", "ttbar"):
        res = {}
        for name in scores["qcd"]:
            res[name] = {"auc": roc_auc(scores["qcd"][name], scores[sig][name]),
                         "rejection_at_30pct": rejection_at(scores["qcd"][name], scores[sig][name])}
        i, sgn, auc = best_single_feature(xs["qcd"], xs[sig])
        best = f"best single feature ({generate.FEATURES[i]}{', low' if sgn < 0 else ''})"
        res[best] = {"auc": auc, "rejection_at_30pct": rejection_at(sgn * xs["qcd"][:, i], sgn * xs[sig][:, i])}
        results["signals"][sig] = res
        baselines = ("PCA (3) reconstruction error", best)
        results["target_met"][sig] = all(res[COMBINED]["auc"] > res[b]["auc"] for b in baselines)
        # statistical precision: paired bootstrap of the events (the best feature kept fixed)
        boot = bootstrap_aucs({**{k: scores["qcd"][k] for k in (COMBINED, baselines[0])}, best: sgn * xs["qcd"][:, i]},
                              {**{k: scores[sig][k] for k in (COMBINED, baselines[0])}, best: sgn * xs[sig][:, i]})
        for k, v in boot.items():
            res[k]["auc_std"] = float(np.std(v))
        results["margin"][sig] = {b: {"combined_minus_baseline": res[COMBINED]["auc"] - res[b]["auc"],
                                      "std": float(np.std(boot[COMBINED] - boot[b]))} for b in baselines}
    # every grid point's AUCs, for the record (the choice above was made before these)
    for m in models:
        sc = scores if m is chosen and args.ensemble == 1 else score_all(m["model"], xs, cols, log_jacs)
        results["grid"].append({
            "hidden": m["hidden"], "latent": m["latent"], "qcd_val_log_px": m["qcd_val_log_px"], "chosen": m is chosen,
            **{f"auc_{k}": {sig: roc_auc(sc["qcd"][k], sc[sig][k]) for sig in ("wprime", "ttbar")}
               for k in ("-ELBO", COMBINED)}})
    if not rank0:
        return results
    (out / "result.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nchosen on QCD validation ln p(x): {len(cols)}-{'-'.join(map(str, chosen['hidden']))}-{chosen['latent']}")
    for sig, res in results["signals"].items():
        print(f"\n{sig}: {'score':42s} {'ROC AUC':>8s}{'':8s} {'1/eps_B @ 30%':>14s}")
        for name, r in res.items():
            std = f" ± {r['auc_std']:.3f}" if "auc_std" in r else ""
            print(f"  {name:48s} {r['auc']:8.3f}{std:8s} {r['rejection_at_30pct']:14.1f}")
    print("\ntarget: the combined score beats both baselines (± one bootstrap standard deviation)")
    for sig, margins in results["margin"].items():
        print(f"  {sig}: {'met' if results['target_met'][sig] else 'NOT met'}; "
              + "; ".join(f"{m['combined_minus_baseline']:+.3f} ± {m['std']:.3f} against {b}" for b, m in margins.items()))
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
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    for ax, name in zip(axes.flat, ("-ELBO", "reconstruction error", "KL", *LIKELIHOOD_SCORES, COMBINED)):
        hi = np.quantile(np.concatenate([scores[s][name] for s in scores]), 0.99)
        lo = np.quantile(np.concatenate([scores[s][name] for s in scores]), 0.001)
        for s in scores:
            ax.hist(scores[s][name], bins=60, range=(lo, hi), histtype="step", density=True,
                    color=colors[s], label=labels[s])
        ax.set(xlabel=name, ylabel="density", title=f"VAE: {name}", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "score_distributions.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, sig in zip(axes, ("wprime", "ttbar")):
        for name in (COMBINED, *LIKELIHOOD_SCORES, "-ELBO", "reconstruction error", "KL",
                     "PCA (3) reconstruction error"):
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
    mass = np.expm1(np.asarray(qcd_test_pre)[:, generate.FEATURES.index("j1_mass")])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, name in zip(axes, (COMBINED, "-ELBO")):
        score = scores["qcd"][name]
        for q, style in ((0.0, "-"), (0.9, "--"), (0.99, ":")):
            sel = score >= np.quantile(score, q)
            ax.hist(mass[sel], bins=40, range=(0, 400), histtype="step", density=True, ls=style,
                    label=f"score above its {int(q * 100)}% quantile" if q else "all")
        ax.set(xlabel="leading-jet mass (GeV)", ylabel="density", title=f"QCD jet mass, cut on {name}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "qcd_mass_sculpting.png", dpi=100)
    plt.close(fig)
    print(f"plots written to {out}")


if __name__ == "__main__":
    main()
