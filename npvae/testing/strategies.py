"""Hypothesis strategies for property tests of layers, losses and models.

Shapes are drawn first, then bounded finite arrays of those shapes, as in the npvae test
suite.  Requires the ``test`` extra (hypothesis).
"""
from __future__ import annotations

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:  # pragma: no cover - only without the test extra
    raise ImportError(
        "npvae.testing.strategies needs hypothesis: pip install 'npvae[test]'"
    ) from exc

import numpy as np

from ..activations import ACTIVATIONS


def shapes(*, batch=(1, 8), width=(1, 16)):
    """(batch, width) pairs with both sizes inside the given inclusive ranges."""
    return st.tuples(st.integers(*batch), st.integers(*width))


def arrays(shape, *, low=-3.0, high=3.0, dtype=np.float64):
    """Finite arrays of ``shape`` with elements in [low, high] (no NaN, no inf)."""
    return hnp.arrays(
        dtype, shape,
        elements=st.floats(low, high, allow_nan=False, allow_infinity=False, width=np.dtype(dtype).itemsize * 8),
    )


def unit_arrays(shape, *, dtype=np.float64):
    """Arrays in [0, 1], e.g. Bernoulli targets or grey-level images."""
    return arrays(shape, low=0.0, high=1.0, dtype=dtype)


def activation_names():
    return st.sampled_from(sorted(ACTIVATIONS))


def seeds():
    return st.integers(0, 2**32 - 1)


@st.composite
def dense_params(draw, n_in=None, n_out=None, *, scale=1.0, dtype=np.float64):
    """A {"W": (n_in, n_out), "b": (n_out,)} parameter set with bounded values."""
    n_in = draw(st.integers(1, 16)) if n_in is None else n_in
    n_out = draw(st.integers(1, 16)) if n_out is None else n_out
    return {"W": draw(arrays((n_in, n_out), low=-scale, high=scale, dtype=dtype)),
            "b": draw(arrays((n_out,), low=-scale, high=scale, dtype=dtype))}


@st.composite
def vae_configs(draw, *, likelihoods=("bernoulli", "gaussian", "continuous_bernoulli")):
    """Keyword arguments for a small float64 :class:`npvae.VAE` (widths 1-16, latent 1-6)."""
    n_inputs = draw(st.integers(1, 16))
    n_latent = draw(st.integers(1, 6))
    hidden = tuple(draw(st.lists(st.integers(1, 16), min_size=0, max_size=2)))
    likelihood = draw(st.sampled_from(likelihoods))
    cfg = dict(n_inputs=n_inputs, n_latent=n_latent, hidden=hidden,
               activation=draw(activation_names()), likelihood=likelihood,
               dtype=np.float64, seed=draw(st.integers(0, 2**16)))
    if likelihood == "gaussian":
        cfg["sigma"] = draw(st.sampled_from([0.5, 1.0, "learned", "per_example"]))
    return cfg
