"""The ``npvae`` command: train, evaluate, sample, gradcheck.

    npvae train                       # the built-in 2D Ising data, into runs/ising
    npvae train --data fashion-mnist --epochs 10 --latent 20 --hidden 400
    npvae train --data my.npz --config run.toml
    npvae evaluate runs/ising         # test ELBO and ln p(x) on the run's held-out split
    npvae sample runs/ising           # an image grid of prior samples
    npvae gradcheck --likelihood gaussian --sigma learned

Settings come from the defaults, then a TOML file (``--config``; keys as the long flags,
with underscores), then the flags.  A run directory holds config.toml, checkpoints/,
model.npz, history.csv, history.json, and the plots (with the ``plot`` extra).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DEFAULTS = {
    "data": "ising", "data_key": None, "out": None, "epochs": 30, "batch_size": 64,
    "latent": 2, "hidden": "256", "activation": "relu", "likelihood": None, "sigma": None,
    "lr": 1e-3, "beta": 1.0, "beta_warmup": 5.0, "seed": 0, "binarize": None,
    "objective": "elbo", "n_samples": 1, "val_fraction": 0.2, "free_bits": 0.0,
    "ising_L": 16, "ising_n_per_T": 200, "plots": True, "resume": False,
}
CHOICES = {
    "activation": ("relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus", "identity"),
    "likelihood": ("bernoulli", "gaussian", "continuous_bernoulli"),
    "binarize": ("none", "static", "dynamic"),
    "objective": ("elbo", "iwae"),
}
ISING_TEMPERATURES = tuple(np.round(np.linspace(1.0, 3.5, 11), 3))


class UsageError(Exception):
    """A bad flag, config file or data path: printed without a traceback, exit code 2."""


# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------
def read_config(path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise UsageError("--config needs Python 3.11+ (tomllib) or 'pip install tomli'") from None
    path = Path(path)
    if not path.exists():
        raise UsageError(f"config file {path} does not exist")
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    cfg = cfg.get("train", cfg)
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"config file {path}: unknown keys {unknown}; allowed: {sorted(DEFAULTS)}")
    return cfg


def write_config(cfg: dict, path) -> None:
    lines = ["# npvae train: the effective settings of this run", "[train]"]
    for k, v in cfg.items():
        if v is None:
            continue
        lines.append(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def resolve(args) -> dict:
    cfg = dict(DEFAULTS)
    if args.config:
        cfg.update(read_config(args.config))
    for k in DEFAULTS:
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v
    for k, allowed in CHOICES.items():
        if cfg[k] is not None and cfg[k] not in allowed:
            raise UsageError(f"{k} must be one of {', '.join(allowed)}; got {cfg[k]!r}")
    try:
        cfg["hidden_layers"] = tuple(int(h) for h in str(cfg["hidden"]).split(",") if h.strip())
    except ValueError:
        raise UsageError(f"hidden must be comma-separated widths such as 400 or 256,128; got {cfg['hidden']!r}") from None
    for k in ("epochs", "batch_size", "latent", "n_samples", "ising_L", "ising_n_per_T"):
        if not isinstance(cfg[k], int) or cfg[k] < 1:
            raise UsageError(f"{k} must be a positive integer; got {cfg[k]!r}")
    if not 0 < float(cfg["val_fraction"]) < 1:
        raise UsageError(f"val_fraction must lie in (0, 1); got {cfg['val_fraction']!r}")
    if cfg["out"] is None:
        name = cfg["data"] if cfg["data"] in ("ising", "fashion-mnist") else Path(cfg["data"]).stem
        cfg["out"] = str(Path("runs") / name)
    return cfg


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------
def load_data(cfg):
    """(x, labels, label_name, default likelihood, default binarize) for the configured data."""
    import npvae
    from npvae import ising

    name = cfg["data"]
    if name == "ising":
        d = ising.load(L=cfg["ising_L"], temperatures=ISING_TEMPERATURES, n_per_T=cfg["ising_n_per_T"],
                       seed=cfg["seed"])
        return ising.as_bernoulli(d["spins"]), d["T"], "temperature", "bernoulli", "none"
    if name == "fashion-mnist":
        try:
            x, y = npvae.data.load_fashion_mnist("train", labels=True)
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
        return x, y, "class", "bernoulli", "dynamic"
    path = Path(name)
    if not path.exists():
        raise UsageError(f"--data must be 'ising', 'fashion-mnist' or a .npy/.npz/.csv file; "
                         f"{path} does not exist")
    try:
        x = npvae.data.load_array(path, key=cfg["data_key"])
    except npvae.data.DataError as exc:
        raise UsageError(str(exc)) from None
    in_unit = float(x.min()) >= 0 and float(x.max()) <= 1
    return x, np.arange(len(x)), "index", ("bernoulli" if in_unit else "gaussian"), "none"


def split(cfg, x, labels):
    import npvae
    return npvae.data.train_val_split(x, float(cfg["val_fraction"]), cfg["seed"], labels)


# ----------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    import npvae

    cfg = resolve(args)
    x, labels, label_name, lik_default, bin_default = load_data(cfg)
    likelihood = cfg["likelihood"] or lik_default
    binarize = cfg["binarize"] or bin_default
    cfg.update(likelihood=likelihood, binarize=binarize)
    standardizer = None
    if likelihood == "gaussian":
        standardizer = npvae.data.Standardizer().fit(x)
        x = standardizer.transform(x)
    x_train, x_val, _, labels_val = split(cfg, x, labels)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    write_config({k: v for k, v in cfg.items() if k != "hidden_layers"}, out / "config.toml")
    if standardizer is not None:
        standardizer.save(out / "standardizer.npz")
    sigma = cfg["sigma"]
    if isinstance(sigma, str) and sigma not in ("learned", "per_example"):
        try:
            sigma = float(sigma)
        except ValueError:
            raise UsageError(f"sigma must be a number, 'learned' or 'per_example'; got {sigma!r}") from None
    try:
        model = npvae.VAE(x.shape[1], cfg["latent"], hidden=cfg["hidden_layers"],
                          activation=cfg["activation"], likelihood=likelihood, seed=cfg["seed"],
                          **({"sigma": sigma} if likelihood == "gaussian" and sigma is not None else {}))
        beta = (npvae.LinearBeta(float(cfg["beta_warmup"])) if float(cfg["beta_warmup"]) > 0
                and cfg["objective"] == "elbo" else float(cfg["beta"]))
        history = npvae.fit(model, x_train, x_val=x_val, optimizer=npvae.Adam(lr=float(cfg["lr"])),
                            epochs=cfg["epochs"], batch_size=cfg["batch_size"], beta=beta,
                            seed=cfg["seed"], binarize=None if binarize == "none" else binarize,
                            checkpoint_dir=out / "checkpoints", resume=bool(cfg["resume"]),
                            progress=not args.quiet, free_bits=float(cfg["free_bits"]),
                            objective=cfg["objective"], n_samples=cfg["n_samples"],
                            diagnostics=x_val[:500])
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    model.save(out / "model.npz")
    history.to_csv(out / "history.csv")
    history.to_json(out / "history.json")
    written = []
    if cfg["plots"]:
        try:
            from npvae import plots
            written = plots.write_all(model, history, x_val[:2000], labels_val[:2000], out, label_name)
        except ImportError as exc:
            print(f"no plots: {exc}", file=sys.stderr)
    last = history[-1] if len(history) else {}
    print(f"trained {len(history)} epochs; validation ELBO {last.get('val_elbo', float('nan')):.3f} nats; "
          f"run written to {out}" + (f" ({len(written)} plots)" if written else ""))
    return 130 if history.interrupted else 0


def _load_run(run):
    import npvae
    run = Path(run)
    if not (run / "model.npz").exists() or not (run / "config.toml").exists():
        raise UsageError(f"{run} is not an npvae run directory (no model.npz and config.toml); "
                         f"make one with 'npvae train --out {run}'")
    cfg = dict(DEFAULTS)
    cfg.update(read_config(run / "config.toml"))
    cfg["hidden_layers"] = tuple(int(h) for h in str(cfg["hidden"]).split(",") if h.strip())
    try:
        model = npvae.load(run / "model.npz")
    except npvae.CheckpointError as exc:
        raise UsageError(str(exc)) from None
    return run, cfg, model


def cmd_evaluate(args) -> int:
    import npvae
    run, cfg, model = _load_run(args.run)
    x, labels, *_ = load_data(cfg)
    if (run / "standardizer.npz").exists():
        x = npvae.data.Standardizer.load(run / "standardizer.npz").transform(x)
    _, x_val, _, _ = split(cfg, x, labels)
    if cfg.get("binarize") in ("static", "dynamic"):
        x_val = npvae.data.binarize(x_val, np.random.default_rng([cfg["seed"], 3]))
    x_val = x_val[:args.max_examples]
    elbo = float(model.elbo(x_val, rng=np.random.default_rng(0)).mean())
    ll, ess = model.log_likelihood(x_val, n_samples=args.n_samples, rng=np.random.default_rng(1),
                                   return_ess=True)
    res = {"examples": len(x_val), "test_elbo": elbo, "test_log_px": float(ll.mean()),
           "K": args.n_samples, "mean_ess": float(ess.mean())}
    (run / "evaluation.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"held-out examples: {len(x_val)}\nELBO (β = 1):      {elbo:.3f} nats\n"
          f"ln p(x) (K={args.n_samples}): {res['test_log_px']:.3f} nats (mean ESS {res['mean_ess']:.1f})")
    return 0


def cmd_sample(args) -> int:
    run, cfg, model = _load_run(args.run)
    imgs = model.sample(args.n, np.random.default_rng(args.seed))
    out = Path(args.out) if args.out else run / "samples.png"
    from npvae import plots
    shape = plots.image_shape_for(model.n_inputs)
    if out.suffix == ".npy" or shape is None:
        out = out.with_suffix(".npy")
        np.save(out, imgs)
    else:
        try:
            plots.prior_samples(model, shape, out, n=args.n, seed=args.seed)
        except ImportError as exc:
            raise UsageError(f"{exc} (or write the samples as .npy with --out samples.npy)") from None
    print(f"{args.n} samples written to {out}")
    return 0


def cmd_gradcheck(args) -> int:
    import npvae
    from npvae.testing import check_gradients

    sigma = args.sigma
    if sigma not in (None, "learned", "per_example"):
        try:
            sigma = float(sigma)
        except ValueError:
            raise UsageError(f"--sigma must be a number, 'learned' or 'per_example'; got {sigma!r}") from None
    hidden = tuple(int(h) for h in args.hidden.split(",") if h.strip())
    try:
        model = npvae.VAE(args.inputs, args.latent, hidden=hidden, activation=args.activation,
                          likelihood=args.likelihood, dtype=np.float64, seed=args.seed,
                          **({"sigma": sigma} if args.likelihood == "gaussian" and sigma is not None else {}))
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.batch, args.inputs))
    eps = rng.standard_normal((args.n_samples, args.batch, args.latent) if args.objective == "iwae"
                              else (args.batch, args.latent))
    fn = lambda p: model.loss_and_grad(x, eps=eps, beta=args.beta, objective=args.objective,
                                       n_samples=args.n_samples)
    report = check_gradients(fn, model.params, raise_on_failure=False)
    print(f"{model!r}, batch {args.batch}, β = {args.beta}, objective {args.objective}")
    print(report)
    print(f"{'PASS' if report.ok else 'FAIL'}: largest relative error {report.max_rel:.2e} "
          f"(tolerance {report.rtol:g})")
    return 0 if report.ok else 1


# ----------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(prog="npvae", description="A VAE in NumPy with hand-derived gradients.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,evaluate,sample,gradcheck}")

    t = sub.add_parser("train", help="train a VAE (default: the built-in Ising data)")
    t.add_argument("--config", help="a TOML file of settings (keys as the flags, with underscores)")
    t.add_argument("--data", help="'ising' (default), 'fashion-mnist', or a .npy/.npz/.csv file")
    t.add_argument("--data-key", dest="data_key", help="the array to use in an .npz file")
    t.add_argument("--out", help="the run directory (default: runs/<data>)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--latent", type=int)
    t.add_argument("--hidden", help="comma-separated widths, e.g. 400 or 256,128")
    t.add_argument("--activation", choices=CHOICES["activation"])
    t.add_argument("--likelihood", choices=CHOICES["likelihood"])
    t.add_argument("--sigma", help="Gaussian: a number, 'learned' or 'per_example'")
    t.add_argument("--lr", type=float)
    t.add_argument("--beta", type=float, help="a constant β (used when --beta-warmup is 0)")
    t.add_argument("--beta-warmup", dest="beta_warmup", type=float,
                   help="epochs of linear β warm-up from 0 to 1 (default 5; 0 for constant β)")
    t.add_argument("--free-bits", dest="free_bits", type=float)
    t.add_argument("--objective", choices=CHOICES["objective"])
    t.add_argument("--n-samples", dest="n_samples", type=int, help="IWAE samples")
    t.add_argument("--binarize", choices=CHOICES["binarize"])
    t.add_argument("--val-fraction", dest="val_fraction", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--ising-L", dest="ising_L", type=int, help="Ising lattice size (default 16)")
    t.add_argument("--ising-n-per-T", dest="ising_n_per_T", type=int,
                   help="Ising configurations per temperature (default 200)")
    t.add_argument("--no-plots", dest="plots", action="store_false", default=None)
    t.add_argument("--resume", action="store_true", default=None, help="continue from the run's checkpoints")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="held-out ELBO and importance-sampled ln p(x) of a run")
    e.add_argument("run")
    e.add_argument("--n-samples", dest="n_samples", type=int, default=1000)
    e.add_argument("--max-examples", dest="max_examples", type=int, default=2000)
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", help="write samples from the prior as an image grid")
    s.add_argument("run")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="a .png (default RUN/samples.png) or .npy path")
    s.set_defaults(func=cmd_sample)

    g = sub.add_parser("gradcheck", help="finite-difference check of a configuration")
    g.add_argument("--inputs", type=int, default=6)
    g.add_argument("--latent", type=int, default=2)
    g.add_argument("--hidden", default="5")
    g.add_argument("--activation", choices=CHOICES["activation"], default="tanh")
    g.add_argument("--likelihood", choices=CHOICES["likelihood"], default="bernoulli")
    g.add_argument("--sigma")
    g.add_argument("--objective", choices=CHOICES["objective"], default="elbo")
    g.add_argument("--n-samples", dest="n_samples", type=int, default=1)
    g.add_argument("--batch", type=int, default=4)
    g.add_argument("--beta", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_gradcheck)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"npvae {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
