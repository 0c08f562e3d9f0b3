"""The settings of a training run: each one's type, range, default and meaning, and the rules
that say which settings apply together.

Settings come from three layers, later ones winning: the defaults (some depend on the kind of
data: the built-in Ising lattices, Fashion-MNIST images, or a user's table of numbers), a TOML
file (``npvae train --config run.toml``; keys as the long flags with underscores, at the top
level or under ``[train]``), and the command-line flags.  :func:`resolve` checks every value
against :data:`SETTINGS` and refuses, with the reason, a setting given on purpose that would do
nothing in the rest of the configuration (``--sigma`` with a Bernoulli likelihood, say).  A run
directory's ``config.toml`` holds the resolved settings, written with ``tomli-w``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

try:
    import tomllib
except ImportError:  # Python 3.10: the tomli backport, a dependency there
    import tomli as tomllib

import tomli_w

from .files import FileFormatError, regular_file
from .model import parameter_count, spec_parameter_count

ACTIVATIONS = ("relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus", "identity")
LAYERS = ("dense", "gated")
LR_SCHEDULES = ("constant", "cosine")
COSINE_WARMUP_STEPS = 1000  # at most; and at most a tenth of the run
LIKELIHOODS = ("bernoulli", "gaussian", "continuous_bernoulli")
BINARIZE = ("none", "static", "dynamic")
OBJECTIVES = ("elbo", "iwae", "iwae-dreg", "iwae-stl")
EXACT_GRADIENT_OBJECTIVES = ("elbo", "iwae")  # the estimators whose gradient is the loss's own
BUILT_IN = ("ising", "fashion-mnist")
DATA_KINDS = ("ising", "fashion-mnist", "table")
MAX_WIDTH = 1 << 16  # one hidden layer's width; wider models belong in the Python API
MAX_CONFIG_BYTES = 1 << 20


class SettingsError(ValueError):
    """A setting has the wrong type or value, or does not apply: the message says which."""


@dataclass(frozen=True)
class Setting:
    kind: str                  # "int", "float", "str", "bool", "choice", "widths", "sigma"
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple = ()
    above: bool = False        # minimum is exclusive


# The defaults that depend on the data kind.  Tables: chosen by measurement on four synthetic
# data sets (benchmarks/tabular_defaults.md); Ising and Fashion-MNIST: the measured runs in docs/ising.md and benchmarks/README.md.
DEFAULTS_BY_KIND = {
    "ising": {"latent": 2, "hidden": "256", "activation": "relu", "epochs": 30, "batch_size": 64,
              "lr": 1e-3, "beta_warmup": 5.0, "sigma": None},
    "fashion-mnist": {"latent": 20, "hidden": "400", "activation": "relu", "epochs": 10,
                      "batch_size": 128, "lr": 1e-3, "beta_warmup": 5.0, "sigma": None},
    "table": {"latent": 8, "hidden": "64,64", "activation": "tanh", "epochs": 200, "batch_size": 64,
              "lr": 1e-3, "beta_warmup": 5.0, "sigma": "per_example"},
}
COMMON_DEFAULTS = {
    "data": "ising", "data_key": None, "out": None, "likelihood": None, "beta": 1.0, "seed": 0,
    "binarize": None, "objective": "elbo", "n_samples": 1, "val_fraction": 0.2, "layer": "dense",
    "lr_schedule": "constant",
    "free_bits": 0.0, "ising_L": 16, "ising_n_per_T": 200, "plots": True, "resume": False,
    "image_shape": None,
}

SETTINGS: dict[str, Setting] = {
    "data": Setting("str", "'ising' (built-in 2D Ising lattices), 'fashion-mnist', or a "
                           ".npy/.npz/.csv file of numbers (one example per row)"),
    "data_key": Setting("str", "the array to use in an .npz file that holds several (default: "
                               "the file's only array)"),
    "out": Setting("str", "the run directory (default: runs/ and the data's name: runs/ising, "
                          "runs/fashion-mnist, runs/features.csv for --data path/to/features.csv)"),
    "epochs": Setting("int", "passes over the training split", 1, 1_000_000),
    "batch_size": Setting("int", "examples per step", 1, 1_000_000),
    "latent": Setting("int", "latent dimensions J", 1, 4096),
    "hidden": Setting("widths", "comma-separated hidden widths of the encoder, mirrored by the "
                                "decoder, e.g. 400 or 256,128; 'none' for a linear model"),
    "activation": Setting("choice", "hidden-layer activation (of dense layers)", choices=ACTIVATIONS),
    "layer": Setting("choice", "the hidden layers: dense (x W + b, then --activation) or gated "
                               "((x W + b) ⊙ sigmoid(x V + c), the gated MLP of the published "
                               "Fashion-MNIST likelihoods; twice the parameters)", choices=LAYERS),
    "likelihood": Setting("choice", "the decoder's distribution p(x|z) (default: bernoulli for data in [0, 1], "
                                    "gaussian otherwise)", choices=LIKELIHOODS),
    "sigma": Setting("sigma", "Gaussian likelihood only: a fixed σ (a number > 0), 'learned' "
                              "(one σ per feature) or 'per_example' (a decoder head)"),
    "lr": Setting("float", "Adam's learning rate", 0.0, 10.0, above=True),
    "lr_schedule": Setting("choice", "constant (--lr throughout), or cosine: --lr reached by a "
                                     "linear warm-up over the first 1000 steps (at most a tenth of "
                                     "the run), then a cosine down to --lr/10 at the end of --epochs "
                                     "(so a resumed cosine run keeps its --epochs)", choices=LR_SCHEDULES),
    "beta": Setting("float", "the β that the KL weight reaches (after the warm-up)", 0.0, 1e6),
    "beta_warmup": Setting("float", "epochs over which β rises linearly from 0 to --beta "
                                    "(0: β is constant)", 0.0, 1e6),
    "free_bits": Setting("float", "a floor λ on each latent dimension's KL, in nats (0: off)",
                         0.0, 1e6),
    "objective": Setting("choice", "elbo, or iwae (the importance-weighted bound, with "
                                   "--n-samples K; iwae-dreg and iwae-stl: the same bound, the encoder's "
                                   "gradient by DReG or by sticking the landing)", choices=OBJECTIVES),
    "n_samples": Setting("int", "importance samples K of the iwae objectives", 1, 10_000),
    "binarize": Setting("choice", "none, static (once) or dynamic (every step): x ~ "
                                  "Bernoulli(x), for data in [0, 1] (default: dynamic for "
                                  "fashion-mnist, none otherwise)", choices=BINARIZE),
    "val_fraction": Setting("float", "the held-out share of the data, for validation and "
                                     "evaluate", 0.0, 1.0, above=True),
    "seed": Setting("int", "seeds the split, the weights and every draw", 0, 2**63 - 1),
    "ising_L": Setting("int", "built-in data: the Ising lattice side L", 2, 256),
    "ising_n_per_T": Setting("int", "built-in data: configurations per temperature", 2, 1_000_000),
    "image_shape": Setting("str", "a data file's rows are images of this shape, e.g. 28x28 "
                                  "(the plots then show images, not feature marginals; default: "
                                  "none, the rows are tables of features)"),
    "plots": Setting("bool", "write the run's plots (needs the plot extra)"),
    "resume": Setting("bool", "continue the run in --out from its newest checkpoint"),
}
assert set(SETTINGS) == set(COMMON_DEFAULTS) | set(DEFAULTS_BY_KIND["table"])


def data_kind(data: str) -> str:
    return data if data in BUILT_IN else "table"


def default_for(key: str, kind: str):
    if key in COMMON_DEFAULTS:
        return COMMON_DEFAULTS[key]
    return DEFAULTS_BY_KIND[kind][key]


def describe_default(key: str) -> str | None:
    """The default as --help shows it, per data kind where it differs; None where the
    setting's own help says what happens when it is not given."""
    if key in COMMON_DEFAULTS:
        v = COMMON_DEFAULTS[key]
        if isinstance(v, bool):
            return "on" if v else "off"
        return None if v is None else str(v)
    per = {k: DEFAULTS_BY_KIND[k][key] for k in DATA_KINDS}
    if len({str(v) for v in per.values()}) == 1:
        return str(next(iter(per.values())))
    return ", ".join(f"{'tables' if k == 'table' else k}: {'fixed 1.0' if v is None else v}"
                     for k, v in per.items())


# ----------------------------------------------------------------------------------------
# Checking one value
# ----------------------------------------------------------------------------------------
def parse_widths(value) -> tuple[int, ...]:
    """'400' -> (400,), '256,128' -> (256, 128), 'none' or '' -> () (a linear model)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise SettingsError(f"must be comma-separated widths such as 400 or 256,128; got {value!r}")
    text = value.strip().lower()
    if text in ("", "none", "linear"):
        return ()
    parts = [p.strip() for p in text.split(",")]
    if any(not (p.isascii() and p.isdigit()) for p in parts):
        raise SettingsError(f"must be comma-separated positive widths such as 400 or 256,128 "
                            f"(or 'none' for a linear model); got {value!r}")
    widths = tuple(int(p) for p in parts)
    if any(w < 1 or w > MAX_WIDTH for w in widths):
        raise SettingsError(f"widths must lie in 1..{MAX_WIDTH}; got {value!r}")
    return widths


def parse_image_shape(value) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = str(value).lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() and int(p) > 0 for p in parts):
        raise SettingsError(f"must be HEIGHTxWIDTH such as 28x28; got {value!r}")
    return int(parts[0]), int(parts[1])


def check_value(key: str, value):
    """``value`` for ``key``, converted (ints for floats, widths kept as text), or SettingsError."""
    s = SETTINGS[key]
    if value is None:
        return None
    kind = s.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise SettingsError(f"must be true or false; got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"must be a whole number; got {value!r}")
        _check_range(s, value)
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"must be a number; got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise SettingsError(f"must be a finite number; got {value!r}")
        _check_range(s, value)
        return value
    if kind == "choice":
        if value not in s.choices:
            raise SettingsError(f"must be one of {', '.join(s.choices)}; got {value!r}")
        return value
    if kind == "widths":
        parse_widths(value)
        return ",".join(map(str, parse_widths(value))) or "none"
    if kind == "sigma":
        if value in ("learned", "per_example"):
            return value
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise SettingsError(f"must be a number > 0, 'learned' or 'per_example'; got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            raise SettingsError(f"must be a number > 0, 'learned' or 'per_example'; got {value!r}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f"must be a non-empty text; got {value!r}")
        if "\x00" in value:
            raise SettingsError("must not contain a NUL character")
        if key == "image_shape":
            parse_image_shape(value)
        return value
    raise AssertionError(kind)


def _check_range(s: Setting, value):
    lo, hi = s.minimum, s.maximum
    if lo is not None and (value <= lo if s.above else value < lo):
        raise SettingsError(f"must be {'>' if s.above else '>='} {lo:g}; got {value!r}")
    if hi is not None and value > hi:
        raise SettingsError(f"must be <= {hi:g}; got {value!r}")


# ----------------------------------------------------------------------------------------
# TOML files
# ----------------------------------------------------------------------------------------
def read_toml(path) -> dict:
    """The settings in a TOML file (top level, or the ``[train]`` table), unchecked."""
    try:
        path = regular_file(path, "config file")
    except FileFormatError as exc:
        raise SettingsError(str(exc)) from None
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise SettingsError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc}") from None
    if "train" in cfg:
        if not isinstance(cfg["train"], dict) or len(cfg) != 1:
            raise SettingsError(f"config file {path}: [train] must be a table and the only one")
        cfg = cfg["train"]
    unknown = sorted(set(cfg) - set(SETTINGS))
    if unknown:
        raise SettingsError(f"config file {path}: unknown keys {unknown}; allowed: {sorted(SETTINGS)}")
    return cfg


def toml_text(cfg: dict) -> str:
    """The resolved settings as TOML (tomli-w; unset values left out)."""
    body = {k: v for k, v in cfg.items() if v is not None and k in SETTINGS}
    return "# npvae train: the effective settings of this run\n" + tomli_w.dumps({"train": body})


# ----------------------------------------------------------------------------------------
# Resolving the layers
# ----------------------------------------------------------------------------------------
def resolve(flags: dict, config_path=None) -> tuple[dict, set]:
    """(settings, explicit): every setting resolved and checked, and the keys the user chose
    (in the TOML file at ``config_path`` or as flags).

    ``flags`` maps keys to flag values, None where a flag was not given."""
    layered = read_toml(config_path) if config_path is not None else {}
    source = {k: f"{k} in config file {config_path}" for k in layered}
    for k, v in flags.items():
        if v is not None and k in SETTINGS:
            layered[k] = v
            source[k] = f"--{k.replace('_', '-')}"
    checked = {}
    for k, v in layered.items():
        try:
            checked[k] = check_value(k, v)
        except SettingsError as exc:
            raise SettingsError(f"{source[k]} {exc}") from None
    explicit = {k for k, v in checked.items() if v is not None}
    kind = data_kind(checked.get("data") or COMMON_DEFAULTS["data"])
    cfg = {k: checked[k] if checked.get(k) is not None else default_for(k, kind) for k in SETTINGS}
    if kind == "table":
        cfg["data"] = os.path.abspath(os.path.expanduser(cfg["data"]))
    check_combination(cfg, explicit, source)
    return cfg, explicit


def check_combination(cfg: dict, explicit: set, source: dict | None = None) -> None:
    """Refuse a setting chosen on purpose that would do nothing, or that contradicts another."""
    source = source or {}
    name = lambda k: source.get(k, f"--{k.replace('_', '-')}")
    kind = data_kind(cfg["data"])
    iwae = cfg["objective"] != "elbo"
    rules = [
        ("sigma", cfg["likelihood"] not in (None, "gaussian"),
         f"applies to the gaussian likelihood only, and the likelihood is {cfg['likelihood']}"),
        ("data_key", kind != "table" or not cfg["data"].lower().endswith(".npz"),
         "chooses an array in an .npz file, and the data is not an .npz file"),
        ("ising_L", kind != "ising", "applies to the built-in Ising data only"),
        ("ising_n_per_T", kind != "ising", "applies to the built-in Ising data only"),
        ("image_shape", kind != "table", "applies to data files only (the built-in data sets "
                                         "know their image shape)"),
        ("n_samples", not iwae and cfg["n_samples"] != 1,
         "is the iwae objective's K: add --objective iwae (the ELBO uses one sample)"),
        ("beta_warmup", iwae and cfg["beta_warmup"] > 0,
         "does not apply to --objective iwae, a bound on ln p(x) that is never annealed"),
        ("beta", iwae and cfg["beta"] != 1.0, "must be 1 with --objective iwae (a bound on ln p(x))"),
        ("free_bits", iwae and cfg["free_bits"] > 0, "does not apply to --objective iwae"),
        ("activation", cfg["layer"] == "gated", "applies to dense layers, and --layer gated's "
                                                 "(x W + b) ⊙ sigmoid(x V + c) takes none"),
        ("layer", cfg["layer"] == "gated" and parse_widths(cfg["hidden"]) == (),
         "gated makes the hidden layers gated, and --hidden none has none"),
        ("binarize", cfg["likelihood"] == "gaussian" and cfg["binarize"] not in (None, "none"),
         "draws x ~ Bernoulli(x) for data in [0, 1], not for a gaussian likelihood"),
    ]
    for key, conflict, why in rules:
        if key in explicit and conflict:
            raise SettingsError(f"{name(key)} {why}")


def check_model_size(n_inputs: int, cfg: dict, limit: float = 2e8) -> None:
    """Refuse, before building it, a model with more parameters than ``limit``
    (counted by :func:`npvae.model.parameter_count`, or for gated layers
    :func:`npvae.model.spec_parameter_count`, without allocating anything)."""
    hidden = parse_widths(cfg["hidden"])
    sigma = cfg["sigma"] if cfg["likelihood"] == "gaussian" else None
    if cfg["layer"] == "gated":
        specs = [{"type": "GatedDense", "n_out": h} for h in hidden]
        count = spec_parameter_count(n_inputs, cfg["latent"], specs, specs[::-1], cfg["likelihood"], sigma)
    else:
        count = parameter_count(n_inputs, cfg["latent"], hidden, cfg["likelihood"], sigma)
    if count > limit:
        raise SettingsError(f"a model of widths {(n_inputs, *hidden)} -> {cfg['latent']} has {count:.3g} "
                            f"parameters, more than the command line builds ({limit:.0e}); use the "
                            "Python API for such models")
