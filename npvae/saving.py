"""Writing a model in the checkpoint format: the header, the model's configuration as JSON
(a user's layers by class name and ``config()``), and its parameters.

This is the half of :mod:`npvae.checkpoint` that :class:`npvae.VAE` itself needs (its
``config()`` and ``save()``), in a module of its own below the model: checkpoint.py reads
checkpoints back, which builds a VAE, so it sits above the model and re-exports these names.
The format is described there.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .files import atomic_savez
from .layers import BUILT_IN

FORMAT_VERSION = 1
MAGIC = "npvae-checkpoint"


def _text(s: str) -> np.ndarray:
    return np.array(s)  # a unicode array: loads without pickle


def _missing_config(layer, where: str) -> str:
    name = type(layer).__name__
    return (
        f"{where} ({name}) has no config() method, which saving the model needs: a checkpoint "
        f"names each layer by its class and config(), and loading calls {name}(**config). "
        "Training and evaluating need only init() and forward(); to save (model.save, fit with "
        f"checkpoint_dir, npvae.parallel.train_many), add to class {name} a method config(self) "
        f"that returns the arguments that rebuild the layer as a dict of JSON values, e.g. for a "
        f"layer made as {name}(n_out=64) that keeps self.n_out:\n\n"
        "    def config(self):\n"
        "        return {\"n_out\": self.n_out}\n\n"
        f"and load with npvae.load(path, layers=[{name}]). Nothing has been written.")


def check_class_name(layer, where: str = "a layer") -> None:
    """Raise TypeError when a user's layer class has a built-in layer's name: the checkpoint
    names the class, and it would load as the built-in one."""
    name = type(layer).__name__
    if name in BUILT_IN and BUILT_IN[name] is not type(layer):
        raise TypeError(f"{where}: a user's layer class is named {name!r}, like npvae's built-in layer: it "
                        "would load as the built-in one; give the class another name")


def layer_spec(layer, where: str = "a layer") -> dict:
    """A layer as JSON for a checkpoint: its class name and ``config()``; a TypeError that says
    what to add when the layer has no ``config()`` (``where`` names it: "encoder[0]")."""
    check_class_name(layer, where)
    name = type(layer).__name__
    config = getattr(layer, "config", None)
    if not callable(config):
        raise TypeError(_missing_config(layer, where))
    cfg = config()
    if not isinstance(cfg, dict):
        raise TypeError(f"{where}: {layer!r}.config() must return a dict, got {type(cfg).__name__}")
    return {"type": name, **cfg}


def model_arrays(model, kind: str = "model") -> dict:
    """The arrays a model is written as: the header, ``config`` (``model.config()`` as JSON
    text: asked for first, so a model that cannot be saved raises before anything is written)
    and ``param/<name>``."""
    config = json.dumps(model.config())
    arrays = {"__npvae__": _text(MAGIC), "__version__": np.array(FORMAT_VERSION),
              "__kind__": _text(kind), "config": _text(config)}
    for name, p in model.params.items():
        arrays[f"param/{name}"] = p
    return arrays


def save_model(model, path) -> Path:
    """Save the model's configuration and parameters to ``path`` (.npz), atomically."""
    return atomic_savez(path, model_arrays(model))


__all__ = ["FORMAT_VERSION", "MAGIC", "check_class_name", "layer_spec", "model_arrays", "save_model"]
