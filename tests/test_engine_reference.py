"""Results do not change: 50 fit steps of 24 runs (6 models × 2 seeds × float32 / float64,
ELBO and IWAE, every likelihood) give the parameters recorded before the engine was rebuilt,
bit for bit, on this backend; and checkpoints written by the earlier code still load."""
import json

import numpy as np
import pytest

import npvae
from npvae import train
from npvae.kernels import blas

import engine_reference as ref

RECORDED = json.loads(ref.HERE.read_text())


@pytest.mark.parametrize("key", sorted(RECORDED[npvae.get_backend()]))
def test_fifty_fit_steps_reproduce_the_recorded_parameters(key):
    name, seed, dtype, *path = key.split("/")
    if path == ["compiled"] and blas.BLAS != "npvae":
        pytest.skip(f"the compiled runs were recorded with npvae's own matrix kernel; this process uses {blas.BLAS}")
    assert ref.checksum(name, int(seed[len("seed"):]), dtype, *path) == RECORDED[npvae.get_backend()][key]


def test_the_compiled_path_has_recorded_runs():
    if npvae.get_backend() == "numba":
        assert sum(k.endswith("/compiled") for k in RECORDED["numba"]) == 16  # 4 runs × 2 seeds × 2 dtypes


def test_checkpoints_written_by_the_earlier_code_load():
    m = npvae.load(ref.HERE.parent / "model-format1.npz")
    assert m.config()["hidden"] == [5, 4] and m.likelihood_name == "gaussian"
    fresh = npvae.VAE(6, 2, hidden=(5, 4), activation="tanh", likelihood="gaussian", sigma="per_example", seed=4)
    assert all(np.array_equal(m.params[k], fresh.params[k]) for k in fresh.params)
    model, meta, opt, perm, best = train.load_training_checkpoint(ref.HERE.parent / "training-format1.npz")
    assert meta["epoch"] == 2 and sorted(perm.tolist()) == list(range(40))
