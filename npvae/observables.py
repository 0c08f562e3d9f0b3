"""Ising observables of configurations, to check a VAE trained on lattices as a physicist
would: do its generated configurations have the magnetisation and energy of the data?

Configurations are rows x in {0, 1} of length N = L² (as :func:`npvae.ising.as_bernoulli`
writes them), read as spins s = 2x − 1 on a periodic L×L lattice, J = 1, no field:

* ``magnetisation``: m = (1/N) Σ_i s_i, shape (n,);
* ``energy_per_spin``: E/N = −(1/N) Σ_<ij> s_i s_j, each nearest-neighbour pair once, (n,),
  the same value as :func:`npvae.ising.energy_per_spin` of the lattice;
* ``compare``: |m| and E/N of the data, of configurations drawn from the model's prior
  (z ~ N(0, I), x ~ p(x|z)) and of configurations drawn through its posterior for each
  data configuration (z ~ q(z|x), x' ~ p(x'|z));
* ``summary_table``: the means of those, overall and per temperature, as plain numbers
  (JSON-ready), with Onsager's M(T) for reference.

No plotting here: :func:`npvae.plots.ising_observables` draws the figure.
"""
from __future__ import annotations

import numpy as np

from .ising import T_CRITICAL, onsager_magnetisation


def as_spins(x, L) -> np.ndarray:
    """Rows x in [0, 1], shape (n, L²), as spins s = 2x − 1 on lattices (n, L, L), float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != L * L:
        raise ValueError(f"configurations must have shape (n, {L * L}) for L = {L}, got {x.shape}")
    return (2.0 * x - 1.0).reshape(len(x), L, L)


def magnetisation(x, L) -> np.ndarray:
    """m = (1/N) Σ_i s_i per configuration, s = 2x − 1: x (n, L²) -> (n,)."""
    s = as_spins(x, L)
    return s.reshape(len(s), -1).mean(axis=1)


def energy_per_spin(x, L) -> np.ndarray:
    """E/N = −(1/N) Σ_i s_i (s_right(i) + s_down(i)), periodic, J = 1: x (n, L²) -> (n,).

    Every nearest-neighbour bond is counted once, so the all-up lattice has −2 and a
    checkerboard (L even) +2; equal to :func:`npvae.ising.energy_per_spin` per lattice."""
    s = as_spins(x, L)
    bonds = s * (np.roll(s, -1, axis=1) + np.roll(s, -1, axis=2))
    return -bonds.reshape(len(s), -1).sum(axis=1) / (L * L)


def _spin_draws(model, z, rng):
    """x ~ p(x|z), read as spins: up where x > ½ (for the Bernoulli likelihood of Ising runs
    x is already 0 or 1)."""
    return (np.asarray(model.decode(z, rng=rng), dtype=np.float64) > 0.5).astype(np.float64)


def posterior_draws(model, x, rng) -> np.ndarray:
    """One configuration per row of x: z ~ q(z|x), x' ~ p(x'|z); (n, L²) -> (n, L²) in {0, 1}."""
    mu, logvar = model.encode(x)
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape).astype(mu.dtype)
    return _spin_draws(model, z, rng)


def prior_draws(model, n, rng) -> np.ndarray:
    """n configurations z ~ N(0, I), x ~ p(x|z): (n, L²) in {0, 1}."""
    z = rng.standard_normal((n, model.n_latent)).astype(model.dtype)
    return _spin_draws(model, z, rng)


def compare(model, x, L, temperatures=None, *, n_prior=None, seed=0) -> dict:
    """|m| and E/N, per configuration, of the data and of the model's configurations.

    x: (n, L²) data in {0, 1}; temperatures: (n,) the temperature of each row, or None.
    Returns a dict of arrays: ``data``, ``prior`` (``n_prior`` draws, default
    max(n, 500)) and ``posterior`` (one draw through q(z|x) per data row), each a dict with
    ``abs_m`` and ``energy``; and ``T`` (n,) or None, and ``L``.
    """
    L = int(L)
    x = np.asarray(x)
    if len(x) == 0:
        raise ValueError("compare needs at least one configuration")
    rng = np.random.default_rng([seed, 7])
    n_prior = max(len(x), 500) if n_prior is None else int(n_prior)
    prior = prior_draws(model, n_prior, rng)
    post = posterior_draws(model, x, rng)
    out = {"L": L, "T": None if temperatures is None else np.asarray(temperatures, dtype=np.float64)}
    if out["T"] is not None and out["T"].shape != (len(x),):
        raise ValueError(f"temperatures must have shape ({len(x)},), got {out['T'].shape}")
    for name, conf in (("data", x), ("prior", prior), ("posterior", post)):
        out[name] = {"abs_m": np.abs(magnetisation(conf, L)), "energy": energy_per_spin(conf, L)}
    return out


def _mean_sem(v):
    v = np.asarray(v, dtype=np.float64)
    sem = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
    return float(v.mean()), sem


def summary_table(comparison) -> dict:
    """The means (and standard errors of the mean) of a :func:`compare` result:

    ``overall``: ⟨|m|⟩ and ⟨E/N⟩ of the data and of the prior draws;
    ``by_temperature``: one row per temperature T with n, the data's ⟨|m|⟩ and ⟨E/N⟩,
    those of the posterior draws for that temperature's data, and Onsager's M(T)
    (the L → ∞ spontaneous magnetisation).  Plain floats (a standard error is None when
    there is a single configuration): ``json.dumps`` takes it as it is.
    """
    c = comparison
    table = {"L": int(c["L"]), "T_critical": T_CRITICAL, "overall": {}, "by_temperature": []}
    for name in ("data", "prior", "posterior"):
        m, m_se = _mean_sem(c[name]["abs_m"])
        e, e_se = _mean_sem(c[name]["energy"])
        table["overall"][name] = {"n": int(len(c[name]["abs_m"])), "abs_m": m, "abs_m_sem": m_se,
                                  "energy": e, "energy_sem": e_se}
    if c["T"] is not None:
        for T in np.unique(c["T"]):
            sel = c["T"] == T
            row = {"T": float(T), "n": int(sel.sum()),
                   "onsager_M": float(onsager_magnetisation(T))}
            for name in ("data", "posterior"):
                row[f"{name}_abs_m"], row[f"{name}_abs_m_sem"] = _mean_sem(c[name]["abs_m"][sel])
                row[f"{name}_energy"], row[f"{name}_energy_sem"] = _mean_sem(c[name]["energy"][sel])
            table["by_temperature"].append(row)
    return table
