"""The training step's hot operations behind one tiny dispatch: NumPy reference or numba.

Callers write ``kernels.bias_act_(a, b, code)``; :func:`set_backend` rebinds these names to
the chosen implementation, so no caller ever imports numba.  The backend is chosen by
``npvae.set_backend("numba" | "numpy")`` or the environment variable ``NPVAE_BACKEND``
(read at import); numba is the default.  Every kernel works in place on C-contiguous arrays
and has the same signature in both backends (see numpy_impl for their documentation).

Compiled kernels are cached on disk in npvae's cache folder, never inside the installed
package (:mod:`npvae.kernels.jit` says where, and what happens when it is read-only).
"""
from __future__ import annotations

import os

from . import compiling, numpy_impl  # compiling: says when npvae's kernels compile
from .codes import ACT_CODES, ACT_NAMES

KERNELS = (
    "all_finite", "sum_squares", "bias_act_", "act_backward_bias_grad_", "reparam_kl_", "reparam_kl_backward_",
    "bernoulli_", "continuous_bernoulli_", "gaussian_fixed_", "gaussian_learned_",
    "gaussian_per_example_", "binarize_", "adam_", "sgd_", "standard_normal_",
)
BACKENDS = ("numba", "numpy")
_backend = None


def _module(name):
    if name == "numpy":
        return numpy_impl
    from . import numba_impl
    return numba_impl


def set_backend(name: str) -> None:
    """Use the ``"numba"`` kernels (default) or the ``"numpy"`` reference for training."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    impl = _module(name)
    for k in KERNELS:
        globals()[k] = getattr(impl, k)
    _backend = name


def get_backend() -> str:
    return _backend


def implementation(name: str):
    """The module holding a backend's kernels (for tests that compare the two)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return _module(name)


set_backend(os.environ.get("NPVAE_BACKEND", "numba") or "numba")

__all__ = ["set_backend", "get_backend", "implementation", "ACT_CODES", "ACT_NAMES", *KERNELS]
