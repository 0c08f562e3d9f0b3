"""Former home of the NumPy references, kept so that ``npvae.ops.<name>`` goes on working.

Each formula now lives in the module named for its mathematics, next to the kernel that runs
it: :mod:`npvae.activations` (bias + activation and their derivative), :mod:`npvae.posterior`
(reparametrisation, KL, Gaussian densities), :mod:`npvae.likelihoods` (each −ln p(x|z)) and
:mod:`npvae.optim` (SGD and Adam updates, Σ g²).  The names below are those functions
themselves, not copies.
"""
from __future__ import annotations

from .activations import activation_backward, bias_activation, bias_grad
from .likelihoods import (bernoulli_nll, cb_log_normaliser, cb_mean, continuous_bernoulli_nll,
                          gaussian_nll)
from .optim import adam_update, sgd_update, sum_of_squares
from .posterior import (gaussian_log_prob, kl_normal, kl_normal_backward, kl_normal_per_dim,
                        reparametrize, reparametrize_backward, standard_normal_log_prob)

__all__ = ["bias_activation", "activation_backward", "bias_grad", "reparametrize", "reparametrize_backward",
           "kl_normal", "kl_normal_per_dim", "kl_normal_backward", "gaussian_log_prob", "standard_normal_log_prob",
           "bernoulli_nll", "gaussian_nll", "cb_log_normaliser", "continuous_bernoulli_nll", "cb_mean",
           "sgd_update", "adam_update", "sum_of_squares"]
