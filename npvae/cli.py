"""The ``npvae`` command: train, evaluate, sample, gradcheck.

    npvae train                       # the built-in 2D Ising data, into runs/ising
    npvae train --data fashion-mnist --epochs 10
    npvae train --data my.npz --data-key x --config run.toml
    npvae evaluate runs/ising         # held-out ELBO and ln p(x) of the run
    npvae sample runs/ising           # draws x ~ p(x|z), z ~ N(0, I), as a figure
    npvae gradcheck --likelihood gaussian --sigma learned

Settings come from the defaults, then a TOML file (``--config``), then the flags; the rules
live in :mod:`npvae.settings`.  A run directory holds config.toml, checkpoints/, model.npz,
history.csv, history.json, and the plots (with the ``plot`` extra).  Every mistake in the
arguments, a file or the settings ends with one line saying what is allowed, and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

import npvae  # the public names, looked up when called (as a user's script would)
from . import ising, parallel, plots
from . import settings as S
from .files import atomic_save_npy, atomic_write_text
from .kernels import compiling
from .settings import SettingsError
from .testing import check_gradients
from .train import InterruptFlag

ISING_TEMPERATURES = tuple(1.0 + 0.25 * i for i in range(11))  # 1.0, 1.25, ..., 3.5
FASHION_SHAPE = (28, 28)
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot")  # the data set's label order


class UsageError(Exception):
    """A bad flag, config file or data path: printed without a traceback, exit code 2."""


_RANK = 0  # this process's MPI rank (0 without MPI): rank 0 alone prints and writes


def _say(msg: str) -> None:
    print(msg if _RANK == 0 else f"rank {_RANK}: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------
def load_data(cfg, progress=False):
    """(x, labels or None, label name, default likelihood, default binarize, image shape)."""
    name = cfg["data"]
    if name == "ising":
        spins = cfg["ising_L"] ** 2 * len(ISING_TEMPERATURES) * cfg["ising_n_per_T"]
        if spins > 1 << 31:
            raise UsageError(f"--ising-L {cfg['ising_L']} with --ising-n-per-T {cfg['ising_n_per_T']} is "
                             f"{spins:.3g} spins, more than the built-in data generates (2^31)")
        d = ising.load(L=cfg["ising_L"], temperatures=ISING_TEMPERATURES, n_per_T=cfg["ising_n_per_T"],
                       seed=cfg["seed"], progress=progress)
        L = cfg["ising_L"]
        return ising.as_bernoulli(d["spins"]), d["T"], "temperature", "bernoulli", "none", (L, L)
    if name == "fashion-mnist":
        try:
            x, y = npvae.data.load_fashion_mnist("train", labels=True)
        except (FileNotFoundError, npvae.data.DataError) as exc:
            raise UsageError(str(exc)) from None
        if y.min() < 0 or y.max() >= len(FASHION_CLASSES):
            raise UsageError(f"Fashion-MNIST labels must be 0..9; the label file holds {int(y.min())}..{int(y.max())}")
        return x, np.asarray(FASHION_CLASSES)[y], "garment", "bernoulli", "dynamic", FASHION_SHAPE
    try:
        x = npvae.data.load_array(name, key=cfg["data_key"])
    except npvae.data.DataError as exc:
        msg = str(exc).replace("pass key= to choose one", "choose one with --data-key")
        raise UsageError(msg) from None
    shape = S.parse_image_shape(cfg["image_shape"])
    if shape is not None and shape[0] * shape[1] != x.shape[1]:
        raise UsageError(f"--image-shape {cfg['image_shape']} has {shape[0] * shape[1]} pixels, but "
                         f"the rows of {name} have {x.shape[1]} values")
    in_unit = float(x.min()) >= 0 and float(x.max()) <= 1
    return x, None, None, ("bernoulli" if in_unit else "gaussian"), "none", shape


def split(cfg, x, labels):
    n_val = int(round(len(x) * cfg["val_fraction"]))
    if n_val < 1 or len(x) - n_val < 1:
        raise UsageError(f"val_fraction {cfg['val_fraction']:g} of {len(x)} examples leaves "
                         f"{len(x) - n_val} for training and {n_val} for validation; both need at least 1")
    arrays = () if labels is None else (labels,)
    parts = npvae.data.train_val_split(x, cfg["val_fraction"], cfg["seed"], *arrays)
    return (parts[0], parts[1], None, None) if labels is None else parts


def _fill_data_defaults(cfg, explicit, lik_default, bin_default):
    cfg["likelihood"] = cfg["likelihood"] or lik_default
    cfg["binarize"] = cfg["binarize"] or bin_default
    if cfg["likelihood"] == "gaussian" and cfg["binarize"] == "dynamic" and "binarize" not in explicit:
        cfg["binarize"] = "none"
    if cfg["likelihood"] != "gaussian" and "sigma" not in explicit:
        cfg["sigma"] = None
    if cfg["layer"] == "gated" and "activation" not in explicit:
        cfg["activation"] = None  # a gated layer has none: config.toml then leaves it out
    try:
        S.check_combination(cfg, explicit)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def hidden_layers(hidden, layer, activation) -> dict:
    """npvae.VAE's arguments for the hidden widths (the encoder's, mirrored by the decoder):
    dense layers with the activation, or every one a GatedDense."""
    if layer == "gated":
        return dict(encoder=[npvae.layers.GatedDense(h) for h in hidden],
                    decoder=[npvae.layers.GatedDense(h) for h in hidden[::-1]])
    return dict(hidden=hidden, activation=activation)


def learning_rate(cfg, n_train):
    """The run's learning rate: ``--lr``, or with ``--lr-schedule cosine`` a linear warm-up
    over min(1000, a tenth of the run) steps, then a cosine from lr down to lr/10 at the last
    of the run's --epochs × ⌈n_train / batch⌉ steps."""
    if cfg["lr_schedule"] == "constant":
        return cfg["lr"]
    total = cfg["epochs"] * -(-n_train // cfg["batch_size"])
    cosine = npvae.schedules.Cosine(cfg["lr"], total, cfg["lr"] / 10)
    return npvae.schedules.Warmup(cosine, max(1, min(S.COSINE_WARMUP_STEPS, total // 10)))


# ----------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------
RESUMABLE = ("epochs", "plots", "resume", "out")  # what --resume may change or must name


def _run_contents(out: Path) -> list[str]:
    """What of a run ``out`` already holds (empty for a new or empty folder)."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    held = [n for n in ("config.toml", "model.npz", "history.csv", "history.json") if (out / n).exists()]
    n_ckpt = len(list((out / "checkpoints").glob("ckpt-*.npz"))) if (out / "checkpoints").is_dir() else 0
    return held + ([f"{n_ckpt} checkpoint(s)"] if n_ckpt else [])


def default_out(data: str) -> str:
    """The run folder when --out is not given: runs/ and the data's name, a file's with its
    extension (features.csv and features.npy must not share a run folder)."""
    return str(Path("runs") / (data if data in S.BUILT_IN else Path(data).name))


def _used_folder(out: Path, held: list[str], differ: str = "", epochs: int | None = None) -> str:
    """Why a new run cannot go into ``out``, naming the data of the run it holds (and
    ``differ``: which of its settings differ from the ones asked for; ``epochs``: the epochs
    asked for, when a resume would reach them)."""
    of = ""
    try:
        saved = S.read_toml(out / "config.toml")
        if isinstance(saved.get("data"), str):
            key = saved.get("data_key")
            of = f" of {saved['data']}" + (f" (--data-key {key})" if isinstance(key, str) else "")
    except SettingsError:
        pass  # no readable config: the files held say enough
    differ = f", with {differ}" if differ else ""
    more = f" --epochs {epochs}" if epochs is not None else ""
    return (f"{out} already holds a run{of} ({', '.join(held)}){differ}: continue it with "
            f"'npvae train --resume --out {out}{more}', or choose another --out")


_NOT_COMPARED = ("out", "resume", "plots")  # what may differ between two asks for the same run


def _finished_run(out: Path) -> dict | None:
    """The settings of the complete run in ``out`` (its model written, every epoch of its
    config.toml in its history), as config.toml holds them; None for anything else."""
    try:
        saved = S.read_toml(out / "config.toml")
        saved = {k: S.check_value(k, v) for k, v in saved.items()}
        records = json.loads((out / "history.json").read_text(encoding="utf-8"))["records"]
    except (SettingsError, OSError, ValueError, KeyError, TypeError):
        return None
    if not (out / "model.npz").is_file() or len(records) != saved.get("epochs"):
        return None
    return saved


def _differences(cfg: dict, saved: dict, keys=None) -> str:
    """The settings in ``keys`` (default: all that make a run) where ``cfg`` and a run's saved
    ones differ, as 'epochs = 30 (asked: 3)'; unset ones (None) are left out of a config.toml."""
    keys = [k for k in (keys or S.SETTINGS) if k not in _NOT_COMPARED]
    return ", ".join(f"{k} = {saved.get(k)!r} (asked: {cfg[k]!r})" for k in keys if saved.get(k) != cfg[k])


def _settings_for(args):
    """(settings, explicit keys, out) for a new run, or for ``--resume`` the run's own settings
    with the flags checked against them.  Nothing is written."""
    flags = {k: getattr(args, k, None) for k in S.SETTINGS}
    try:
        cfg, explicit = S.resolve(flags, args.config)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    if cfg["out"] is None:
        cfg["out"] = default_out(cfg["data"])
    out = Path(cfg["out"]).expanduser().resolve()
    held = _run_contents(out)
    if not cfg["resume"]:
        if held:
            # the same command again over its finished run has nothing to do (settings that
            # depend on the data are compared once it is read)
            finished = _finished_run(out)
            if finished is None:
                raise UsageError(_used_folder(out, held))
            differ = _differences(cfg, finished, [k for k in S.SETTINGS if cfg[k] is not None])
            if differ:
                longer = differ == _differences(cfg, finished, ["epochs"]) and cfg["epochs"] > finished["epochs"]
                raise UsageError(_used_folder(out, held, differ, cfg["epochs"] if longer else None))
            cfg["finished"] = finished
        cfg["out"] = str(out)
        return cfg, explicit, out
    if "config.toml" not in held:
        raise UsageError(f"nothing to resume in {out} (no config.toml): train a new run there "
                         "without --resume")
    saved = _read_run_settings(out)
    for key in sorted(explicit - set(RESUMABLE)):
        if saved.get(key) != cfg[key] and not (key == "data" and S.data_kind(cfg[key]) == "table"
                                               and saved.get(key) == cfg[key]):
            raise UsageError(f"--{key.replace('_', '-')} {cfg[key]} conflicts with the run's {key} = "
                             f"{saved.get(key)!r}: a resumed run keeps its settings (only --epochs "
                             f"and --no-plots may change); start a new run with another --out instead")
    if saved.get("lr_schedule") == "cosine" and "epochs" in explicit and cfg["epochs"] != saved.get("epochs"):
        raise UsageError(f"--epochs {cfg['epochs']}: the run's cosine learning rate is planned over its "
                         f"{saved.get('epochs')} epochs, so a resumed run keeps them (say --epochs "
                         f"{saved.get('epochs')}, or start a new run with another --out)")
    resumed = dict(saved, out=str(out), resume=True)
    for key in ("epochs", "plots"):
        if key in explicit:
            resumed[key] = cfg[key]
    return resumed, set(explicit) & set(RESUMABLE), out


def _remove_if_empty(out: Path) -> None:
    """Remove a run folder this command created when nothing of a run is in it (a run refused
    before its first checkpoint leaves no trace); called while holding the run's lock, which
    every writer of its checkpoint folder holds first."""
    ckpt = out / "checkpoints"
    if ckpt.is_dir() and not any(ckpt.iterdir()):
        ckpt.rmdir()
    if out.is_dir() and all(p.name == ".checkpoints.lock" for p in out.iterdir()):
        (out / ".checkpoints.lock").unlink(missing_ok=True)
        out.rmdir()


def _read_run_settings(run: Path) -> dict:
    try:
        saved = S.read_toml(run / "config.toml")
        cfg = {k: S.check_value(k, saved.get(k)) for k in S.SETTINGS}
    except SettingsError as exc:
        raise UsageError(f"{run / 'config.toml'}: {exc}") from None
    kind = S.data_kind(cfg["data"] or "ising")
    return {k: v if v is not None else S.default_for(k, kind) for k, v in cfg.items()}


def cmd_train(args) -> int:
    # entered once training has returned: from then to the last line printed, a stop signal
    # lets the run's record be completed (see _train)
    finishing = npvae.train.InterruptFlag()
    try:
        return _train(args, finishing)
    finally:
        finishing.__exit__(None, None, None)


def _train(args, finishing) -> int:
    comm = npvae.parallel.world()
    writer = _RANK == 0
    # under MPI, rank 0 reads the run folder and decides; every rank gets its answer
    cfg, explicit, out = npvae.parallel.agree(comm, lambda: _settings_for(args), kinds=(UsageError,))
    _stop_point()
    if comm is not None and not writer:
        comm.Barrier()  # rank 0 reads (or generates and caches) the data first
    x, labels, label_name, lik_default, bin_default, image_shape = load_data(
        cfg, progress=not args.quiet and writer)
    if comm is not None and writer:
        comm.Barrier()
    _stop_point()
    _fill_data_defaults(cfg, explicit, lik_default, bin_default)
    finished = cfg.pop("finished", None)
    if finished is not None:
        differ = _differences(cfg, finished)
        if differ:
            raise UsageError(_used_folder(out, _run_contents(out), differ))
        if writer:
            no_plots = cfg["plots"] and not any(out.glob("*.png"))
            print(f"nothing was trained: {out} already holds this run, trained for its "
                  f"{_epochs(cfg['epochs'])} with these settings. Train it on with "
                  f"'npvae train --resume --out {out} --epochs N', or start another with --out DIR"
                  + (f"; its plots are not written: 'npvae train --resume --out {out}' writes them"
                     if no_plots else ""))
        return 0
    likelihood, binarize = cfg["likelihood"], cfg["binarize"]
    if binarize != "none" and (float(x.min()) < 0 or float(x.max()) > 1):
        raise UsageError(f"--binarize {binarize} needs data in [0, 1]; {cfg['data']} spans "
                         f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    try:
        S.check_model_size(x.shape[1], cfg)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    standardizer = None
    if likelihood == "gaussian":
        standardizer = _standardizer(out) if cfg["resume"] else npvae.data.Standardizer().fit(x)
        if standardizer is None:
            raise UsageError(f"{out} has no standardizer.npz, which its Gaussian run needs to resume")
        try:
            x = standardizer.transform(x)
        except ValueError as exc:
            raise UsageError(f"{out / 'standardizer.npz'} does not fit the data: {exc}") from None
    x_train, x_val, _, labels_val = split(cfg, x, labels)
    try:
        net = hidden_layers(S.parse_widths(cfg["hidden"]), cfg["layer"], cfg["activation"])
        model = npvae.VAE(x.shape[1], cfg["latent"], likelihood=likelihood, seed=cfg["seed"], **net,
                          **({"sigma": cfg["sigma"] or 1.0} if likelihood == "gaussian" else {}))
        warmup = cfg["beta_warmup"] if cfg["objective"] == "elbo" else 0.0
        beta = npvae.LinearBeta(warmup, stop=cfg["beta"]) if warmup > 0 else cfg["beta"]
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None

    trained_now = []  # the epochs this command trains (a resumed run may have none left)

    def train():
        return npvae.fit(model, x_train, x_val=x_val, optimizer=npvae.Adam(lr=learning_rate(cfg, len(x_train))),
                         epochs=cfg["epochs"], batch_size=cfg["batch_size"], beta=beta,
                         seed=cfg["seed"], binarize=None if binarize == "none" else binarize,
                         checkpoint_dir=out / "checkpoints", resume=cfg["resume"],
                         progress=not args.quiet and writer, free_bits=cfg["free_bits"],
                         objective=cfg["objective"], n_samples=cfg["n_samples"],
                         diagnostics=x_val[:500], comm=comm,
                         callbacks=(lambda record, _: trained_now.append(record["epoch"]),))

    if not writer:  # another MPI rank: its share of every step; rank 0 writes the run
        try:
            history = train()
        except npvae.DivergenceError:
            return 1  # rank 0 says it
        except (ValueError, TypeError, npvae.train.RunLockedError) as exc:
            raise UsageError(str(exc)) from None
        return 130 if history.interrupted else 0

    # accepted: from here on the run directory is written, by this process alone
    new_folder = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock = npvae.train.lock_folder(out)
    except npvae.train.RunLockedError as exc:
        raise UsageError(str(exc).replace("another folder", "another --out")) from None
    written_now = []
    try:
        # checked again under the lock: another process may have made a run here meanwhile
        if not cfg["resume"] and _run_contents(out):
            raise UsageError(_used_folder(out, _run_contents(out)))
        if not cfg["resume"]:
            written_now.append(npvae.checkpoint.atomic_write_text(out / "config.toml", S.toml_text(cfg)))
            if standardizer is not None:
                written_now.append(standardizer.save(out / "standardizer.npz"))
        t0 = time.perf_counter()
        try:
            _stop_point()  # fit takes the signals over from here
            history = train()
        except npvae.DivergenceError as exc:
            _say(f"npvae train: error: {exc}")
            return 1
        except (ValueError, TypeError, npvae.train.RunLockedError) as exc:
            if not list((out / "checkpoints").glob("ckpt-*.npz")):
                for path in written_now:  # refused before training began: leave no trace
                    Path(path).unlink(missing_ok=True)
            raise UsageError(str(exc)) from None
        wall = time.perf_counter() - t0
        # Writing the run's record: a stop signal now lets the model and history be written
        # (a scheduler's SIGTERM must not leave a trained run without its model.npz) and
        # skips the plots; a second signal stops at once, each file being written atomically.
        finishing.__enter__()
        asked = cfg["epochs"]
        if cfg["resume"]:
            # a run already past the epochs asked for keeps its own count in its record
            cfg["epochs"] = max(cfg["epochs"], len(history))
            npvae.checkpoint.atomic_write_text(out / "config.toml", S.toml_text(cfg))
        model.save(out / "model.npz")
        history.to_csv(out / "history.csv")
        history.to_json(out / "history.json")
        written = []
        if cfg["plots"] and len(history) and not finishing.set:
            try:
                written = plots.write_all(
                    model, history, x_val[:2000], None if labels_val is None else labels_val[:2000], out,
                    label_name, image_shape=image_shape,
                    to_data_units=None if standardizer is None else standardizer.inverse,
                    ising_L=cfg["ising_L"] if cfg["data"] == "ising" else None, seed=cfg["seed"])
            except ImportError as exc:
                _say(f"no plots: {exc}")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside the steps, or a second one
        if not list((out / "checkpoints").glob("ckpt-*.npz")):
            for path in written_now:  # nothing was trained: leave no half-made run behind
                Path(path).unlink(missing_ok=True)
            raise
        _say(f"npvae train: stopped at once (a second Ctrl-C or SIGTERM); the last checkpoint in {out / 'checkpoints'} is intact: "
             f"continue with 'npvae train --resume --out {out}'")
        return 130
    finally:
        if new_folder:  # under the lock: nobody else writes here meanwhile
            _remove_if_empty(out)
        lock.release()
    last = history[-1] if len(history) else {}
    val = last.get("val_elbo")
    val_txt = f"validation ELBO {val:.3f} nats" if val is not None else "no validation ELBO"
    if history.interrupted:
        print(f"interrupted after {_epochs(len(history), 'full ')}; saved, continue with "
              f"'npvae train --resume --out {out}'")
        return 130
    if finishing.set:
        print(f"stopped by a signal after training {_epochs(len(history))}; the model and history are "
              f"written to {out}" + ("" if not cfg["plots"] else
                                     f"; the plots are not: 'npvae train --resume --out {out}' writes them"))
        return 130
    took = npvae.train.format_seconds(wall)
    if not cfg["resume"]:
        done = f"trained {_epochs(len(trained_now))} in {took}"
    elif trained_now:
        done = f"trained {_epochs(len(trained_now), 'more ')}, to epoch {len(history)}, in {took}"
    else:
        where = "past" if len(history) > asked else "at"
        done = (f"nothing was trained: the run is already at epoch {len(history)}, {where} the "
                f"{_epochs(asked)} asked for (an --epochs above {len(history)} trains on)")
    print(f"{done}; {val_txt}; run written to {out}")
    note = log_density_note(likelihood, x.shape[1], standardizer is not None)
    if note and val is not None:
        print(f"note: {note}")
    if written:
        pngs = [Path(p).name for p in written if Path(p).suffix == ".png"]
        others = [Path(p).name for p in written if Path(p).suffix != ".png"]
        print(f"{len(pngs)} plot{'s' if len(pngs) != 1 else ''}: {', '.join(pngs)}"
              + (f"; and {', '.join(others)}" if others else ""))
    return 0


def log_density_note(likelihood: str, n_inputs: int, standardised: bool) -> str | None:
    """Why an ELBO or ln p(x) of a density likelihood may be positive; None for the Bernoulli's
    log probabilities, which never are."""
    units = "; in the data's own units, subtract Σ_j ln σ_j of standardizer.npz" if standardised else ""
    if likelihood == "continuous_bernoulli":
        return (f"the continuous Bernoulli p(x|z) is a density on [0, 1]^{n_inputs}, which can exceed 1: "
                "its ELBO and ln p(x) are log densities and may be positive; compare them with other "
                "densities of the same data, not with a Bernoulli run's log probabilities")
    if likelihood == "gaussian":
        return (f"the Gaussian p(x|z) is a density on {'standardised' if standardised else 'the'} "
                f"features: its ELBO and ln p(x) are log densities and may be positive{units}")
    return None


def _epochs(n: int, kind: str = "") -> str:
    return f"{n} {kind}epoch{'' if n == 1 else 's'}"


def load_run(run):
    """(run path, settings, model) of a run directory, every file checked."""
    run = Path(run).expanduser().resolve()
    if not (run / "model.npz").is_file() or not (run / "config.toml").is_file():
        raise UsageError(f"{run} is not an npvae run directory (no model.npz and config.toml); "
                         f"make one with 'npvae train --out {run}'")
    cfg = _read_run_settings(run)
    try:
        model = npvae.load(run / "model.npz")
    except npvae.CheckpointError as exc:
        raise UsageError(str(exc)) from None
    return run, cfg, model


def _standardizer(run):
    path = run / "standardizer.npz"
    if not path.exists():
        return None
    try:
        return npvae.data.Standardizer.load(path)
    except (ValueError, OSError, KeyError) as exc:
        raise UsageError(f"{path} cannot be read: {exc}") from None


def _finite_or_none(v):
    return float(v) if v is not None and math.isfinite(v) else None


def cmd_evaluate(args) -> int:
    run, cfg, model = load_run(args.run)
    comm = npvae.parallel.world()  # under MPI, the examples are split across the ranks
    x, labels, *_ = load_data(cfg)
    if x.shape[1] != model.n_inputs:
        raise UsageError(f"{cfg['data']} has {x.shape[1]} features per example, the model in {run} "
                         f"takes {model.n_inputs}")
    standardizer = _standardizer(run)
    if standardizer is not None:
        x = standardizer.transform(x)
    _, x_val, _, _ = split(cfg, x, labels)
    if cfg.get("binarize") in ("static", "dynamic"):
        x_val = npvae.data.binarize(x_val, np.random.default_rng([cfg["seed"], 3]))
    x_val = x_val[:args.max_examples]
    elbo = float(model.elbo(x_val, rng=np.random.default_rng(0)).mean())
    ll, ess = model.log_likelihood(x_val, n_samples=args.n_samples, rng=np.random.default_rng(1),
                                   return_ess=True, progress=not args.quiet)
    if _RANK != 0:  # rank 0 writes and prints
        return 1 if not np.all(np.isfinite(ll)) or not math.isfinite(elbo) else 0
    res = {"examples": len(x_val), "test_elbo": _finite_or_none(elbo),
           "test_log_px": _finite_or_none(float(ll.mean())), "K": args.n_samples,
           "mean_ess": _finite_or_none(float(ess.mean())),
           "non_finite_log_px": int(np.count_nonzero(~np.isfinite(ll)))}
    if standardizer is not None:
        res["units"] = "standardised features (for the data's own units subtract Σ_j ln σ_j of standardizer.npz)"
    atomic_write_text(run / "evaluation.json", json.dumps(res, indent=1, allow_nan=False) + "\n")
    fmt = lambda v: "not finite" if v is None else f"{v:.3f} nats"
    print(f"held-out examples: {len(x_val)}\nELBO (β = 1):      {fmt(res['test_elbo'])}\n"
          f"ln p(x) (K={args.n_samples}): {fmt(res['test_log_px'])} (mean ESS "
          f"{res['mean_ess'] if res['mean_ess'] is None else round(res['mean_ess'], 1)})\n"
          f"written to {run / 'evaluation.json'}")
    note = log_density_note(model.likelihood_name, model.n_inputs, standardizer is not None)
    if note:
        print(f"note: {note}")
    if res["non_finite_log_px"] or res["test_elbo"] is None:
        _say(f"npvae evaluate: {res['non_finite_log_px']} of {len(x_val)} examples have a non-finite "
             "ln p(x) or ELBO: the model has diverged (see history.csv)")
        return 1
    return 0


def cmd_sample(args) -> int:
    run, cfg, model = load_run(args.run)
    standardizer = _standardizer(run)
    to_data_units = None if standardizer is None else standardizer.inverse
    out = Path(args.out).expanduser().resolve() if args.out else run / "samples.png"
    if out.suffix.lower() not in (".png", ".npy"):
        raise UsageError(f"--out must end in .png (a figure) or .npy (the samples); got {out.name}")
    rng = np.random.default_rng(args.seed)
    if out.suffix.lower() == ".npy":
        draws = model.sample(args.n, rng, mean=args.mean)
        if to_data_units is not None:
            draws = to_data_units(draws)
        atomic_save_npy(out, draws)
        what = "decoder means" if args.mean else "draws x ~ p(x|z)"
        print(f"{args.n} {what} written to {out}")
        return 0
    x_ref = None
    if cfg["data"] not in S.BUILT_IN and Path(cfg["data"]).exists() or cfg["data"] in S.BUILT_IN:
        try:
            x_ref, *_ = load_data(cfg)
            if standardizer is not None:
                x_ref = standardizer.transform(x_ref)
        except UsageError:
            x_ref = None  # the figure just lacks the data for comparison
    image_shape = ((cfg["ising_L"],) * 2 if cfg["data"] == "ising" else FASHION_SHAPE
                   if cfg["data"] == "fashion-mnist" else S.parse_image_shape(cfg["image_shape"]))
    try:
        plots.samples(model, out, n=args.n, seed=args.seed,
                      data=None if x_ref is None else x_ref[:5000], to_data_units=to_data_units,
                      image_shape=image_shape, spins=cfg["data"] == "ising")
    except ImportError as exc:
        raise UsageError(f"{exc} (or write the samples as .npy with --out samples.npy)") from None
    print(f"{args.n} samples written to {out}")
    return 0


def cmd_gradcheck(args) -> int:
    try:
        sigma = S.check_value("sigma", args.sigma)
    except SettingsError as exc:
        raise UsageError(f"--sigma {exc}") from None
    try:
        hidden = S.parse_widths(args.hidden)
    except SettingsError as exc:
        raise UsageError(f"--hidden {exc}") from None
    if sigma is not None and args.likelihood != "gaussian":
        raise UsageError("--sigma applies to --likelihood gaussian only")
    if args.objective == "elbo" and args.n_samples != 1:
        raise UsageError("--n-samples is the iwae objective's K: add --objective iwae")
    if args.objective != "elbo" and args.beta != 1.0:
        raise UsageError("--beta must be 1 with --objective iwae (a bound on ln p(x))")
    if args.layer == "gated" and args.activation is not None:
        raise UsageError("--activation applies to dense layers, and --layer gated's (x W + b) ⊙ sigmoid(x V + c) "
                         "takes none")
    if args.layer == "gated" and not hidden:
        raise UsageError("--layer gated makes the hidden layers gated, and --hidden none has none")
    try:
        model = npvae.VAE(args.inputs, args.latent, likelihood=args.likelihood, dtype=np.float64, seed=args.seed,
                          **hidden_layers(hidden, args.layer, args.activation or "tanh"),
                          **({"sigma": sigma} if args.likelihood == "gaussian" and sigma is not None else {}))
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.batch, args.inputs))
    if args.likelihood == "gaussian":
        x = rng.standard_normal((args.batch, args.inputs))
    eps = rng.standard_normal((args.n_samples, args.batch, args.latent) if args.objective != "elbo"
                              else (args.batch, args.latent))
    fn = lambda p: model.loss_and_grad(x, eps=eps, beta=args.beta, objective=args.objective,
                                       n_samples=args.n_samples)
    report = check_gradients(fn, model.params, raise_on_failure=False, progress=not args.quiet)
    print(f"{model!r}, batch {args.batch}, β = {args.beta}, objective {args.objective}")
    print(report)
    print(f"{'PASS' if report.ok else 'FAIL'}: largest relative error {report.max_rel:.2e} "
          f"(tolerance {report.rtol:g})")
    return 0 if report.ok else 1


# ----------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------
def _bounded(kind, lo, hi=None):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {'whole number' if kind is int else 'number'}: {text!r}")
        if not (lo <= v and (hi is None or v <= hi)) or (kind is float and not math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must lie in [{lo}, {hi if hi is not None else '∞'}]; got {text}")
        return v
    return parse


def _path(text):
    if "\x00" in text or not text.strip():
        raise argparse.ArgumentTypeError(f"not a usable path: {text!r}")
    return text


def _help(key):
    d = S.describe_default(key)
    if key == "sigma":
        d = "1.0 for images read as Gaussian, per_example for tables"
    return S.SETTINGS[key].help + (f" (default: {d})" if d is not None else "")


# what a flag's value looks like, where argparse's default (the flag's name) says nothing
_METAVARS = {"data": "DATA", "data_key": "NAME", "out": "DIR", "hidden": "WIDTHS",
             "image_shape": "HxW", "sigma": "SIGMA", "n_samples": "K"}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=100)


def build_parser():
    p = argparse.ArgumentParser(prog="npvae", formatter_class=_Formatter,
                                description="A variational autoencoder in NumPy with hand-derived, "
                                            "verified gradients.",
                                epilog="Run 'npvae COMMAND --help' for a command's flags and defaults.")
    p.add_argument("--version", action="version", version=f"npvae {npvae.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,evaluate,sample,gradcheck}")

    t = sub.add_parser("train", formatter_class=_Formatter, help="train a VAE (default: the built-in Ising data)",
                       description="Train a VAE and write a run directory (config.toml, checkpoints/, "
                                   "model.npz, history.csv/.json, plots).\nDefaults marked 'ising: …, "
                                   "fashion-mnist: …, tables: …' depend on --data; tables' defaults "
                                   "were chosen by measurement\n(benchmarks/tabular_defaults.md). "
                                   "A flag that does nothing in the chosen setting is refused.")
    t.add_argument("--config", metavar="FILE", type=_path, help="a TOML file of settings (keys as the flags, with "
                                                    "underscores, at the top level or under [train])")
    flag_types = {"int": int, "float": float}
    for key, s in S.SETTINGS.items():
        flag = "--" + key.replace("_", "-")
        if key == "plots":
            t.add_argument("--no-plots", dest="plots", action="store_false", default=None,
                           help="do not write the plots (default: plots on)")
            continue
        if key == "resume":
            t.add_argument("--resume", action="store_true", default=None, help=_help(key))
            continue
        kw = {"dest": key, "help": _help(key)}
        if s.kind in flag_types:
            kw["type"] = flag_types[s.kind]
            kw["metavar"] = "N" if s.kind == "int" else "X"
        if key in _METAVARS:
            kw["metavar"] = _METAVARS[key]
        if s.kind == "choice":
            kw["choices"] = s.choices
        t.add_argument(flag, **kw)
    t.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", formatter_class=_Formatter,
                       help="held-out ELBO and importance-sampled ln p(x) of a run",
                       description="The run's held-out split: the ELBO at β = 1 and ln p(x) by importance "
                                   "sampling, written to RUN/evaluation.json.")
    e.add_argument("run", type=_path, help="a run directory made by 'npvae train'")
    e.add_argument("--n-samples", dest="n_samples", type=_bounded(int, 1, 1_000_000), default=1000,
                   metavar="K", help="importance samples per example (default: 1000)")
    e.add_argument("--max-examples", dest="max_examples", type=_bounded(int, 1), default=2000,
                   metavar="N", help="evaluate the first N held-out examples (default: 2000)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", formatter_class=_Formatter, help="draw from a trained model",
                       description="Draw x ~ p(x|z), z ~ N(0, I), in the data's own units: a figure "
                                   "(images, or feature marginals and pairs against the data) or an .npy array.")
    s.add_argument("run", type=_path, help="a run directory made by 'npvae train'")
    s.add_argument("--n", type=_bounded(int, 1, 100_000), default=64, metavar="N",
                   help="how many samples (default: 64)")
    s.add_argument("--seed", type=_bounded(int, 0, 2**63 - 1), default=0, metavar="N",
                   help="seeds the draws (default: 0)")
    s.add_argument("--mean", action="store_true",
                   help="with an .npy --out: the decoder means E[x|z] instead of draws (default: draws)")
    s.add_argument("--out", type=_path, metavar="FILE",
                   help="a .png (a figure) or .npy (the samples) path (default: RUN/samples.png)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sample)

    g = sub.add_parser("gradcheck", formatter_class=_Formatter,
                       help="finite-difference check of a model's gradients",
                       description="Build a small float64 model, and compare every analytic gradient of its "
                                   "loss with a 4th-order central difference. Exit code 0 when all agree.")
    g.add_argument("--inputs", type=_bounded(int, 1, 4096), default=6, metavar="N",
                   help="data dimension D (default: 6)")
    g.add_argument("--latent", type=_bounded(int, 1, 256), default=2, metavar="N",
                   help="latent dimension J (default: 2)")
    g.add_argument("--hidden", default="5", metavar="WIDTHS",
                   help="hidden widths, e.g. 5 or 8,4; 'none' for linear (default: 5)")
    g.add_argument("--activation", choices=S.ACTIVATIONS,
                   help="the hidden layers' activation, for dense layers (default: tanh)")
    g.add_argument("--layer", choices=S.LAYERS, default="dense",
                   help="dense, or gated: (x W + b) ⊙ sigmoid(x V + c) (default: dense)")
    g.add_argument("--likelihood", choices=S.LIKELIHOODS, default="bernoulli",
                   help="p(x|z) of the model; the data x is drawn to fit it (default: bernoulli)")
    g.add_argument("--sigma", metavar="SIGMA", help="gaussian only: a number > 0, 'learned' or 'per_example' (default: 1.0)")
    g.add_argument("--objective", choices=S.EXACT_GRADIENT_OBJECTIVES, default="elbo",
                   help="the loss whose gradient is checked: the negative ELBO, or the negative IWAE "
                        "bound with --n-samples K (default: elbo; iwae-dreg and iwae-stl are not the "
                        "gradients of their loss, and are checked against their surrogates in the test "
                        "suite)")
    g.add_argument("--n-samples", dest="n_samples", type=_bounded(int, 1, 64), default=1, metavar="K",
                   help="the iwae objective's K (default: 1)")
    g.add_argument("--batch", type=_bounded(int, 1, 256), default=4, metavar="N",
                   help="examples in the checked batch (default: 4)")
    g.add_argument("--beta", type=_bounded(float, 0.0, 1e6), default=1.0, metavar="X",
                   help="KL weight β (default: 1.0)")
    g.add_argument("--seed", type=_bounded(int, 0, 2**63 - 1), default=0, metavar="N",
                   help="seeds the weights, the data x and the noise ε (default: 0)")
    g.add_argument("--quiet", action="store_true", help="no progress bar over the elements checked")
    g.set_defaults(func=cmd_gradcheck)
    return p


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


# train's stop flag: a first Ctrl-C or SIGTERM before training only sets it (raising inside
# numba's compiler or a data generator would be swallowed, or leave half-written state), and
# the command stops at the next of its safe points; a second stops at once
_STOP = None


def _stop_point():
    if _STOP is not None and _STOP.set:
        raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    global _RANK
    comm = None
    if args.command in ("train", "evaluate"):
        comm = parallel.world()
        _RANK = parallel.rank_of(comm)
    elif _launched_on_another_rank():
        return 0  # sample and gradcheck run once, on rank 0
    compiling.announce(_RANK == 0, bar=not getattr(args, "quiet", False))
    code = _main(args)
    compiling.wait()
    if comm is not None and code not in (0, 130):
        # an error on one rank must not leave the others waiting: stop the whole job
        parallel.abort(comm, code)
    return code


def _launched_on_another_rank() -> bool:
    if not parallel.launched_by_mpi():
        return False
    return any(os.environ.get(v, "0") not in ("", "0") for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"))


def _main(args) -> int:
    # SIGTERM (what batch schedulers send) is a Ctrl-C: training saves and stops cleanly,
    # anything before it stops with a message instead of dying without one
    global _STOP
    in_main = threading.current_thread() is threading.main_thread()
    old_term = None
    if args.command == "train":
        _STOP = InterruptFlag(notice="npvae train: stopping at the next safe point (Ctrl-C again stops at once)")
        _STOP.__enter__()
    elif in_main:
        old_term = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return args.func(args)
    except UsageError as exc:
        _say(f"npvae {args.command}: error: {exc}")
        return 2
    except (KeyboardInterrupt, RuntimeError) as exc:  # Ctrl-C or SIGTERM; for train, before training began
        if isinstance(exc, RuntimeError) and not isinstance(exc.__cause__, KeyboardInterrupt):
            raise  # (Python 3.11 wraps a Ctrl-C during a class's creation in a RuntimeError)
        _say(f"npvae {args.command}: interrupted" + ("; nothing was trained" if args.command == "train" else ""))
        return 130
    except OSError as exc:  # a full disk, a read-only folder: the file, and why
        where = f" {exc.filename}" if exc.filename else ""
        _say(f"npvae {args.command}: error: cannot write or read{where}: {exc.strerror or exc}. "
             "The last good checkpoint, if any, is intact.")
        return 1
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if _STOP is not None:
            _STOP.__exit__(None, None, None)
            _STOP = None


if __name__ == "__main__":
    sys.exit(main())
