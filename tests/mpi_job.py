"""A job for tests/test_mpi.py, run as ``mpiexec -n N python tests/mpi_job.py SPEC OUT`` (or
without mpiexec, for one process): trains and evaluates as SPEC (JSON) says, and rank 0
writes the parameters and the evaluations to OUT (.npz)."""
import json
import sys

import numpy as np

import npvae


def data(spec):
    rng = np.random.default_rng(spec.get("data_seed", 0))
    x = rng.random((spec["n"], spec["D"]))
    if spec.get("bad_rows_on_rank") is not None:
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_rank() == spec["bad_rows_on_rank"]:
            x[3, 2] = np.nan  # bad data on one rank's copy
    return x


def main(spec_text, out):
    spec = json.loads(spec_text)
    dtype = np.dtype(spec.get("dtype", "float64"))
    x = data(spec)
    if spec.get("mmap"):  # the data from an .npy file: memory-mapped, or read whole
        x = npvae.data.load_array(spec["mmap"], mmap=True) if spec.get("mapped", True) else \
            npvae.data.load_array(spec["mmap"], dtype=np.float64)
    model = npvae.VAE(spec["D"], spec["latent"], hidden=tuple(spec["hidden"]), dtype=dtype, seed=spec["seed"])
    result = {}
    if spec.get("epochs"):
        history = npvae.fit(model, x, epochs=spec["epochs"], batch_size=spec["batch"], seed=spec["seed"],
                            binarize="dynamic", objective=spec.get("objective", "elbo"),
                            n_samples=spec.get("k", 1), progress=False, compiled=False,
                            checkpoint_dir=spec.get("ckpt"), resume=spec.get("resume", False),
                            x_val=np.array(x[:40], dtype=dtype), optimizer=npvae.Adam(lr=spec.get("lr", 3e-3), clip_norm=5.0))
        result["loss"] = np.array(history["loss"])
        result["val_elbo"] = np.array(history["val_elbo"])
    for k, v in model.params.items():
        result["p/" + k] = v
    if spec.get("evaluate"):
        xb = (x > 0.5).astype(dtype)
        result["ll"] = model.log_likelihood(xb, n_samples=64, batch_size=7, rng=np.random.default_rng(5))
        result["elbo"] = model.elbo(xb, batch_size=9, rng=np.random.default_rng(6))
    comm = npvae.parallel.world()
    result["ranks"] = np.array(npvae.parallel.size_of(comm))
    if npvae.parallel.rank_of(comm) == 0:
        np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
