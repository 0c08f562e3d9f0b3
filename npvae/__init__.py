"""npvae: a variational autoencoder in NumPy with hand-derived, verified gradients.

    >>> import numpy as np, npvae
    >>> model = npvae.VAE(784, 20, hidden=(400,))
    >>> loss, grads, parts = model.loss_and_grad(x, rng=np.random.default_rng(0))
    >>> history = npvae.fit(model, x, epochs=10, beta=npvae.LinearBeta(5))
"""
from . import (activations, compiled, data, diagnostics, distributions, estimators, layers, likelihoods, metrics,
               ops, optim, parallel, schedules, testing, trace)
from .checkpoint import CheckpointError, load
from .model import VAE
from .optim import SGD, Adam, AdamW, clip_grad_norm
from .schedules import (Constant, ConstantBeta, Cosine, CyclicalBeta, LinearBeta, StepDecay,
                        Warmup)
from .kernels import get_backend, set_backend
from .threads import get_threads, set_threads
from .train import DivergenceError, History, fit

__all__ = [
    "VAE", "fit", "load", "set_backend", "get_backend", "set_threads", "get_threads", "History", "DivergenceError", "CheckpointError",
    "SGD", "Adam", "AdamW", "clip_grad_norm",
    "Constant", "StepDecay", "Cosine", "Warmup", "ConstantBeta", "LinearBeta", "CyclicalBeta",
    "activations", "data", "diagnostics", "metrics", "estimators", "testing", "trace", "distributions", "layers", "likelihoods", "ops", "optim", "schedules",
]
__version__ = "0.1.0"
