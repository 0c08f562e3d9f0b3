"""The training runs whose parameters must not change, and the rules they are held to.

Each run is 50 optimizer steps of ``fit`` (6 models × 2 seeds × float32 / float64; ELBO and
IWAE; every likelihood), on the engine path and, where it applies, on the compiled path.
``python tests/engine_reference.py record`` writes every parameter of every run to
tests/data/engine_reference.npz (keys ``name/seedS/dtype/path/param``);
tests/test_engine_reference.py runs them again and holds them to the promise of
docs/reproducibility.md:

- **the compiled path, bit for bit on every CPU**: its runs give exactly the recorded bytes
  natively (AVX-512), under ``NUMBA_CPU_NAME=haswell`` (AVX2) and under
  ``NUMBA_CPU_NAME=generic`` (baseline x86-64, no FMA): its products keep one order of fused
  multiply-adds at every vector width (:mod:`npvae.kernels.gemm`), its sums one fixed order
  (:mod:`npvae.kernels.sums`), and no kernel lets LLVM fuse or reorder its arithmetic
  (:data:`npvae.kernels.jit.ELEMENTWISE`).
- **the engine path, to rounding**: its products are NumPy's (OpenBLAS, whose kernels and
  sums depend on the CPU) and NumPy's SIMD loops differ between instruction sets; another CPU
  or the NumPy kernel backend gives parameters within :data:`TOLERANCE` of the recorded ones,
  not the same bits (fifty Adam steps carry the last bit forward).
- **on one machine, bit for bit**: the same run twice gives the same bytes, on either path.

Recorded on the development machine (AMD Zen 5, numba backend) with
``python tests/engine_reference.py record``; re-record only with the reason in the commit.
"""
import sys
from pathlib import Path

import numpy as np

import npvae

HERE = Path(__file__).parent / "data" / "engine_reference.npz"
RUNS = {
    "bernoulli-relu-16-elbo": dict(model=dict(n_inputs=20, n_latent=3, hidden=(16,), activation="relu"),
                                   fit=dict(binarize="dynamic", beta=npvae.LinearBeta(2))),
    "gaussian-learned-tanh-10-8": dict(model=dict(n_inputs=12, n_latent=2, hidden=(10, 8), activation="tanh",
                                                  likelihood="gaussian", sigma="learned"), fit={}),
    "gaussian-per-example-linear": dict(model=dict(n_inputs=12, n_latent=2, hidden=(), likelihood="gaussian",
                                                   sigma="per_example"), fit=dict(free_bits=0.1)),
    "cb-elu-12": dict(model=dict(n_inputs=16, n_latent=4, hidden=(12,), activation="elu",
                                 likelihood="continuous_bernoulli"), fit={}),
    "bernoulli-softplus-iwae-3": dict(model=dict(n_inputs=20, n_latent=3, hidden=(16,), activation="softplus"),
                                      fit=dict(objective="iwae", n_samples=3)),
    "gaussian-fixed-leaky-iwae-4": dict(model=dict(n_inputs=12, n_latent=2, hidden=(9,), activation="leaky_relu",
                                                   likelihood="gaussian", sigma=0.5),
                                        fit=dict(objective="iwae", n_samples=4)),
}
SEEDS = (0, 1)
DTYPES = ("float32", "float64")

TOLERANCE = {"float32": 1e-4, "float64": 1e-11}
"""Largest allowed max |p − p_recorded| / (|p_recorded| + 1e-3) over a run's parameters.
Measured on the recording machine: native against ``NUMBA_CPU_NAME=haswell`` and
``generic``, and the NumPy backend, differ by at most 6e-6 (float32) and 3e-14 (float64);
float32's tolerance is about 17× that, float64's about 300×: still far below what a changed
formula moves (a wrong sign, a missing factor, another random stream: 1e-3 and more)."""

ATOL_FLOOR = 1e-3  # parameters near 0 are compared on this absolute scale


def data_for(model_kw, seed):
    rng = np.random.default_rng([seed, 99])
    x = rng.random((160, model_kw["n_inputs"]))
    if model_kw.get("likelihood") == "gaussian":
        x = rng.standard_normal((160, model_kw["n_inputs"]))
    return x


def train(name, seed, dtype, path="engine"):
    """The parameters after the run's 50 steps of ``fit`` on ``path`` ("engine" or "compiled")."""
    spec = RUNS[name]
    model = npvae.VAE(**spec["model"], dtype=np.dtype(dtype), seed=seed)
    x = data_for(spec["model"], seed).astype(dtype)
    npvae.fit(model, x, epochs=5, batch_size=16, seed=seed, progress=False, compiled=path == "compiled",
              **spec["fit"])  # 50 steps
    return {k: np.array(v) for k, v in model.params.items()}


def compilable(name):
    spec = RUNS[name]
    model = npvae.VAE(**spec["model"])
    fit = spec["fit"]
    return npvae.compiled.unsupported(model, objective=fit.get("objective", "elbo"),
                                      free_bits=fit.get("free_bits", 0.0)) is None


def run_keys(backend):
    """"name/seedS/dtype/path" of every run: the engine path's, and the compiled path's
    where it applies (numba backend only)."""
    keys = [f"{n}/seed{s}/{d}/engine" for n in RUNS for s in SEEDS for d in DTYPES]
    if backend == "numba":
        keys += [f"{n}/seed{s}/{d}/compiled" for n in RUNS if compilable(n) for s in SEEDS for d in DTYPES]
    return keys


def run(key):
    name, seed, dtype, path = key.split("/")
    return train(name, int(seed[len("seed"):]), dtype, path)


def recorded(key):
    """The recorded parameters of run ``key``, in the model's order."""
    with np.load(HERE, allow_pickle=False) as f:
        return {name[len(key) + 1:]: f[name] for name in f.files if name.startswith(key + "/")}


def relative_difference(params, reference):
    """max over every parameter of |p − r| / (|r| + ATOL_FLOOR), in float64."""
    worst = 0.0
    for k, r in reference.items():
        p, r = np.asarray(params[k], np.float64), np.asarray(r, np.float64)
        if p.size:
            worst = max(worst, float(np.max(np.abs(p - r) / (np.abs(r) + ATOL_FLOOR))))
    return worst


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    if npvae.get_backend() != "numba":
        sys.exit("record with the numba backend: its runs are the reference for both backends")
    table = {f"{key}/{k}": v for key in run_keys("numba") for k, v in run(key).items()}
    np.savez_compressed(HERE, **table)
    print(f"recorded {len(run_keys('numba'))} runs ({len(table)} arrays) in {HERE}")
