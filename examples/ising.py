"""A VAE on 2D Ising configurations: does the latent space learn the magnetisation?

What Mehta et al. (Physics Reports 2019, notebook 20) did with Keras, done properly:
spins mapped to {0, 1} with a Bernoulli likelihood, a held-out test set, the true ELBO
(β = 1) on it, and a number for the claim: the Spearman rank correlation between the best
latent coordinate and the magnetisation m (and |m|) on held-out configurations.

Run:  python examples/ising.py [--L 16] [--epochs 40] [--out runs/examples/ising]
Writes the run directory with the model, the history, result.json and (with matplotlib,
the `plot` extra) latent_vs_temperature.png.
"""
import argparse
import json
from pathlib import Path

import numpy as np

import npvae
from npvae import ising
from npvae.metrics import spearman

TEMPERATURES = tuple(np.round(np.linspace(1.0, 3.5, 11), 3))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--n-per-T", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--latent", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/examples/ising")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    data = ising.load(L=args.L, temperatures=TEMPERATURES, n_per_T=args.n_per_T, seed=args.seed)
    x = ising.as_bernoulli(data["spins"])
    x_train, x_test, T_train, T_test, m_train, m_test = npvae.data.train_val_split(
        x, 0.2, args.seed, data["T"], data["m"])
    model = npvae.VAE(x.shape[1], args.latent, hidden=(256,), activation="relu", seed=args.seed)
    history = npvae.fit(model, x_train, x_val=x_test, epochs=args.epochs, batch_size=64,
                        beta=npvae.LinearBeta(5), seed=args.seed, progress=not args.quiet,
                        diagnostics=x_test[:500])
    model.save(out / "model.npz")
    history.to_csv(out / "history.csv")
    history.to_json(out / "history.json")

    mu, _ = model.encode(x_test)
    corr_m = [spearman(mu[:, j], m_test) for j in range(args.latent)]
    corr_abs = [spearman(mu[:, j], np.abs(m_test)) for j in range(args.latent)]
    corr_T = [spearman(mu[:, j], T_test) for j in range(args.latent)]
    best = int(np.argmax(np.abs(corr_m)))
    # the ordered phase has two branches (m > 0, m < 0): |latent| should track |m| and T
    corr_abs_abs = spearman(np.abs(mu[:, best]), np.abs(m_test))
    corr_abs_T = spearman(np.abs(mu[:, best]), T_test)
    result = {
        "L": args.L, "temperatures": list(map(float, TEMPERATURES)), "n_train": len(x_train),
        "n_test": len(x_test), "test_elbo": float(model.elbo(x_test).mean()),
        "test_log_px_K1000": float(model.log_likelihood(x_test[:500], n_samples=1000).mean()),
        "spearman_latent_m": corr_m, "spearman_latent_abs_m": corr_abs, "spearman_latent_T": corr_T,
        "best_latent_for_m": best, "active_units": history["active_units"][-1],
        "spearman_abs_best_latent_abs_m": corr_abs_abs, "spearman_abs_best_latent_T": corr_abs_T,
    }
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"test ELBO {result['test_elbo']:.2f} nats per configuration ({args.L}x{args.L} spins); "
          f"ln p(x) (K=1000, 500 configs) {result['test_log_px_K1000']:.2f}")
    for j in range(args.latent):
        print(f"latent {j}: Spearman with m {corr_m[j]:+.3f}, with |m| {corr_abs[j]:+.3f}, "
              f"with T {corr_T[j]:+.3f}")
    print(f"|latent {best}|: Spearman with |m| {corr_abs_abs:+.3f}, with T {corr_abs_T:+.3f}")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install 'npvae[plot]'): no plot written")
        return result
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    sc = axes[0].scatter(mu[:, 0], mu[:, 1] if args.latent > 1 else np.zeros(len(mu)), c=T_test,
                         cmap="coolwarm", s=6)
    fig.colorbar(sc, ax=axes[0], label="temperature T")
    axes[0].set(xlabel="latent μ₀", ylabel="latent μ₁", title="held-out configurations")
    axes[1].scatter(T_test, mu[:, best], c=m_test, cmap="PiYG", s=6)
    axes[1].axvline(ising.T_CRITICAL, color="k", lw=0.8, ls="--", label="T_c")
    axes[1].set(xlabel="temperature T", ylabel=f"latent μ_{best}",
                title=f"best latent vs T (colour: m)\nSpearman(latent, m) = {corr_m[best]:+.3f}")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "latent_vs_temperature.png", dpi=100)
    print(f"plot written to {out / 'latent_vs_temperature.png'}")
    return result


if __name__ == "__main__":
    main()
