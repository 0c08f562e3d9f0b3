"""Results do not change: 50 fit steps of each recorded run (tests/engine_reference.py) give
the recorded bytes on the compiled path on any CPU, the recorded parameters to rounding on
the engine path (any CPU, either kernel backend), and the same bits when run twice on this
machine; checkpoints written by earlier code still load.  The promise these hold is
docs/reproducibility.md's; CI runs this file natively, under NUMBA_CPU_NAME=haswell and under
NUMBA_CPU_NAME=generic."""
import numpy as np
import pytest

import npvae
from npvae import train

import engine_reference as ref

pytestmark = pytest.mark.reproducibility


@pytest.mark.parametrize("key", [k for k in ref.run_keys(npvae.get_backend()) if k.endswith("/compiled")])
def test_the_compiled_path_reproduces_the_recorded_bits_on_every_cpu(key):
    params = ref.run(key)
    reference = ref.recorded(key)
    assert list(reference) == list(params)
    different = [k for k in params if params[k].tobytes() != reference[k].tobytes()]
    assert not different, (key, different, ref.relative_difference(params, reference))


@pytest.mark.parametrize("key", [k for k in ref.run_keys(npvae.get_backend()) if k.endswith("/engine")])
def test_fifty_fit_steps_reproduce_the_recorded_parameters_to_rounding(key):
    params = ref.run(key)
    reference = ref.recorded(key)
    assert list(reference) == list(params)  # every parameter recorded, in the model's order
    dtype = key.split("/")[2]
    assert all(p.dtype == np.dtype(dtype) for p in params.values())
    assert ref.relative_difference(params, reference) <= ref.TOLERANCE[dtype], key


@pytest.mark.parametrize("key", ref.run_keys(npvae.get_backend()))
def test_the_same_run_twice_gives_the_same_bits(key):
    first, second = ref.run(key), ref.run(key)
    assert all(np.array_equal(first[k], second[k]) and first[k].tobytes() == second[k].tobytes() for k in first)


def test_the_tolerance_would_catch_a_changed_formula():
    """One step of another learning rate (a change far smaller than any slip of a formula)
    already moves the parameters beyond the tolerance."""
    key = "bernoulli-relu-16-elbo/seed0/float32/engine"
    spec = ref.RUNS["bernoulli-relu-16-elbo"]
    model = npvae.VAE(**spec["model"], dtype=np.float32, seed=0)
    x = ref.data_for(spec["model"], 0).astype(np.float32)
    npvae.fit(model, x, epochs=5, batch_size=16, seed=0, progress=False, compiled=False,
              optimizer=npvae.Adam(lr=1.01e-3), **spec["fit"])
    assert ref.relative_difference(model.params, ref.recorded(key)) > 10 * ref.TOLERANCE["float32"]


def test_every_run_is_recorded():
    with np.load(ref.HERE, allow_pickle=False) as f:
        runs = {"/".join(name.split("/")[:4]) for name in f.files}
    assert set(ref.run_keys(npvae.get_backend())) <= runs
    assert sum(k.endswith("/engine") for k in runs) == 24  # 6 runs × 2 seeds × 2 dtypes
    assert sum(k.endswith("/compiled") for k in runs) == 24  # every run × 2 seeds × 2 dtypes


def test_checkpoints_written_by_the_earlier_code_load():
    m = npvae.load(ref.HERE.parent / "model-format1.npz")
    assert m.config()["hidden"] == [5, 4] and m.likelihood_name == "gaussian"
    fresh = npvae.VAE(6, 2, hidden=(5, 4), activation="tanh", likelihood="gaussian", sigma="per_example", seed=4)
    assert all(np.array_equal(m.params[k], fresh.params[k]) for k in fresh.params)
    model, meta, opt, perm, best = train.load_training_checkpoint(ref.HERE.parent / "training-format1.npz")
    assert meta["epoch"] == 2 and sorted(perm.tolist()) == list(range(40))
