"""The training runs whose parameters the engine must reproduce bit for bit.

``python tests/engine_reference.py record`` writes tests/data/engine_checksums.json with the
current code (per kernel backend); tests/test_engine_reference.py recomputes them.  Each run
is 50 optimizer steps of ``fit``; its checksum is the SHA-256 of every parameter's bytes, in
the order of ``model.params``.  The engine path's checksums date from before the engine was
rebuilt; the compiled path (:mod:`npvae.compiled`, numba only) has its own, recorded when it
was written: it sums in another order and evaluates exp, log1p and tanh with its own
kernels, so it agrees with the engine to rounding, not bit for bit.  They were re-recorded
when the compiled path's products moved to npvae's own kernel (:mod:`npvae.kernels.gemm`),
which sums each element as one in-order chain of FMAs where OpenBLAS sums in blocks; they
hold for that kernel (``npvae.kernels.blas.BLAS == "npvae"``) at any vector width.  The
four float32 Bernoulli runs of the compiled path were re-recorded once more when its
likelihood moved to float32 arithmetic (vmath.exp32 and log1p32); the others kept their bits.
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

import npvae

HERE = Path(__file__).parent / "data" / "engine_checksums.json"
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


def data_for(model_kw, seed):
    rng = np.random.default_rng([seed, 99])
    x = rng.random((160, model_kw["n_inputs"]))
    if model_kw.get("likelihood") == "gaussian":
        x = rng.standard_normal((160, model_kw["n_inputs"]))
    return x


def checksum(name, seed, dtype, path="engine"):
    spec = RUNS[name]
    model = npvae.VAE(**spec["model"], dtype=np.dtype(dtype), seed=seed)
    x = data_for(spec["model"], seed).astype(dtype)
    npvae.fit(model, x, epochs=5, batch_size=16, seed=seed, progress=False, compiled=path == "compiled",
              **spec["fit"])  # 50 steps
    h = hashlib.sha256()
    for k, v in model.params.items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


def compilable(name):
    spec = RUNS[name]
    model = npvae.VAE(**spec["model"])
    fit = spec["fit"]
    return npvae.compiled.unsupported(model, objective=fit.get("objective", "elbo"),
                                      free_bits=fit.get("free_bits", 0.0)) is None


def all_checksums():
    """Every run on the engine path ("name/seedS/dtype"), and on the compiled path where it
    applies ("name/seedS/dtype/compiled")."""
    table = {f"{name}/seed{seed}/{dtype}": checksum(name, seed, dtype)
             for name in RUNS for seed in SEEDS for dtype in DTYPES}
    table.update({f"{name}/seed{seed}/{dtype}/compiled": checksum(name, seed, dtype, "compiled")
                  for name in RUNS if compilable(name) for seed in SEEDS for dtype in DTYPES})
    return table


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    table = json.loads(HERE.read_text()) if HERE.exists() else {}
    table[npvae.get_backend()] = all_checksums()
    HERE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(table[npvae.get_backend()])} checksums for backend {npvae.get_backend()} in {HERE}")
