"""Plots of a run, written as PNG files (matplotlib, the optional ``plot`` extra).

Every function takes an output path and returns it; images are reshaped to
``image_shape`` (for example (28, 28) or (16, 16)), or shown as bars when there is none.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'npvae[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _grid(images, image_shape, ncols):
    n = len(images)
    nrows = math.ceil(n / ncols)
    h, w = image_shape
    canvas = np.ones((nrows * (h + 1) - 1, ncols * (w + 1) - 1)) * np.nan
    for k, img in enumerate(images):
        r, c = divmod(k, ncols)
        canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = img.reshape(h, w)
    return canvas


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def training_curves(history, path):
    """Loss, reconstruction and KL per epoch (left), β and validation ELBO (right)."""
    plt = _plt()
    ep = history["epoch"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(ep, history["loss"], "o-", label="loss")
    axes[0].plot(ep, history["reconstruction"], "s-", label="reconstruction")
    axes[0].set(xlabel="epoch", ylabel="nats per example", title="training loss")
    axes[0].legend()
    axes[1].plot(ep, history["kl"], "o-", color="tab:green")
    axes[1].set(xlabel="epoch", ylabel="nats per example", title="KL(q(z|x) || p(z))")
    axes[2].plot(ep, history["beta"], "o-", color="tab:purple", label="β (epoch mean)")
    axes[2].set(xlabel="epoch", ylabel="β", title="β and validation ELBO", ylim=(-0.05, 1.05))
    val = [v for v in history["val_elbo"] if v is not None]
    if val:
        ax2 = axes[2].twinx()
        ax2.plot(ep[-len(val):], val, "s--", color="tab:red", label="validation ELBO (β = 1)")
        ax2.set_ylabel("validation ELBO (nats)")
        ax2.legend(loc="lower right")
    axes[2].legend(loc="center right")
    fig.tight_layout()
    return _save(fig, path)


def reconstructions(model, x, image_shape, path, n=8):
    """Top row: data; bottom row: decode(μ(x))."""
    plt = _plt()
    x = np.asarray(x[:n])
    rec = model.reconstruct(x)
    fig, axes = plt.subplots(2, len(x), figsize=(1.3 * len(x), 2.9))
    for k in range(len(x)):
        for row, img in enumerate((x[k], rec[k])):
            ax = axes[row, k] if len(x) > 1 else axes[row]
            ax.imshow(img.reshape(image_shape), cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
    fig.suptitle("data (top) and reconstructions decode(μ(x)) (bottom)")
    fig.tight_layout()
    return _save(fig, path)


def prior_samples(model, image_shape, path, n=64, seed=0):
    """The mean of p(x|z) for z ~ N(0, I), on a grid."""
    plt = _plt()
    imgs = model.sample(n, np.random.default_rng(seed))
    ncols = int(math.ceil(math.sqrt(n)))
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(_grid(imgs, image_shape, ncols), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(f"{n} samples from the prior: mean of p(x|z), z ~ N(0, I)")
    fig.tight_layout()
    return _save(fig, path)


def latent_scatter(model, x, labels, path, label_name="label"):
    """μ(x) in the first two latent dimensions, coloured by label (or temperature)."""
    plt = _plt()
    mu, _ = model.encode(x)
    second = mu[:, 1] if mu.shape[1] > 1 else np.zeros(len(mu))
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(mu[:, 0], second, c=labels, s=5, cmap="viridis")
    fig.colorbar(sc, ax=ax, label=label_name)
    ax.set(xlabel="μ₀", ylabel="μ₁" if mu.shape[1] > 1 else "", title="latent means of held-out data")
    fig.tight_layout()
    return _save(fig, path)


def latent_traversal(model, image_shape, path, n=9, span=2.5):
    """decode(z) as each of the first (up to 4) latent coordinates sweeps −span..span, the
    others at 0."""
    plt = _plt()
    dims = min(model.n_latent, 4)
    values = np.linspace(-span, span, n)
    fig, axes = plt.subplots(dims, n, figsize=(1.2 * n, 1.3 * dims + 0.5), squeeze=False)
    for d in range(dims):
        z = np.zeros((n, model.n_latent), dtype=model.dtype)
        z[:, d] = values
        imgs = model.decode(z)
        for k in range(n):
            axes[d, k].imshow(imgs[k].reshape(image_shape), cmap="gray", vmin=0, vmax=1)
            axes[d, k].set_xticks([])
            axes[d, k].set_yticks([])
            if d == dims - 1:
                axes[d, k].set_xlabel(f"{values[k]:+.1f}")
        axes[d, 0].set_ylabel(f"z{d}")
    fig.suptitle("latent traversal: decode(z) along each coordinate")
    fig.tight_layout()
    return _save(fig, path)


def image_shape_for(n_inputs):
    """(s, s) when n_inputs is a square, else None."""
    s = int(round(math.sqrt(n_inputs)))
    return (s, s) if s * s == n_inputs else None


def write_all(model, history, x_val, labels, run_dir, label_name="label"):
    """Every plot of a run into run_dir; returns the paths written."""
    run_dir = Path(run_dir)
    shape = image_shape_for(model.n_inputs)
    paths = [training_curves(history, run_dir / "training_curves.png"),
             latent_scatter(model, x_val, labels, run_dir / "latent_scatter.png", label_name)]
    if shape is not None:
        paths += [reconstructions(model, x_val, shape, run_dir / "reconstructions.png"),
                  prior_samples(model, shape, run_dir / "prior_samples.png"),
                  latent_traversal(model, shape, run_dir / "latent_traversal.png")]
    return paths
