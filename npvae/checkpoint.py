"""Checkpoints: ``.npz`` files that never hold a pickle, written atomically.

A file holds plain arrays only:

* ``__npvae__`` = "npvae-checkpoint", ``__version__`` = FORMAT_VERSION, ``__kind__`` =
  "model" or "training";
* ``config``: the model's constructor arguments as JSON text;
* ``param/<name>``: every parameter;
* a training checkpoint adds ``optim/<key>`` (the optimizer state), ``meta`` (JSON: optimizer
  and β-schedule configs, the RNG state, the epoch and step, the history, ...) and whatever
  arrays the trainer needs to continue bit for bit (``perm``, ``best/<name>``).

Every load uses ``allow_pickle=False``; anything unexpected raises :class:`CheckpointError`
(a ValueError) naming the file and the problem.  Writes go to a temporary file in the same
folder, are flushed to disk, then renamed over the target: a crash mid-write leaves the
previous file as it was.

Where the code lives: writing a model (``save_model``, ``model_arrays``, ``layer_spec``) is in
:mod:`npvae.saving` and the atomic writers in :mod:`npvae.files`, both below
:class:`npvae.VAE`, which saves itself with them; this module reads checkpoints back, which
builds a VAE, so it imports the model (and re-exports those names: ``npvae.checkpoint.*``
is the whole format).  The modules import each other one way only.
"""
from __future__ import annotations

import json

import numpy as np

from . import files
from .files import atomic_save_npy, atomic_savez, atomic_write, atomic_write_text  # noqa: F401
from .layers import BUILT_IN
from .model import VAE, parameter_count, spec_parameter_count
from .saving import FORMAT_VERSION, MAGIC, layer_spec, model_arrays, save_model  # noqa: F401


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated, of the wrong version or shape."""


HEADER_BYTES = 1 << 16    # __npvae__, __version__, __kind__, config: short texts
META_BYTES = 64 << 20     # a training checkpoint's meta (holds the history)
PREFIXES = ("param/", "optim/", "best/")
SMALL_MODEL = 1 << 20     # parameters: built even when the file holds fewer, to name what is missing


def read(path, *, prefixes=PREFIXES) -> dict:
    """The arrays of a checkpoint that npvae uses, after checking its header; raises
    CheckpointError.

    Only the header members, ``config``, ``meta``, ``perm`` and the members under
    ``prefixes`` are read, one at a time; anything else in the archive is never touched.
    Every member must be stored uncompressed (as npvae writes them), so no member can
    declare more bytes than the file holds, and each .npy header is checked against its
    member's size before anything is allocated (:mod:`npvae.files`)."""
    try:
        kind = files.sniff(files.regular_file(path, "checkpoint"))
    except files.FileFormatError as exc:
        raise CheckpointError(str(exc)) from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from None
    if kind != "zip":
        raise CheckpointError(f"{path} is not an npvae checkpoint: it is {files.describe(kind)}, "
                              "and a checkpoint is an .npz (zip) archive")
    try:
        with files.NpzReader(path, what="checkpoint") as z:
            if not z.stored_only():
                raise CheckpointError(f"checkpoint {path} has compressed members; npvae writes and "
                                      "reads uncompressed checkpoints only")
            head = {}
            for key in ("__npvae__", "__version__", "__kind__"):
                if key not in z:
                    what = "has no readable format version" if key == "__version__" else \
                        f"is not an npvae checkpoint (no '{key}' member)"
                    raise CheckpointError(f"checkpoint {path} {what}")
                head[key] = z.read(key, max_bytes=HEADER_BYTES)
            if head["__npvae__"].dtype.kind != "U" or str(head["__npvae__"]) != MAGIC:
                raise CheckpointError(f"{path} is not an npvae checkpoint (no '{MAGIC}' header)")
            try:
                version = int(head["__version__"])
            except (TypeError, ValueError):
                raise CheckpointError(f"checkpoint {path} has no readable format version") from None
            if version != FORMAT_VERSION:
                newer = "newer than" if version > FORMAT_VERSION else "older than"
                raise CheckpointError(
                    f"checkpoint {path} has format version {version}, {newer} the version this "
                    f"npvae reads ({FORMAT_VERSION})")
            arrays = dict(head)
            for key, limit in (("config", HEADER_BYTES), ("meta", META_BYTES), ("perm", None)):
                if key in z:
                    arrays[key] = z.read(key, max_bytes=limit) if limit else z[key]
            for name in z.names:
                if name.startswith(tuple(prefixes)):
                    arrays[name] = z[name]
    except files.FileFormatError as exc:
        raise CheckpointError(str(exc)) from None
    return arrays


def json_field(arrays: dict, key: str, path) -> dict:
    try:
        return json.loads(str(arrays[key]))
    except KeyError:
        raise CheckpointError(f"checkpoint {path} lacks the field {key!r}") from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: field {key!r} is not valid JSON ({exc})") from None


def model_from_arrays(arrays: dict, path, layers=()):
    """Rebuild a VAE and check that every stored parameter has the expected name, shape and
    dtype.  ``layers``: the classes of a user's own layers that the config names."""
    cfg = json_field(arrays, "config", path)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("hidden"), list):
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {cfg!r:.200}")
    stored = {k[len("param/"):] for k in arrays if k.startswith("param/")}
    # the size the config declares must be the size the file holds, before building anything
    held = sum(int(arrays[f"param/{k}"].size) for k in stored)
    custom = "encoder" in cfg or "decoder" in cfg
    try:
        if custom:
            declared = spec_parameter_count(cfg["n_inputs"], cfg["n_latent"], cfg.get("encoder"),
                                            cfg.get("decoder"), cfg.get("likelihood", "bernoulli"),
                                            cfg.get("sigma")) or 0
            known = {c.__name__: c for c in layers}
            cfg["encoder"] = layers_from_specs(cfg.get("encoder"), known)
            cfg["decoder"] = layers_from_specs(cfg.get("decoder"), known)
        else:
            declared = parameter_count(cfg["n_inputs"], cfg["n_latent"], tuple(cfg["hidden"]),
                                       cfg.get("likelihood", "bernoulli"), cfg.get("sigma"))
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {exc}") from None
    if declared > max(held, SMALL_MODEL):  # small models are built, for the exact message below
        raise CheckpointError(f"checkpoint {path}: its config declares a model of {declared} "
                              f"parameters, but the file holds {held}")
    try:
        cfg["hidden"] = tuple(cfg["hidden"])
        model = VAE(**cfg)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {exc}") from None
    missing, extra = set(model.params) - stored, stored - set(model.params)
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {path} parameters do not match its config: missing {sorted(missing)}, "
            f"unexpected {sorted(extra)}")
    for name, p in model.params.items():
        a = arrays[f"param/{name}"]
        if a.shape != p.shape or a.dtype != p.dtype:
            raise CheckpointError(
                f"checkpoint {path}: parameter {name!r} has shape {a.shape} and dtype {a.dtype}, "
                f"expected {p.shape} and {p.dtype}")
        if not np.isfinite(a).all():
            raise CheckpointError(f"checkpoint {path}: parameter {name!r} holds NaN or inf")
    for name in model.params:
        model.params[name][...] = arrays[f"param/{name}"]
    return model


def layers_from_specs(specs, custom: dict):
    """Layer objects from their specs; built-in names, then the classes in ``custom``."""
    known = {**BUILT_IN, **custom}
    if not isinstance(specs, list):
        raise ValueError(f"the layers must be a JSON list, got {specs!r:.80}")
    out = []
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            raise ValueError(f"a layer spec must be a JSON object with a 'type', got {spec!r:.80}")
        cls = known.get(spec["type"])
        if cls is None:
            raise ValueError(f"the checkpoint uses a layer class {spec['type']!r} that npvae does not "
                             f"know: pass it to load, npvae.load(path, layers=[{spec['type']}])")
        out.append(cls(**{k: v for k, v in spec.items() if k != "type"}))
    return out


def load(path, *, layers=()):
    """Load a model (from a model or a training checkpoint) without unpickling anything.

    A model built from a user's own layers names each layer's class and ``config()`` in its
    checkpoint; pass those classes, ``npvae.load(path, layers=[MyLayer])``: the class of that
    name is called with the saved config.  Nothing is imported or executed from the file."""
    arrays = read(path, prefixes=("param/",))
    return model_from_arrays(arrays, path, layers)

