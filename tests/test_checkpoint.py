"""Model checkpoints: round trips, and clear errors for every kind of bad file."""
import io
import json
import zipfile

import numpy as np
import pytest

import npvae
from npvae import checkpoint


@pytest.mark.parametrize("kwargs", [dict(likelihood="bernoulli"),
                                    dict(likelihood="gaussian", sigma="learned", dtype=np.float64),
                                    dict(likelihood="gaussian", sigma="per_example", hidden=()),
                                    dict(likelihood="gaussian", sigma=0.25),
                                    dict(likelihood="continuous_bernoulli", activation="elu")])
def test_model_round_trip(tmp_path, kwargs):
    model = npvae.VAE(7, 3, **{"hidden": (5, 4), **kwargs})
    for p in model.params.values():
        p += np.random.default_rng(0).normal(size=p.shape).astype(p.dtype)
    model.save(tmp_path / "m.npz")
    again = npvae.load(tmp_path / "m.npz")
    assert again.config() == model.config()
    for k in model.params:
        assert again.params[k].dtype == model.params[k].dtype
        assert np.array_equal(again.params[k], model.params[k])


@pytest.fixture
def saved(tmp_path):
    model = npvae.VAE(6, 2, hidden=(4,))
    return model, model.save(tmp_path / "m.npz")


def rewrite(path, change):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_truncated_file(saved):
    _, path = saved
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(npvae.CheckpointError, match="corrupt or truncated"):
        npvae.load(path)


def test_random_bytes(saved):
    _, path = saved
    path.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(npvae.CheckpointError, match="not an npvae checkpoint"):
        npvae.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(npvae.CheckpointError, match="does not exist"):
        npvae.load(tmp_path / "none.npz")


def test_pickle_inside_is_refused(saved):
    _, path = saved
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object))  # np.save pickles object arrays
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["param/encoder.0.W.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    with pytest.raises(npvae.CheckpointError, match="pickled objects"):
        npvae.load(path)


def test_wrong_and_future_version(saved):
    _, path = saved
    rewrite(path, lambda a: a.update(__version__=np.array(99)))
    with pytest.raises(npvae.CheckpointError, match="format version 99, newer than"):
        npvae.load(path)
    rewrite(path, lambda a: a.pop("__version__"))
    with pytest.raises(npvae.CheckpointError, match="no readable format version"):
        npvae.load(path)


def test_not_a_checkpoint(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.ones(3))
    with pytest.raises(npvae.CheckpointError, match="not an npvae checkpoint"):
        npvae.load(tmp_path / "x.npz")


def test_wrong_shapes_never_reach_a_model(saved):
    _, path = saved
    rewrite(path, lambda a: a.update({"param/encoder.0.W": np.ones((6, 5), np.float32)}))
    with pytest.raises(npvae.CheckpointError, match=r"'encoder.0.W' has shape \(6, 5\)"):
        npvae.load(path)


def test_wrong_dtype_missing_param_nan_and_bad_config(saved):
    _, path = saved
    rewrite(path, lambda a: a.update({"param/encoder.0.b": np.ones(4, np.float64)}))
    with pytest.raises(npvae.CheckpointError, match="dtype float64"):
        npvae.load(path)
    rewrite(path, lambda a: a.pop("param/encoder.0.b"))
    with pytest.raises(npvae.CheckpointError, match=r"missing \['encoder.0.b'\]"):
        npvae.load(path)
    rewrite(path, lambda a: a.update({"param/encoder.0.b": np.array([np.nan] * 4, np.float32)}))
    with pytest.raises(npvae.CheckpointError, match="NaN or inf"):
        npvae.load(path)
    rewrite(path, lambda a: a.update(config=np.array("{not json")))
    with pytest.raises(npvae.CheckpointError, match="not valid JSON"):
        npvae.load(path)
    rewrite(path, lambda a: a.update(config=np.array(json.dumps({"n_inputs": -3}))))
    with pytest.raises(npvae.CheckpointError, match="invalid model config"):
        npvae.load(path)


def test_atomic_write_keeps_the_previous_file(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()

    def exploding_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", exploding_savez)
    for p in model.params.values():
        p += 1
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    monkeypatch.undo()
    npvae.load(path)


def peak_memory_of(fn):
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_small_file_declaring_a_huge_model_is_refused_before_building_it(saved):
    import json
    _, path = saved
    rewrite(path, lambda a: a.update(config=np.array(json.dumps(
        {**json.loads(str(a["config"])), "n_inputs": 200_000, "hidden": [4000]}))))
    assert path.stat().st_size < 10_000

    def attempt():
        with pytest.raises(npvae.CheckpointError, match="declares a model of .* parameters, but the file holds 90"):
            npvae.load(path)
    assert peak_memory_of(attempt) < 5_000_000


def test_unused_members_are_never_read_and_compressed_members_are_refused(saved, tmp_path):
    import zipfile
    _, path = saved
    with zipfile.ZipFile(path, "a") as z:  # a stored 200 MB member npvae does not use
        with z.open("junk.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (25_000_000,)})
            f.write(bytes(200_000_000))
    assert peak_memory_of(lambda: npvae.load(path)) < 5_000_000
    bomb = tmp_path / "bomb.npz"
    with np.load(path.with_name("m.npz"), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "junk"}
    np.savez_compressed(bomb, **arrays, big=np.zeros(50_000_000, np.uint8))
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(npvae.CheckpointError, match="compressed members"):
        npvae.load(bomb)


def test_a_fifo_or_a_folder_is_refused_without_waiting(tmp_path):
    import os
    fifo = tmp_path / "ckpt.npz"
    os.mkfifo(fifo)
    with pytest.raises(npvae.CheckpointError, match="not a regular file"):
        npvae.load(fifo)
    with pytest.raises(npvae.CheckpointError, match="is a folder"):
        npvae.load(tmp_path)


def test_a_config_with_text_widths_is_refused_without_building_text(saved):
    import json
    _, path = saved
    rewrite(path, lambda a: a.update(config=np.array(json.dumps(
        {**json.loads(str(a["config"])), "n_inputs": 5_000_000_000, "hidden": ["0"]}))))
    assert peak_memory_of(lambda: pytest.raises(npvae.CheckpointError, npvae.load, path)) < 5_000_000
