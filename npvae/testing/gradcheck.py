"""Finite-difference gradient checking over a flat mapping of named float64 parameters.

The derivative of a scalar f along one coordinate θ_i is estimated with the fourth-order
central stencil

    f'(θ) ≈ [8 (f(θ + h) − f(θ − h)) − (f(θ + 2h) − f(θ − 2h))] / (12 h),

whose truncation error is O(h⁴), so h = 1e-3 leaves both truncation (~1e-12) and float64
round-off (~1e-13 |f| / h) far below the tolerance.  The relative error of element i is

    |g_i − n_i| / max(|g_i|, |n_i|, floor),    floor = 1e-5 · max(|f|, 1) by default,

so that gradients that are exactly or nearly zero are compared on the scale of the
round-off of f, not divided by zero: with rtol = 1e-6 an element passes when its absolute
error is below 1e-11 max(|f|, 1).  That is the measured resolution of these differences for
a loss of order max(|f|, 1) (its terms can cancel, so |f| alone is too small a scale); any
error larger than that, on any element, fails.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..progress import bar as progress_bar


class GradientCheckError(AssertionError):
    """Raised when an analytic gradient disagrees with finite differences."""

    def __init__(self, report: "GradientReport"):
        self.report = report
        super().__init__(f"gradient check failed (rtol={report.rtol:g}):\n{report}")


@dataclass
class ParamError:
    name: str
    shape: tuple
    max_rel: float
    mean_rel: float
    max_abs: float
    worst_index: tuple
    analytic: float
    numeric: float


@dataclass
class GradientReport:
    rows: list[ParamError] = field(default_factory=list)
    rtol: float = 1e-6
    loss: float = float("nan")

    @property
    def max_rel(self) -> float:
        return max((r.max_rel for r in self.rows), default=0.0)

    @property
    def ok(self) -> bool:
        return all(r.max_rel <= self.rtol for r in self.rows)

    def __str__(self) -> str:
        width = max([len(r.name) for r in self.rows] + [9])
        lines = [f"{'parameter':<{width}}  {'shape':>12}  {'max rel':>9}  {'mean rel':>9}  "
                 f"{'analytic':>12}  {'numeric':>12}  at  ok"]
        for r in self.rows:
            lines.append(
                f"{r.name:<{width}}  {str(r.shape):>12}  {r.max_rel:9.2e}  {r.mean_rel:9.2e}  "
                f"{r.analytic:12.5e}  {r.numeric:12.5e}  {r.worst_index}  "
                f"{'yes' if r.max_rel <= self.rtol else 'NO'}"
            )
        return "\n".join(lines)


def _value_and_grads(out):
    if isinstance(out, tuple):
        return float(out[0]), (out[1] if len(out) > 1 else None)
    return float(out), None


def check_gradients(fn, params, *, grads=None, h=1e-3, rtol=1e-6, floor=None,
                    names=None, raise_on_failure=True, progress="auto") -> GradientReport:
    """Compare the analytic gradient of ``fn`` with central finite differences.

    ``fn(params)`` returns the scalar loss, or a tuple ``(loss, grads, ...)`` as
    ``VAE.loss_and_grad`` does.  ``params`` is a mapping from names to float64 arrays that
    ``fn`` reads; the checker perturbs them *in place*, one element at a time, and restores
    every value exactly.  ``grads`` gives the analytic gradients when ``fn`` returns only the
    loss.  ``names`` restricts the check to some parameters.

    Returns a :class:`GradientReport` with the maximum and mean relative error per parameter;
    raises :class:`GradientCheckError` (an AssertionError) with that table when any error
    exceeds ``rtol`` and ``raise_on_failure`` is true.  ``progress``: a bar over the
    elements (four evaluations of ``fn`` each) with an ETA on a terminal: ``"auto"`` (the
    default) once the check has lasted 2 s, True at once, False never.
    """
    for name, p in params.items():
        if not isinstance(p, np.ndarray) or p.dtype != np.float64:
            raise TypeError(
                f"parameter {name!r} must be a float64 ndarray for a finite-difference check, "
                f"got {getattr(p, 'dtype', type(p).__name__)}"
            )
    f0, g_out = _value_and_grads(fn(params))
    grads = g_out if grads is None else grads
    if grads is None:
        raise ValueError("fn returned only a loss: pass the analytic gradients as grads=")
    grads = {k: np.array(v, dtype=np.float64) for k, v in grads.items()}
    if floor is None:
        floor = 1e-5 * max(abs(f0), 1.0)
    report = GradientReport(rtol=rtol, loss=f0)
    checked = list(params if names is None else names)
    bar = progress_bar(progress, sum(int(np.size(params[n])) for n in checked if n in params),
                       "gradient check", "element")
    try:
        for name in checked:
            p = params[name]
            if name not in grads:
                raise KeyError(f"no analytic gradient for parameter {name!r}")
            g = grads[name]
            if g.shape != p.shape:
                raise ValueError(f"gradient of {name!r} has shape {g.shape}, parameter has {p.shape}")
            num = np.empty_like(g)
            flat = p.reshape(-1)  # a view: writes go to the live array
            for i in range(flat.size):
                orig = flat[i]
                vals = []
                try:
                    for step in (h, -h, 2 * h, -2 * h):
                        flat[i] = orig + step
                        vals.append(_value_and_grads(fn(params))[0])
                finally:
                    flat[i] = orig
                num.reshape(-1)[i] = (8 * (vals[0] - vals[1]) - (vals[2] - vals[3])) / (12 * h)
                bar.update()
            abs_err = np.abs(g - num)
            rel = abs_err / np.maximum(np.maximum(np.abs(g), np.abs(num)), floor)
            if rel.size:
                worst = np.unravel_index(int(np.argmax(rel)), rel.shape)
                row = ParamError(name, p.shape, float(rel.max()), float(rel.mean()),
                                 float(abs_err.max()), tuple(int(i) for i in worst),
                                 float(g[worst]), float(num[worst]))
            else:
                row = ParamError(name, p.shape, 0.0, 0.0, 0.0, (), 0.0, 0.0)
            report.rows.append(row)
    finally:
        bar.close()
    if raise_on_failure and not report.ok:
        raise GradientCheckError(report)
    return report


def check_layer(layer, n_in: int, *, batch: int = 4, seed: int = 0, x=None, rtol: float = 1e-6,
                raise_on_failure: bool = True) -> GradientReport:
    """Check a layer object against central differences, in float64.

    ``layer`` follows the layer contract (``init(rng, n_in)``, ``forward(params, x) -> (y,
    backward)``, ``backward(dy) -> (dx, grads)``).  Its parameters are drawn by its own
    ``init``, the input x (batch, n_in) and an upstream gradient dy from a seeded normal
    (or pass ``x``); the scalar L = Σ y ⊙ dy has ∂L/∂y = dy, so every output is checked,
    and so is dx (under the name ``"x"``)."""
    rng = np.random.default_rng(seed)
    n_out, params = layer.init(rng, n_in)
    params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    if "x" in params:
        raise ValueError("a layer parameter may not be called 'x' (the name of the input here)")
    x = rng.standard_normal((batch, n_in)) if x is None else np.array(x, dtype=np.float64)
    dy = rng.standard_normal((x.shape[0], int(n_out)))
    names = list(params)

    def fn(q):
        y, backward = layer.forward({k: q[k] for k in names}, q["x"])
        y = np.asarray(y)
        if y.shape != dy.shape:
            raise ValueError(f"{layer!r}.forward returned shape {y.shape}; init said {dy.shape}")
        dx, grads = backward(dy)
        return float(np.sum(y * dy)), {"x": dx, **{k: grads[k] for k in names}}

    return check_gradients(fn, {**params, "x": x}, rtol=rtol, raise_on_failure=raise_on_failure)
