"""npvae's compiled kernels and their infrastructure.

- :mod:`npvae.kernels.jit`: numba's ``njit`` with npvae's on-disk cache, and the one set of
  arithmetic flags every kernel is compiled with (:data:`npvae.kernels.jit.ELEMENTWISE`);
- :mod:`npvae.kernels.vmath`: exp, expm1, log1p and tanh as plain arithmetic that LLVM
  vectorises; :mod:`npvae.kernels.sums`: sums in one fixed order on every CPU;
- :mod:`npvae.kernels.gemm` and :mod:`npvae.kernels.blas`: the matrix products of compiled code;
- :mod:`npvae.kernels.step`: the whole training step as one compiled function, assembled
  from the formulas' kernels (each written next to its NumPy reference in the module named
  for its mathematics: :mod:`npvae.activations`, :mod:`npvae.layers`, :mod:`npvae.posterior`,
  :mod:`npvae.likelihoods`, :mod:`npvae.optim`);
- :mod:`npvae.kernels.arrays`: finiteness checks, the normal draws, binarisation;
- :mod:`npvae.kernels.compiling`: says when npvae's kernels compile, and how long it takes.

The kernel backend (:func:`set_backend`): ``"numba"`` (default) runs the formulas' kernels;
``"numpy"`` runs their NumPy references on the engine path, for comparison and teaching
(``NPVAE_BACKEND`` chooses at import).  Each formula module reads :func:`get_backend` to choose
between its two functions; this package imports none of them, so they may import it.

Compiled kernels are cached on disk in npvae's cache folder, never inside the installed
package (:mod:`npvae.kernels.jit` says where, and what happens when it is read-only).
"""
from __future__ import annotations

import os

from . import compiling  # says when npvae's kernels compile
from .codes import ACT_CODES, ACT_NAMES

BACKENDS = ("numba", "numpy")
_backend = "numba"


def set_backend(name: str) -> None:
    """Run the formulas' numba kernels (``"numba"``, the default) or their NumPy references
    (``"numpy"``) on the engine path; the compiled step always runs the kernels."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    return _backend


set_backend(os.environ.get("NPVAE_BACKEND", "numba") or "numba")

__all__ = ["set_backend", "get_backend", "BACKENDS", "ACT_CODES", "ACT_NAMES"]
