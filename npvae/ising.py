"""Built-in data: 2D Ising configurations by Monte Carlo (numba), seeded and cached on disk.

Spins s = ±1 on a periodic L×L lattice, H = −Σ_<ij> s_i s_j (J = 1, no field, k_B = 1), at
temperatures T; the critical temperature is T_c = 2 / ln(1 + √2) ≈ 2.269.

* Checkerboard Metropolis: the two sublattices are updated in turn, each site flipped with
  probability min(1, e^{−ΔE/T}), ΔE = 2 s_i Σ_neighbours s_j ∈ {−8, −4, 0, 4, 8}.
* Wolff cluster updates (Wolff 1989) near T_c, where single flips decorrelate slowly: a
  cluster grows from a random site, adding aligned neighbours with p = 1 − e^{−2/T}, and
  flips as a whole.
* Randomness comes from a numpy Generator: each kernel call gets its uniform numbers as an
  array, so a seed fixes every configuration.

Known results the tests check: Onsager's spontaneous magnetisation
M(T) = (1 − sinh⁻⁴(2/T))^{1/8} for T < T_c, the energy per spin −2 at T → 0 and
−2 tanh(1/T) + O(T⁻³) at high T, and |m| → 0 above T_c.
"""
from __future__ import annotations

import hashlib
import json
import math
import zipfile
from pathlib import Path

import numpy as np

from .files import atomic_savez
from .kernels.jit import jit, npvae_cache_root
from .validation import positive_int

T_CRITICAL = 2.0 / math.log(1.0 + math.sqrt(2.0))
WOLFF_WINDOW = 0.6  # Wolff updates for |T − T_c| < WOLFF_WINDOW


def onsager_magnetisation(T):
    """Onsager's exact spontaneous magnetisation per spin, 0 at and above T_c."""
    T = np.asarray(T, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = 1.0 - np.sinh(2.0 / T) ** -4
    return np.where(T < T_CRITICAL, np.clip(inner, 0, None) ** 0.125, 0.0)


@jit()
def metropolis_sweep(spins, T, u):
    """One checkerboard sweep of the L×L lattice in place; u: (L, L) uniforms in [0, 1)."""
    L = spins.shape[0]
    p4 = math.exp(-4.0 / T)
    p8 = math.exp(-8.0 / T)
    for color in range(2):
        for i in range(L):
            for j in range((i + color) % 2, L, 2):
                s = spins[i, j]
                nb = spins[(i + 1) % L, j] + spins[i - 1, j] + spins[i, (j + 1) % L] + spins[i, j - 1]
                dE = 2 * s * nb
                if dE <= 0 or (dE == 4 and u[i, j] < p4) or (dE == 8 and u[i, j] < p8):
                    spins[i, j] = -s


@jit()
def wolff_update(spins, T, u):
    """One Wolff cluster flip in place.  u: uniforms, at least 2 + 4 L² of them (the seed
    site, then one per bond tried).  Returns the cluster size."""
    L = spins.shape[0]
    p_add = 1.0 - math.exp(-2.0 / T)
    site = int(u[0] * L * L) % (L * L)
    i0, j0 = site // L, site % L
    s0 = spins[i0, j0]
    stack_i = np.empty(L * L, dtype=np.int64)
    stack_j = np.empty(L * L, dtype=np.int64)
    top = 0
    stack_i[0], stack_j[0] = i0, j0
    top = 1
    spins[i0, j0] = -s0
    k = 1
    size = 1
    while top > 0:
        top -= 1
        i, j = stack_i[top], stack_j[top]
        for d in range(4):
            if d == 0:
                ni, nj = (i + 1) % L, j
            elif d == 1:
                ni, nj = (i - 1) % L, j
            elif d == 2:
                ni, nj = i, (j + 1) % L
            else:
                ni, nj = i, (j - 1) % L
            if spins[ni, nj] == s0:
                r = u[k]
                k += 1
                if r < p_add:
                    spins[ni, nj] = -s0
                    stack_i[top], stack_j[top] = ni, nj
                    top += 1
                    size += 1
    return size


@jit()
def energy_per_spin(spins):
    L = spins.shape[0]
    e = 0
    for i in range(L):
        for j in range(L):
            e -= spins[i, j] * (spins[(i + 1) % L, j] + spins[i, (j + 1) % L])
    return e / (L * L)


def _sweeps(spins, T, n, rng, use_wolff):
    L = spins.shape[0]
    for _ in range(n):
        metropolis_sweep(spins, T, rng.random((L, L)))
        if use_wolff:
            wolff_update(spins, T, rng.random(2 + 4 * L * L))


def simulate(L=16, temperatures=(1.5, 2.0, 2.269, 2.5, 3.0, 4.0), n_per_T=200, n_therm=500,
             n_decorr=10, seed=0, wolff=True, symmetrize=True, *, progress=False):
    """Configurations at each temperature: ``n_therm`` thermalisation sweeps, then
    ``n_per_T`` samples ``n_decorr`` sweeps apart (a sweep: one checkerboard Metropolis pass,
    plus one Wolff cluster flip when ``wolff`` and |T − T_c| < WOLFF_WINDOW).

    Returns a dict of arrays: ``spins`` (n, L, L) int8 in {−1, +1}, ``T``, ``m`` (signed
    magnetisation per spin) and ``energy`` (per spin), each of length n = n_per_T · len(T).
    Each temperature starts from an ordered lattice and has its own stream of the seed.
    Below T_c single-spin dynamics never leaves the + phase, so with ``symmetrize`` every
    stored configuration is multiplied by an independent random global sign (H is symmetric
    under s → −s): both phases appear equally, as in equilibrium.  ``progress=True`` shows a
    bar with an ETA on a terminal (tqdm).
    """
    L = positive_int(L, "L")
    if L < 2:
        raise ValueError(f"L must be >= 2, got {L}")
    n_per_T = positive_int(n_per_T, "n_per_T")
    n_therm = positive_int(n_therm, "n_therm", allow_zero=True)
    n_decorr = positive_int(n_decorr, "n_decorr")
    temps = [float(t) for t in temperatures]
    if not temps or any(not (t > 0 and math.isfinite(t)) for t in temps):
        raise ValueError(f"temperatures must be positive numbers, got {temperatures!r}")
    spins_out = np.empty((len(temps) * n_per_T, L, L), dtype=np.int8)
    T_out = np.repeat(np.array(temps), n_per_T)
    bar = None
    if progress:
        from tqdm.auto import tqdm  # only when a bar is drawn: kept off `import npvae`
        bar = tqdm(total=len(temps) * n_per_T, desc=f"Ising {L}x{L} Monte Carlo", unit="cfg",
                   leave=False, disable=None)
    for t_idx, T in enumerate(temps):
        rng = np.random.default_rng([seed, t_idx])
        spins = np.ones((L, L), dtype=np.int64)
        use_wolff = bool(wolff) and abs(T - T_CRITICAL) < WOLFF_WINDOW
        _sweeps(spins, T, n_therm, rng, use_wolff)
        for k in range(n_per_T):
            _sweeps(spins, T, n_decorr, rng, use_wolff)
            spins_out[t_idx * n_per_T + k] = spins
            if bar is not None:
                bar.update(1)
        if symmetrize:
            signs = np.where(rng.random(n_per_T) < 0.5, -1, 1).astype(np.int8)
            spins_out[t_idx * n_per_T:(t_idx + 1) * n_per_T] *= signs[:, None, None]
    if bar is not None:
        bar.close()
    m = spins_out.reshape(len(spins_out), -1).mean(axis=1, dtype=np.float64)
    energy = np.array([energy_per_spin(s.astype(np.int64)) for s in spins_out])
    return {"spins": spins_out, "T": T_out, "m": m, "energy": energy}


def cache_dir() -> Path:
    """Where generated data sets are cached: $NPVAE_CACHE, else ~/.cache/npvae."""
    return npvae_cache_root()


def load(L=16, temperatures=(1.5, 2.0, 2.269, 2.5, 3.0, 4.0), n_per_T=200, n_therm=500,
         n_decorr=10, seed=0, wolff=True, symmetrize=True, cache=True, *, progress=False):
    """``simulate`` with the result cached on disk (an .npz keyed by every argument)."""
    args = dict(L=L, temperatures=[float(t) for t in temperatures], n_per_T=n_per_T,
                n_therm=n_therm, n_decorr=n_decorr, seed=seed, wolff=bool(wolff),
                symmetrize=bool(symmetrize), version=1)
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"ising-{key}.npz"
    if cache and path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in ("spins", "T", "m", "energy")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            pass  # a damaged cache file is regenerated
    data = simulate(L, temperatures, n_per_T, n_therm, n_decorr, seed, wolff, symmetrize,
                    progress=progress)
    if cache:
        atomic_savez(path, data)
    return data


def as_bernoulli(spins) -> np.ndarray:
    """Spins ±1 (n, L, L) as float32 rows in {0, 1} (n, L²), for a Bernoulli VAE."""
    s = np.asarray(spins)
    return ((s.reshape(len(s), -1) + 1) // 2).astype(np.float32)
