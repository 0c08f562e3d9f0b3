"""Gradient-flow inspection: every named intermediate of one training step.

``VAE.loss_and_grad(x, eps=..., trace=True)`` runs the engine's step (ELBO or IWAE) with a
recorder: each forward value and each backward gradient is copied under a name as it is
computed.  It is the training step itself, not a second implementation, so what it shows
is exactly what training computes.

Names, in the order they are computed:

    x, eps                                   the inputs
    <layer>.pre, <layer>.out                 a = h W + b and f(a), for every dense layer
                                             (<layer>.out only, for other layers)
    mu, logvar, sigma, z                     the posterior and the sample z = μ + σ ε
    decoder.out (and decoder.out_logvar)     the decoder's output heads
    reconstruction, kl                       per example: −ln p(x|z) and KL(q || p)
                                             (IWAE: reconstruction (K, B), log_weights, weights)
    loss                                     mean(reconstruction) + β mean(kl), or −mean L_K
    grad.decoder.out, ...                    dL/d(output heads)
    grad.<layer>.out                         dL/d(layer output), backwards
    grad.z, grad.mu, grad.logvar             through the sample and the KL
    grad.param.<name>                        dL/d(parameter)
"""
from __future__ import annotations

import numpy as np



class Trace(dict):
    """An ordered mapping name -> array, printed as a table of names, shapes and values.
    Called as ``trace(name, value)`` it records a copy: the engine's ``record`` hook."""

    def __call__(self, name, value):
        self[name] = np.array(value, copy=True)

    def __str__(self):
        lines = []
        with np.printoptions(precision=6, suppress=True, linewidth=100):
            for name, value in self.items():
                arr = np.asarray(value)
                body = np.array2string(arr, prefix=" " * 40)
                lines.append(f"{name:28s} {str(arr.shape):10s} {body}")
        return "\n".join(lines)

    def names(self):
        return list(self)
