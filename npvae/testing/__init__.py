"""Verification tools for npvae and for users' own layers.

* :func:`check_gradients`: central finite differences in float64, with a per-parameter table
  of maximum and mean relative errors; raises :class:`GradientCheckError` on failure.
* :mod:`npvae.testing.strategies`: hypothesis strategies (needs the ``test`` extra).
"""
from .gradcheck import GradientCheckError, GradientReport, ParamError, check_gradients

__all__ = ["check_gradients", "GradientCheckError", "GradientReport", "ParamError"]
