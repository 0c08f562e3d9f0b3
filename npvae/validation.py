"""Argument checks shared by every public entry point.

Each check raises TypeError (wrong kind of object or dtype) or ValueError (wrong shape, empty,
non-finite) with a message that names the argument and says what was expected.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .kernels import arrays


def as_float_array(value, name: str, *, dtype, ndim: int | None = None,
                   shape: tuple | None = None, allow_empty: bool = False) -> np.ndarray:
    """``value`` as a C-contiguous array of ``dtype``, after checking kind, shape and finiteness.

    ``shape`` may hold None for a free axis, e.g. (None, 784).  Integer, boolean, complex and
    object arrays are refused: data must be converted to floating point on purpose.
    """
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:  # ragged nested lists and the like
            raise TypeError(f"{name} must be an array of floats, got {type(value).__name__}: {exc}") from None
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if shape is not None:
        if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
            want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not arrays.all_finite(arr):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    return arr


def positive_int(value, name: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    lo = 0 if allow_zero else 1
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


def finite_float(value, name: str, *, min_value: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value}")
    return value


def generator(rng, name: str = "rng") -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{name} must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return rng


def gradient_buffers(out, params: dict, name: str = "out") -> dict:
    """``out`` after checking that it can receive the gradients of ``params``: a dict with
    exactly their keys, each a writeable C-contiguous array of the parameter's shape and dtype
    (a float64 buffer for a float32 model would silently change the arithmetic)."""
    if not isinstance(out, dict):
        raise TypeError(f"{name} must be a dict of gradient arrays keyed like params, got {type(out).__name__}")
    if set(out) != set(params):
        missing, extra = sorted(set(params) - set(out)), sorted(set(out) - set(params))
        raise ValueError(f"{name} must have exactly the keys of params: missing {missing}, unexpected {extra}")
    for k, p in params.items():
        g = out[k]
        if not isinstance(g, np.ndarray) or g.shape != p.shape or g.dtype != p.dtype \
                or not g.flags.c_contiguous or not g.flags.writeable:
            what = (f"{type(g).__name__}" if not isinstance(g, np.ndarray) else
                    f"shape {g.shape}, dtype {g.dtype}, {'C-contiguous' if g.flags.c_contiguous else 'strided'}"
                    f"{'' if g.flags.writeable else ', read-only'}")
            raise ValueError(f"{name}[{k!r}] must be a writeable C-contiguous array of shape {p.shape} and "
                             f"dtype {p.dtype}; got {what}")
    return out
