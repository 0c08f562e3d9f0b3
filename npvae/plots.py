"""Plots of a run, written as PNG files (matplotlib, the optional ``plot`` extra).

Every figure function takes an output path and returns it.  What is drawn depends on the
kind of data, which the caller states (nothing is guessed from the number of inputs):

* images (``image_shape`` = (h, w), e.g. Fashion-MNIST (28, 28) or Ising (L, L)): grids of
  images, each framed by a coloured line, with a colour bar saying what the grey level is;
* tabular data (``image_shape=None``, e.g. a user's .npy/.npz/.csv file): histograms of each
  feature and a corner plot, data against model samples, in the data's own units
  (``to_data_units``, e.g. ``Standardizer.inverse``, undoes the standardisation);
* Ising lattices (``ising_L``): also magnetisation and energy of generated configurations
  against the Monte Carlo data (:mod:`npvae.observables` does the arithmetic).

Samples are drawn from the model, x ~ p(x|z) with z ~ N(0, I), not only decoder means.
Latent plots show the latent dimensions with the largest mean KL (the ones the model uses),
and say which they are.

:func:`write_all` writes every plot that fits a run; :func:`samples` the figure of
``npvae sample``.
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np

from . import diagnostics, observables
from .ising import T_CRITICAL, onsager_magnetisation

FRAME_COLOUR = "#f28e2b"   # the separator between the images of a grid
DATA_COLOUR = "tab:blue"
MODEL_COLOUR = "tab:orange"
MAX_FEATURES = 16          # features in the histograms, reconstructions and traversals
MAX_PAIRS = 6              # features in the corner plot
MARKERS_UP_TO = 30         # epochs: the training curves mark each epoch up to this many
TEMPERATURE_LABEL = "temperature $T$ ($J/k_B$)"


def _plt():
    try:
        import matplotlib  # the optional plot extra
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'npvae[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # the optional plot extra, after its backend is chosen
    return plt


def _suptitle(fig, text, **kw):
    """A figure title wrapped to the figure's width (about 12 characters an inch at 10 pt)."""
    width = max(20, int(fig.get_figwidth() * 12))
    kw.setdefault("fontsize", 10)
    return fig.suptitle("\n".join(textwrap.wrap(text, width)), **kw)


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


# ----------------------------------------------------------------------------------------
# What kind of data: the caller decides
# ----------------------------------------------------------------------------------------
def image_shape_for(n_inputs, is_image=None):
    """The image shape (s, s) of rows of ``n_inputs`` values, or None for tabular data.

    ``is_image=True`` (Ising lattices, Fashion-MNIST): (s, s), s = √n_inputs (ValueError when
    n_inputs is not a square: pass the shape itself then).  ``is_image=False`` (a user's
    .npy/.npz/.csv file): None, whatever n_inputs is.  ``is_image=None`` is the old guess,
    kept for old callers: an image when n_inputs is a perfect square (so 16 features would
    become 4×4 images; new code passes True or False)."""
    n_inputs = int(n_inputs)
    s = int(round(math.sqrt(n_inputs)))
    square = s * s == n_inputs
    if is_image is None:
        return (s, s) if square else None
    if not is_image:
        return None
    if not square:
        raise ValueError(f"{n_inputs} inputs are not a square image: pass image_shape=(h, w)")
    return (s, s)


def _check_shape(image_shape, n_inputs):
    h, w = (int(v) for v in image_shape)
    if h * w != n_inputs:
        raise ValueError(f"image_shape {(h, w)} does not hold {n_inputs} inputs")
    return h, w


def _units(a, to_data_units):
    """a (n, D) as float64 in the data's units."""
    a = np.asarray(a, dtype=np.float64)
    if to_data_units is not None and a.size:
        a = np.asarray(to_data_units(a), dtype=np.float64)
    return a


def draw_samples(model, n=64, *, seed=0, to_data_units=None) -> np.ndarray:
    """n configurations from the model, x ~ p(x|z) with z ~ N(0, I), in data units: (n, D)."""
    return _units(model.sample(n, np.random.default_rng(seed), mean=False), to_data_units)


# ----------------------------------------------------------------------------------------
# Image grids
# ----------------------------------------------------------------------------------------
def _grid(images, image_shape, ncols, pad=1):
    """Images (n, h·w) on a canvas of ``ncols`` columns, with ``pad`` pixels of frame around
    each; the frame is masked, and drawn in FRAME_COLOUR."""
    n = len(images)
    nrows = max(1, math.ceil(n / ncols))
    h, w = image_shape
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad), np.nan)
    for k, img in enumerate(images):
        r, c = divmod(k, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y:y + h, x:x + w] = np.asarray(img, dtype=np.float64).reshape(h, w)
    return np.ma.masked_invalid(canvas)


def _show_grid(fig, ax, canvas, vmin, vmax, label, binary=False, spins=False):
    plt = _plt()
    cmap = plt.get_cmap("gray").with_extremes(bad=FRAME_COLOUR)
    im = ax.imshow(canvas, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cb.set_label(label)
    if binary:
        cb.set_ticks([vmin, vmax], labels=["−1", "+1"] if spins else None)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    return im


def _value_range(model, *arrays):
    """(vmin, vmax) of the grey scale: [0, 1] for the Bernoulli likelihoods, else the 0.5
    and 99.5 percentiles of the values shown."""
    if model.likelihood_name in ("bernoulli", "continuous_bernoulli"):
        return 0.0, 1.0
    return _robust_range(*arrays)


def _labels(model, to_data_units, spins=False):
    """Colour-bar labels: (decoder mean, draw, data); ``spins``: Ising lattices, whose x_i = 1
    is the spin s_i = +1 and x_i = 0 the spin −1."""
    if spins:
        return "$p(s_i = +1 \\mid z)$", "$s_i \\sim p(s \\mid z)$  (±1)", "spin $s_i = \\pm 1$"
    if model.likelihood_name == "bernoulli":
        return "p(x_i = 1 | z)", "x_i ~ p(x|z)  (0 or 1)", "pixel value x_i"
    units = " (data units)" if to_data_units is not None else ""
    return f"E[x_i | z]{units}", f"x_i ~ p(x|z){units}", f"pixel value x_i{units}"


def prior_samples(model, image_shape, path, n=64, seed=0, *, data=None, to_data_units=None, spins=False):
    """Images generated from the prior, side by side:

    left, the decoder means E[x|z] (for Bernoulli pixels p(x_i = 1 | z)) for z ~ N(0, I);
    middle, one draw x ~ p(x|z) for each of the same z (what the model generates);
    right (when ``data`` is given, in model units), as many data images for comparison,
    spread evenly over the rows of ``data`` (so sorted data shows all its kinds).
    Each panel is a framed grid with its own colour bar; ``spins``: Ising lattices, labelled
    as spins s_i = ±1."""
    plt = _plt()
    h, w = _check_shape(image_shape, model.n_inputs)
    means = _units(model.sample(n, np.random.default_rng(seed), mean=True), to_data_units)
    draws = _units(model.sample(n, np.random.default_rng(seed), mean=False), to_data_units)
    panels = [(means, "decoder means " + ("$p(s_i = +1 \\mid z)$" if spins else "E[x|z]") + ", z ~ N(0, I)", 0),
              (draws, ("draws $s \\sim p(s \\mid z)$" if spins else "draws x ~ p(x|z)") + ", same z", 1)]
    if data is not None and len(data):
        data = np.asarray(data)
        rows = np.unique(np.linspace(0, len(data) - 1, min(n, len(data))).round().astype(int))
        panels.append((_units(data[rows], to_data_units), "data", 2))
    vmin, vmax = _value_range(model, *(p[0] for p in panels))
    labels = _labels(model, to_data_units, spins)
    ncols = int(math.ceil(math.sqrt(n)))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 6.0), squeeze=False)
    binary = model.likelihood_name == "bernoulli"
    for ax, (imgs, title, kind) in zip(axes[0], panels):
        is_binary = binary and kind == 1 or (kind == 2 and binary and _is_binary(imgs))
        _show_grid(fig, ax, _grid(imgs, (h, w), ncols), vmin, vmax, labels[kind], is_binary, spins)
        ax.set_title(f"{title}  ({len(imgs)})")
    fig.suptitle("what the model generates" + (", next to data" if len(panels) == 3 else ""))
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, path)


def _is_binary(a):
    a = np.asarray(a)
    return a.size > 0 and bool(np.all((a == 0) | (a == 1)))


def _image_reconstructions(model, x, image_shape, path, n, to_data_units, spins=False):
    plt = _plt()
    h, w = _check_shape(image_shape, model.n_inputs)
    x = np.asarray(x[:n])
    k = len(x)
    rec = _units(model.reconstruct(x), to_data_units)
    xd = _units(x, to_data_units)
    vmin, vmax = _value_range(model, xd, rec)
    canvas = _grid(np.concatenate([xd, rec]), (h, w), k)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * k + 2.2), 3.4))
    labels = _labels(model, to_data_units, spins)
    mean_label = labels[0].replace("| z", "| z = μ(x)").replace("\\mid z", "\\mid z = \\mu(x)")
    data_label = "spin $s_i$ (black −1, white +1)" if spins else labels[2]
    _show_grid(fig, ax, canvas, vmin, vmax, f"data: {data_label};\nreconstruction: {mean_label}")
    ax.set_yticks([1 + h / 2, 2 + h + h / 2], ["data", "reconstruction\ndecode(μ(x))"])
    ax.tick_params(left=False)
    ax.set_title(f"{k} held-out examples (top) and their reconstructions (bottom)")
    fig.tight_layout()
    return _save(fig, path)


def _image_traversal(model, image_shape, path, dims, kl, values, to_data_units, spins=False):
    plt = _plt()
    h, w = _check_shape(image_shape, model.n_inputs)
    rows = []
    for d in dims:
        z = np.zeros((len(values), model.n_latent), dtype=model.dtype)
        z[:, d] = values
        rows.append(_units(model.decode(z), to_data_units))
    imgs = np.concatenate(rows)
    vmin, vmax = _value_range(model, imgs)
    canvas = _grid(imgs, (h, w), len(values))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(values) + 3.0), 0.9 * len(dims) + 1.6))
    _show_grid(fig, ax, canvas, vmin, vmax, _labels(model, to_data_units, spins)[0])
    ax.set_yticks([1 + r * (h + 1) + h / 2 for r in range(len(dims))],
                  [_dim_label(d, kl) for d in dims])
    ax.set_xticks([1 + c * (w + 1) + w / 2 for c in range(len(values))],
                  [f"{v:+.1f}" for v in values])
    ax.tick_params(left=False, bottom=False)
    ax.set_xlabel("value of the latent coordinate (the others at 0)")
    ax.set_title("latent traversal: decoder mean as one latent coordinate sweeps, by KL")
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------------------
# Latent space
# ----------------------------------------------------------------------------------------
def top_kl_dims(model, x, k=2):
    """The ``k`` latent dimensions with the largest mean KL over x, largest first (ties: the
    lower index first), and the KL of every dimension: (dims (min(k, J),), kl (J,)) in nats."""
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged model: KL inf, shown as such
        kl = np.asarray(diagnostics.kl_per_dim(model, x), dtype=np.float64)
    order = np.argsort(-kl, kind="stable")
    return order[:min(int(k), len(kl))], kl


def _dim_label(d, kl, prefix=""):
    text = f"{prefix}$z_{{{d}}}$"
    return text if kl is None else f"{text} (KL {kl[d]:.2f} nats)"


def latent_scatter(model, x, labels, path, label_name="label"):
    """Posterior means μ(x) of held-out data in the two latent dimensions with the largest
    mean KL (the axes say which, and their KL), coloured by label (a colour bar, or a legend
    for a few classes).  With one latent dimension: μ against the label (or its histogram)."""
    plt = _plt()
    x = np.asarray(x)
    mu, _ = model.encode(x)
    mu = mu.astype(np.float64)
    dims, kl = top_kl_dims(model, x, 2)
    labels = None if labels is None else np.asarray(labels)
    if labels is not None and len(labels) != len(x):
        raise ValueError(f"{len(labels)} labels for {len(x)} examples")
    fig, ax = plt.subplots(figsize=(6, 5))
    if model.n_latent == 1:
        if labels is None:
            ax.hist(mu[np.isfinite(mu[:, 0]), 0], bins=30, color=DATA_COLOUR)
            ax.set(xlabel=_dim_label(0, kl, "μ of "), ylabel="examples")
        else:
            ax.scatter(labels, mu[:, 0], s=6, alpha=0.5, color=DATA_COLOUR)
            ax.set(xlabel=label_name, ylabel=_dim_label(0, kl, "μ of "))
        ax.set_title("latent means of held-out data (one latent dimension)")
    else:
        a, b = mu[:, dims[0]], mu[:, dims[1]]
        values = None if labels is None else np.unique(labels)
        numeric = labels is not None and labels.dtype.kind in "biuf"
        categorical = labels is not None and len(values) <= 10 and (
            not numeric or bool(np.all(np.mod(values.astype(np.float64), 1) == 0)))
        if labels is None or not (numeric or categorical):
            ax.scatter(a, b, s=5, color=DATA_COLOUR)
        elif categorical:
            cmap = plt.get_cmap("tab10")
            for i, v in enumerate(values):
                sel = labels == v
                ax.scatter(a[sel], b[sel], s=5, color=cmap(i),
                           label=_class_label(label_name, v, numeric))
            ax.legend(markerscale=3, fontsize=8, loc="best")
        else:
            sc = ax.scatter(a, b, c=labels, s=5, cmap="viridis")
            fig.colorbar(sc, ax=ax, label=label_name)
        ax.set(xlabel=_dim_label(dims[0], kl, "μ of "), ylabel=_dim_label(dims[1], kl, "μ of "))
        ax.set_title(f"latent means of held-out data: the 2 of {model.n_latent} "
                     "dimensions with most KL", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _class_label(label_name, v, numeric):
    """A legend entry: 'garment Coat', or for a numeric label with a unit, 'temperature $T$ (K)',
    'temperature $T$ = 1.5 K'."""
    if not numeric:
        return f"{label_name} {v}"
    name, _, unit = label_name.partition(" (")
    return f"{name} = {v:g} {unit[:-1]}" if unit.endswith(")") else f"{label_name} {v:g}"


def latent_usage(model, x, path):
    """The mean KL of each latent dimension over x, as bars (the dimensions the latent plots
    show in colour): which dimensions carry information and which have collapsed."""
    plt = _plt()
    dims, kl = top_kl_dims(model, x, 2)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.3 * len(kl) + 2.5), 3.8))
    colours = ["tab:gray"] * len(kl)
    for d in dims:
        colours[d] = MODEL_COLOUR
    finite = np.isfinite(kl)
    top = max(float(kl[finite].max()) if finite.any() else 1.0, 1e-3) * 1.1
    heights = np.where(finite, kl, top)  # an infinite (overflowing) KL as a bar to the top
    ax.bar(np.arange(len(kl)), heights, color=colours)
    for j in np.flatnonzero(~finite):
        ax.text(j, top, "inf" if kl[j] > 0 else "nan", ha="center", va="bottom", fontsize=8)
    ax.axhline(0.01, color="k", lw=0.8, ls=":")
    ax.set_xlabel("latent dimension j   (dotted: 0.01 nats, below which a dimension is unused)",
                  fontsize=9)
    ax.set(ylabel="mean KL of $z_j$ (nats)",
           title=f"mean KL per latent dimension over held-out data (total {kl.sum():.2f} nats)\n"
                 f"orange: the {len(dims)} shown in latent_scatter (most KL)")
    ax.title.set_fontsize(10)
    ax.set_xticks(np.arange(len(kl)))
    fig.tight_layout()
    return _save(fig, path)


def latent_traversal(model, image_shape, path, n=9, span=2.5, *, x=None, n_dims=4,
                     to_data_units=None, spins=False):
    """The decoder mean as one latent coordinate sweeps −span..span (the others at 0), one
    row per coordinate: the ``n_dims`` coordinates with the largest mean KL over ``x`` (the
    first ones when x is None), each labelled with its KL.

    Images: a framed grid of decoded images with a colour bar.  Tabular data
    (``image_shape=None``): a heat map per coordinate of each feature's decoded mean, in
    standard deviations of the data from the data's mean (x is needed for that; without it,
    in model units)."""
    values = np.linspace(-span, span, n)
    if x is not None and len(x):
        dims, kl = top_kl_dims(model, x, n_dims)
    else:
        dims, kl = np.arange(min(model.n_latent, n_dims)), None
    if image_shape is not None:
        return _image_traversal(model, image_shape, path, dims, kl, values, to_data_units, spins)
    plt = _plt()
    has_x = x is not None and len(x)
    feats = informative_features(x, MAX_FEATURES) if has_x else np.arange(min(model.n_inputs, MAX_FEATURES))
    if has_x:
        xd = _units(x, to_data_units)[:, feats]
        centre, scale = np.median(xd, axis=0), xd.std(axis=0)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        what = "(E[x_i|z] − data median) / data std"
    else:
        centre, scale, what = 0.0, 1.0, "E[x_i|z] (model units)"
    fig, axes = plt.subplots(1, len(dims), figsize=(max(2.6 * len(dims) + 2.6, 7.0),
                                                    max(0.25 * len(feats) + 2.4, 3.6)),
                             squeeze=False, sharey=True, layout="constrained")
    maps = []
    for ax, d in zip(axes[0], dims):
        z = np.zeros((n, model.n_latent), dtype=model.dtype)
        z[:, d] = values
        dec = (_units(model.decode(z), to_data_units if x is not None else None)[:, feats] - centre) / scale
        maps.append((ax, d, dec.T))
    vmax = max(float(np.nanmax(np.abs(m[2]))) if np.isfinite(m[2]).any() else 1.0 for m in maps)
    vmax = min(max(vmax, 1e-6), 1e6)
    for ax, d, m in maps:
        im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest",
                       extent=(-span - span / (n - 1 or 1), span + span / (n - 1 or 1), len(feats) - 0.5, -0.5))
        ax.set(xlabel="value of " + _dim_label(d, None), title=_dim_label(d, kl))
        ax.title.set_fontsize(10)
    axes[0, 0].set_yticks(np.arange(len(feats)), [f"feature {f}" for f in feats], fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), label=what, fraction=0.04)
    note = (_feature_note(feats, model.n_inputs) if has_x or len(feats) == model.n_inputs else
            f"the first {len(feats)} of {model.n_inputs} features")
    _suptitle(fig, "latent traversal: the decoder mean as one latent coordinate sweeps (the others "
                   f"at 0), by KL; {note}")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------
# Tabular data: data against model samples, in data units
# ----------------------------------------------------------------------------------------
def _robust_range(*arrays, pad=0.0):
    """(lo, hi) spanning the finite values (their 0.5–99.5 percentiles when there are 200 or
    more), widened by ``pad`` of the width on each side; never empty."""
    vals = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays] or [np.zeros(0)])
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return -1.0, 1.0
    if vals.size >= 200:
        lo, hi = (float(v) for v in np.percentile(vals, [0.5, 99.5]))
    else:
        lo, hi = float(vals.min()), float(vals.max())
    if not hi > lo or not math.isfinite(hi - lo):
        lo, hi = float(vals.min()), float(vals.max())
    if not hi > lo or not math.isfinite(hi - lo):
        half = max(abs(lo), 1.0) * 0.05
        return lo - half, hi + half
    width = (hi - lo) * pad
    return lo - width, hi + width


def _density_hist(ax, values, edges, **kw):
    """A density histogram of the finite values inside the edges (nothing when none are)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v >= edges[0]) & (v <= edges[-1])]
    return ax.hist(v, bins=edges, density=bool(v.size), **kw)


def _marker_size(n):
    """Scatter marker area: small for thousands of points, visible for a handful."""
    return float(np.clip(2000.0 / max(n, 1), 3.0, 16.0))


def informative_features(x, k, draws=None):
    """Indices of at most ``k`` features to show, in index order: all of them when there are
    k or fewer, else the k with the largest variance in x (of ``draws`` when x is None or
    empty), variances rounded to a tenth of the largest, ties going to the lower index (so
    features standardised alike keep their order)."""
    a = np.asarray(x if x is not None and len(x) else draws, dtype=np.float64)
    D = a.shape[1]
    if D <= k:
        return np.arange(D)
    with np.errstate(all="ignore"):
        finite = np.where(np.isfinite(a), a, np.nan)
        v = np.nanvar(finite, axis=0) if np.isfinite(finite).any() else np.zeros(D)
    v = np.where(np.isfinite(v), v, 0.0)
    top = float(v.max())
    level = np.round(v / top, 1) if top > 0 and math.isfinite(top) else np.zeros(D)
    return np.sort(np.lexsort((np.arange(D), -level))[:k])


def _feature_note(feats, D, source="the data"):
    if len(feats) == D:
        return f"all {D} features" if D > 1 else "its one feature"
    return f"the {len(feats)} of {D} features that vary most in {source}, named on the panels"


def _tabular_draws(model, x, seed, to_data_units, n=None):
    n = n if n is not None else int(min(max(0 if x is None else len(x), 1000), 5000))
    return draw_samples(model, n, seed=seed, to_data_units=to_data_units)


def _panels(k, width=3.0, height=2.5, ncols=4):
    plt = _plt()
    ncols = min(k, ncols)
    nrows = math.ceil(k / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(width * ncols + 0.4, 6.5), height * nrows + 1.1),
                             squeeze=False)
    for ax in axes.ravel()[k:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:k]


def marginals(model, x, path, *, to_data_units=None, seed=0, max_features=MAX_FEATURES,
              n_samples=None):
    """A histogram per feature in data units (of at most ``max_features``: the ones that vary
    most, :func:`informative_features`): the data x (given in model units; may be None)
    filled, and ``n_samples`` draws x ~ p(x|z), z ~ N(0, I) (default: as many as data rows,
    at least 1000, at most 5000) as an outline, both as densities on the same bins."""
    draws = _tabular_draws(model, x, seed, to_data_units, n_samples)
    data = None if x is None or not len(x) else _units(x, to_data_units)
    feats = informative_features(x, max_features, draws)
    units = "data units" if to_data_units is not None else "model units"
    fig, axes = _panels(len(feats))
    ncols = min(len(feats), 4)
    for i, (ax, f) in enumerate(zip(axes, feats)):
        cols = [draws[:, f]] + ([] if data is None else [data[:, f]])
        edges = np.linspace(*_robust_range(*cols), 31)
        if data is not None:
            _density_hist(ax, data[:, f], edges, color=DATA_COLOUR, alpha=0.45,
                    label=f"data ({len(data)})")
        _density_hist(ax, draws[:, f], edges, histtype="step", lw=1.6,
                color=MODEL_COLOUR, label=f"model x ~ p(x|z) ({len(draws)})")
        ax.set_title(f"feature {f}", fontsize=9)
        ax.tick_params(labelsize=7)
        if i % ncols == 0:
            ax.set_ylabel("probability density", fontsize=8)
        if i + ncols >= len(feats):  # the lowest panel of its column
            ax.set_xlabel(f"value ({units})", fontsize=8)
    # under the panels: inside one it would hide a histogram's tail
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    source = "the data" if data is not None else "the model's draws"
    _suptitle(fig, f"marginal distributions ({units}): data vs samples from the model; "
                   f"{_feature_note(feats, model.n_inputs, source)}")
    fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))
    return _save(fig, path)


def pairs(model, x, path, *, to_data_units=None, seed=0, max_features=MAX_PAIRS, n_samples=None):
    """A corner plot in data units of every feature, or with more than ``max_features`` of
    the ones that vary most (:func:`informative_features`): below the diagonal, each pair of
    features as a scatter of data (blue) and model draws x ~ p(x|z) (orange, ``n_samples``
    of them, by default as many as data points, 200 to 2000); on the diagonal, their
    histograms as densities."""
    plt = _plt()
    data = None if x is None or not len(x) else _units(x, to_data_units)
    n_draw = n_samples or int(min(max(200, 0 if data is None else len(data)), 2000))
    draws = _tabular_draws(model, x, seed, to_data_units, n_draw)
    feats = informative_features(x, max_features, draws)
    k = len(feats)
    fig, axes = plt.subplots(k, k, figsize=(2.3 * k + 1.0, 2.3 * k + 0.6), squeeze=False)
    ranges = [_robust_range(draws[:, f], *([] if data is None else [data[:, f]]), pad=0.03)
              for f in feats]
    for i, fi in enumerate(feats):
        for j, fj in enumerate(feats):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                edges = np.linspace(*ranges[i], 26)
                if data is not None:
                    _density_hist(ax, data[:, fi], edges, color=DATA_COLOUR, alpha=0.45)
                _density_hist(ax, draws[:, fi], edges, histtype="step", lw=1.5,
                        color=MODEL_COLOUR)
                ax.set_yticks([])
            else:
                ax.scatter(draws[:, fj], draws[:, fi], s=_marker_size(len(draws)), alpha=0.4,
                           color=MODEL_COLOUR, rasterized=True)
                if data is not None:  # on top: the reference
                    ax.scatter(data[:, fj], data[:, fi], s=_marker_size(len(data)), alpha=0.5,
                               color=DATA_COLOUR, rasterized=True)
                ax.set_ylim(*ranges[i])
            ax.set_xlim(*ranges[j])
            ax.tick_params(labelsize=7)
            if i == k - 1:
                ax.set_xlabel(f"feature {fj}", fontsize=9)
            else:
                ax.set_xticklabels([])
            if j == 0:
                # the diagonal's histograms share no scale with the rows' features
                ax.set_ylabel(f"feature {fi}" if i > 0 else f"density of feature {fi}", fontsize=9)
            elif i != j:
                ax.set_yticklabels([])
    from matplotlib.lines import Line2D  # the optional plot extra
    handles = [Line2D([], [], ls="", marker="o", color=MODEL_COLOUR,
                      label=f"model x ~ p(x|z) ({len(draws)})")]
    if data is not None:
        handles.insert(0, Line2D([], [], ls="", marker="o", color=DATA_COLOUR, label=f"data ({len(data)})"))
    fig.legend(handles=handles, loc="upper right", fontsize=9, frameon=False)
    units = "data units" if to_data_units is not None else "model units"
    source = "the data" if data is not None else "the model's draws"
    _suptitle(fig, f"pairs of features ({units}; on the diagonal, each one's probability density); "
                   f"{_feature_note(feats, model.n_inputs, source)}", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, path)


def _tabular_reconstructions(model, x, path, to_data_units):
    x = np.asarray(x)
    data = _units(x, to_data_units)
    rec = _units(model.reconstruct(x), to_data_units)
    feats = informative_features(x, MAX_FEATURES)
    fig, axes = _panels(len(feats), 2.8, 2.7)
    for ax, f in zip(axes, feats):
        a, b = data[:, f], rec[:, f]
        lo, hi = _robust_range(a, b, pad=0.05)
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--")
        ax.scatter(a, b, s=_marker_size(len(a)), alpha=0.5, color=DATA_COLOUR, rasterized=True)
        ax.set(xlim=(lo, hi), ylim=(lo, hi))
        with np.errstate(all="ignore"):
            ok = np.isfinite(a) & np.isfinite(b)
            r = np.corrcoef(a[ok], b[ok])[0, 1] if ok.sum() > 1 and a[ok].std() > 0 and b[ok].std() > 0 else np.nan
        title = f"feature {f}: r = {r:.2f}" if np.isfinite(r) else f"feature {f}"
        finite = a[np.isfinite(a)]
        if finite.size and np.ptp(finite) == 0:
            title += " (constant in the data)"
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[-min(len(axes), 4):]:
        ax.set_xlabel("data", fontsize=8)
    for ax in axes[::4]:
        ax.set_ylabel("reconstruction", fontsize=8)
    units = "data units" if to_data_units is not None else "model units"
    _suptitle(fig, f"reconstructions decode(μ(x)) against the data ({units}, {len(x)} held-out "
                   f"rows; dashed: perfect); {_feature_note(feats, model.n_inputs)}")
    fig.tight_layout()
    return _save(fig, path)


def reconstructions(model, x, image_shape, path, n=8, *, to_data_units=None, spins=False):
    """Held-out data and decode(μ(x)).  Images: the first n examples (top row) above their
    reconstructions (bottom row), framed, with a colour bar.  Tabular data
    (``image_shape=None``): per feature, reconstruction against data for every row of x,
    with the diagonal and the correlation r."""
    if image_shape is None:
        return _tabular_reconstructions(model, x, path, to_data_units)
    return _image_reconstructions(model, x, image_shape, path, n, to_data_units, spins)


def samples(model, path, *, n=64, seed=0, data=None, to_data_units=None, image_shape=None, spins=False):
    """The figure of ``npvae sample``: what the model generates, x ~ p(x|z), z ~ N(0, I).

    Images (``image_shape`` given): decoder means and draws side by side (and ``data`` next
    to them when given), see :func:`prior_samples`.  Tabular data with up to
    ``MAX_PAIRS`` features: the corner plot of draws over data (:func:`pairs`); with more,
    histograms of each feature of the draws in data units, over the data's when ``data`` is
    given (:func:`marginals`).  ``data`` is in model units, like the model's inputs;
    ``to_data_units`` (e.g. ``Standardizer.inverse``) maps model units to the data's."""
    if image_shape is not None:
        return prior_samples(model, image_shape, path, n=n, seed=seed, data=data,
                             to_data_units=to_data_units, spins=spins)
    if model.n_inputs <= MAX_PAIRS:
        return pairs(model, data, path, to_data_units=to_data_units, seed=seed, n_samples=n)
    return marginals(model, data, path, to_data_units=to_data_units, seed=seed, n_samples=n)


# ----------------------------------------------------------------------------------------
# Ising lattices
# ----------------------------------------------------------------------------------------
def ising_observables(comparison, path):
    """Magnetisation and energy of configurations generated by the model against the Monte
    Carlo data, from :func:`npvae.observables.compare`:

    top, histograms of |m| and of E/N: data against prior draws (z ~ N(0, I), x ~ p(x|z));
    bottom (when temperatures are known), ⟨|m|⟩(T) and ⟨E/N⟩(T) of the data and of draws
    through the posterior of each temperature's data (z ~ q(z|x), x' ~ p(x'|z)), with
    standard errors, Onsager's M(T) (L → ∞) and T_c."""
    plt = _plt()
    c = comparison
    table = observables.summary_table(c)
    has_T = bool(table["by_temperature"])
    fig, axes = plt.subplots(2 if has_T else 1, 2, figsize=(11, 8.2 if has_T else 4.2), squeeze=False)
    for ax, key, name, rng in ((axes[0, 0], "abs_m", "|m|", (0.0, 1.0)),
                               (axes[0, 1], "energy", "E/N", None)):
        unit = " ($J$ per spin)" if key == "energy" else ",  $m = \\sum_i s_i / N$"
        d, p = c["data"][key], c["prior"][key]
        lo, hi = rng or _robust_range(d, p)
        edges = np.linspace(lo, hi + 1e-9, 26)
        _density_hist(ax, d, edges, color=DATA_COLOUR, alpha=0.45,
                label=f"Monte Carlo data: mean {d.mean():.3f} ({len(d)})")
        _density_hist(ax, p, edges, histtype="step", lw=1.8, color=MODEL_COLOUR,
                label=f"VAE prior draws: mean {p.mean():.3f} ({len(p)})")
        ax.set(xlabel=name + unit, ylabel="probability density" + (" ($1/J$)" if key == "energy" else ""),
               title=f"{name} of the configurations")
        ax.legend(fontsize=8, loc="upper left" if key == "abs_m" else "upper right")
    if has_T:
        rows = table["by_temperature"]
        T = np.array([r["T"] for r in rows])
        grid = np.linspace(T.min(), T.max(), 400)
        for ax, key, name in ((axes[1, 0], "abs_m", "⟨|m|⟩"), (axes[1, 1], "energy", "⟨E/N⟩ ($J$ per spin)")):
            for who, colour, marker, label in (("data", DATA_COLOUR, "o", "Monte Carlo data"),
                                               ("posterior", MODEL_COLOUR, "s",
                                                "VAE: z ~ q(z|x), x' ~ p(x'|z)")):
                y = np.array([r[f"{who}_{key}"] for r in rows])
                err = np.array([r[f"{who}_{key}_sem"] or 0.0 for r in rows])
                ax.errorbar(T, y, yerr=err, color=colour, marker=marker, ms=5, lw=1.2,
                            capsize=2, label=label)
            if key == "abs_m":
                ax.plot(grid, onsager_magnetisation(grid), color="k", lw=1, label="Onsager M(T), L → ∞")
                ax.set_ylim(-0.03, 1.05)
            if grid.min() < T_CRITICAL < grid.max():
                ax.axvline(T_CRITICAL, color="gray", ls=":", lw=1, label=f"$T_c$ = {T_CRITICAL:.3f} $J/k_B$")
            ax.set(xlabel=TEMPERATURE_LABEL, ylabel=name, title=f"{name.split(' (')[0]} against temperature")
            ax.legend(fontsize=8)
    fig.suptitle(f"Ising observables, L = {c['L']}: Monte Carlo data vs configurations "
                 "generated by the VAE (spins $s_i = 2x_i - 1 = \\pm 1$, coupling $J$)")
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------------------
# Training and the whole run
# ----------------------------------------------------------------------------------------
def training_curves(history, path):
    """Per epoch: training loss and reconstruction term (left), KL (middle), β and the
    validation ELBO (right); each epoch marked on runs of up to MARKERS_UP_TO epochs, the
    legends where they hide no curve."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator  # the optional plot extra
    ep = history["epoch"]
    marks = len(ep) <= MARKERS_UP_TO  # a marker on each of hundreds of points smears the curve
    style = lambda marker, line="-": (marker + line) if marks else line
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    axes[0].plot(ep, history["loss"], style("o"), label="loss")
    axes[0].plot(ep, history["reconstruction"], style("s"), label="reconstruction, −E_q[ln p(x|z)]")
    axes[0].set(xlabel="epoch", ylabel="nats per example", title="training loss")
    axes[1].plot(ep, history["kl"], style("o"), color="tab:green")
    axes[1].set(xlabel="epoch", ylabel="nats per example", title="KL(q(z|x) || p(z))")
    betas = [b for b in history["beta"] if b is not None and math.isfinite(b)]
    top = max([1.0, *betas])
    axes[2].plot(ep, history["beta"], style("o"), color="tab:purple", label="β (epoch mean)")
    axes[2].set(xlabel="epoch", ylabel="β", title="β and validation ELBO", ylim=(-0.05 * top, 1.05 * top))
    handles, labels = axes[2].get_legend_handles_labels()
    val = [v for v in history["val_elbo"] if v is not None]
    if val:
        ax2 = axes[2].twinx()
        ax2.plot(ep[-len(val):], val, style("s", "--"), color="tab:red", label="validation ELBO (β = 1)")
        ax2.set_ylabel("validation ELBO (nats per example)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    # below the panels, outside the data: β and the ELBO cross anywhere on a short run
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8, frameon=False)
    axes[2].legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8,
                   frameon=False)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _save(fig, path)


def write_all(model, history, x_val, labels, run_dir, label_name="label", *,
              image_shape="auto", to_data_units=None, ising_L=None, seed=0):
    """Every plot that fits the run into run_dir; returns the paths written.

    Always: training_curves.png, latent_scatter.png, kl_per_dimension.png,
    reconstructions.png and latent_traversal.png (as images or per feature).
    Images: prior_samples.png (decoder means, draws x ~ p(x|z) and data).
    Tabular data: marginals.png and, with two features or more, pairs.png.
    Ising (``ising_L`` = L; ``labels`` then are the temperatures, in units of J/k_B, and x_val
    in {0, 1}, drawn and labelled as spins s = 2x − 1): ising_observables.png and
    ising_observables.json (the table of :func:`npvae.observables.summary_table`).

    ``x_val`` is in model units; ``to_data_units`` maps model units to the data's (e.g.
    ``Standardizer.inverse``).  ``image_shape``: (h, w) for images, None for tabular data;
    ``ising_L`` implies (L, L).  The default ``"auto"`` keeps the old behaviour for callers
    that do not say: images when n_inputs is a perfect square.
    """
    run_dir = Path(run_dir)
    x_val = np.asarray(x_val)
    spins = ising_L is not None
    if spins:
        if image_shape is None or isinstance(image_shape, str):
            image_shape = (int(ising_L), int(ising_L))
        if label_name in ("label", "temperature"):  # the labels are the temperatures
            label_name = TEMPERATURE_LABEL
    elif isinstance(image_shape, str):
        if image_shape != "auto":
            raise ValueError(f"image_shape must be (h, w), None or 'auto', got {image_shape!r}")
        image_shape = image_shape_for(model.n_inputs)
    if image_shape is not None:
        image_shape = _check_shape(image_shape, model.n_inputs)
    paths = [training_curves(history, run_dir / "training_curves.png")]
    has_data = len(x_val) > 0
    if has_data:
        paths += [latent_scatter(model, x_val, labels, run_dir / "latent_scatter.png", label_name),
                  latent_usage(model, x_val, run_dir / "kl_per_dimension.png"),
                  reconstructions(model, x_val, image_shape, run_dir / "reconstructions.png",
                                  to_data_units=to_data_units, spins=spins)]
    if image_shape is not None:
        paths.append(prior_samples(model, image_shape, run_dir / "prior_samples.png", seed=seed,
                                   data=x_val if has_data else None, to_data_units=to_data_units,
                                   spins=spins))
    else:
        paths.append(marginals(model, x_val if has_data else None, run_dir / "marginals.png",
                               to_data_units=to_data_units, seed=seed))
        if model.n_inputs >= 2:
            paths.append(pairs(model, x_val if has_data else None, run_dir / "pairs.png",
                               to_data_units=to_data_units, seed=seed))
    paths.append(latent_traversal(model, image_shape, run_dir / "latent_traversal.png",
                                  x=x_val if has_data else None, to_data_units=to_data_units,
                                  spins=spins))
    if ising_L is not None and has_data:
        temps = None if labels is None else np.asarray(labels, dtype=np.float64)
        comparison = observables.compare(model, x_val, ising_L, temps, seed=seed)
        paths.append(ising_observables(comparison, run_dir / "ising_observables.png"))
        table_path = run_dir / "ising_observables.json"
        table_path.write_text(json.dumps(observables.summary_table(comparison), indent=1) + "\n",
                              encoding="utf-8")
        paths.append(table_path)
    return paths
