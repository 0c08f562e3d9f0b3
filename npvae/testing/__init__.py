"""Verification tools for npvae and for users' own layers.

* :func:`check_gradients`: central finite differences in float64, with a per-parameter table
  of maximum and mean relative errors; raises :class:`GradientCheckError` on failure.
* :func:`check_layer`: the same for a layer object (built-in or your own), on its own init.
* :mod:`npvae.testing.strategies`: hypothesis strategies (needs the ``test`` extra).
"""
from .gradcheck import GradientCheckError, GradientReport, ParamError, check_gradients, check_layer

__all__ = ["check_gradients", "check_layer", "GradientCheckError", "GradientReport", "ParamError"]
