"""npvae: a variational autoencoder in NumPy with hand-derived, verified gradients.

    >>> import numpy as np, npvae
    >>> model = npvae.VAE(784, 20, hidden=(400,))
    >>> loss, grads, parts = model.loss_and_grad(x, rng=np.random.default_rng(0))
"""
from . import activations, distributions, layers, likelihoods, ops
from .model import VAE

__all__ = ["VAE", "activations", "distributions", "layers", "likelihoods", "ops"]
__version__ = "0.1.0"
