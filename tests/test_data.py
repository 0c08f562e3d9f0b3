import gzip
import os

import numpy as np
import pytest

from npvae import data


def write_idx(path, arr, code=0x08, magic=None):
    arr = np.asarray(arr)
    header = bytes([0, 0, code, arr.ndim]) if magic is None else magic
    header += b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    raw = header + arr.astype(">u1" if code == 0x08 else ">i4").tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def fake_fashion(folder, n=5, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", rng.integers(0, 10, n))
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = write_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"), arr)
    out = data.read_idx(p)
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_idx_int32_big_endian(tmp_path):
    arr = np.array([[1, -2], [70000, 3]])
    out = data.read_idx(write_idx(tmp_path / "i.idx", arr, code=0x0C))
    assert np.array_equal(out, arr) and out.dtype.byteorder in "=<"


def test_idx_bad_files(tmp_path):
    arr = np.zeros((2, 2), np.uint8)
    with pytest.raises(data.DataError, match="bad magic number"):
        data.read_idx(write_idx(tmp_path / "m.idx", arr, magic=b"\x01\x02\x08\x02"))
    with pytest.raises(data.DataError, match="unknown IDX element type"):
        data.read_idx(write_idx(tmp_path / "t.idx", arr, code=0x07))
    p = write_idx(tmp_path / "s.idx", arr)
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(data.DataError, match="holds 3 bytes"):
        data.read_idx(p)
    p.write_bytes(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big"))
    with pytest.raises(data.DataError, match="truncated IDX header"):
        data.read_idx(p)
    with pytest.raises(data.DataError, match="does not exist"):
        data.read_idx(tmp_path / "nope.idx")
    bad_gz = tmp_path / "b.idx.gz"
    bad_gz.write_bytes(b"not gzip at all")  # the format is told by the bytes, not the name
    with pytest.raises(data.DataError, match="not an IDX file"):
        data.read_idx(bad_gz)
    broken_gz = tmp_path / "c.idx.gz"
    import gzip
    broken_gz.write_bytes(gzip.compress(write_idx(tmp_path / "ok.idx", arr).read_bytes())[:-12])
    with pytest.raises(data.DataError, match="cannot be read|holds"):
        data.read_idx(broken_gz)


def test_gzip_idx_declaring_a_huge_shape_is_refused_before_inflating(tmp_path):
    import gzip
    head = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (60000, 2800, 2800))
    p = tmp_path / "bomb.idx.gz"
    p.write_bytes(gzip.compress(head + bytes(1000)))
    with pytest.raises(data.DataError, match="more than npvae reads"):
        data.read_idx(p)


def test_fashion_mnist_from_path_and_env(tmp_path, monkeypatch):
    folder = fake_fashion(tmp_path / "fm", gz=False)
    x, y = data.load_fashion_mnist("test", path=folder, labels=True)
    assert x.shape == (5, 784) and x.dtype == np.float32 and y.shape == (5,)
    assert 0 <= x.min() and x.max() <= 1
    fake_fashion(tmp_path / "root" / "fashion-mnist")
    monkeypatch.setenv("NPVAE_DATA", str(tmp_path / "root"))
    assert data.load_fashion_mnist("train").shape == (5, 784)


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("NPVAE_DATA", str(tmp_path))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        data.load_fashion_mnist()
    with pytest.raises(ValueError, match="split must be"):
        data.load_fashion_mnist("validation")


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST.exists(),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_real_fashion_mnist():
    x, y = data.load_fashion_mnist("test", labels=True)
    assert x.shape == (10000, 784) and y.shape == (10000,)
    assert set(np.unique(y)) == set(range(10))
    assert 0.2 < x.mean() < 0.4


def test_binarize():
    x = np.full((2000, 50), 0.3, dtype=np.float32)
    b = data.binarize(x, np.random.default_rng(0))
    assert b.dtype == np.float32 and set(np.unique(b)) == {0.0, 1.0}
    assert abs(b.mean() - 0.3) < 0.005
    assert np.array_equal(b, data.binarize(x, np.random.default_rng(0)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.binarize(x + 1, np.random.default_rng(0))


def test_standardizer_round_trip(tmp_path):
    x = np.random.default_rng(0).normal(3, 2, size=(500, 4))
    x[:, 2] = 7.0  # constant feature: only centred
    s = data.Standardizer().fit(x)
    z = s.transform(x)
    np.testing.assert_allclose(z[:, [0, 1, 3]].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z[:, [0, 1, 3]].std(0), 1, rtol=1e-12)
    assert np.all(z[:, 2] == 0)
    np.testing.assert_allclose(s.inverse(z), x, rtol=1e-12)
    s.save(tmp_path / "s.npz")
    s2 = data.Standardizer.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(s2.transform(x), z)
    with pytest.raises(ValueError, match="not fitted"):
        data.Standardizer().transform(x)
    with pytest.raises(ValueError, match=r"shape \(any, 4\)"):
        s.transform(x[:, :3])


def test_train_val_split_is_seeded_and_disjoint():
    x = np.arange(100)[:, None].astype(float)
    y = np.arange(100)
    a = data.train_val_split(x, 0.2, 1, y)
    b = data.train_val_split(x, 0.2, 1, y)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    xt, xv, yt, yv = a
    assert len(xv) == 20 and len(xt) == 80
    assert not set(yt) & set(yv) and np.array_equal(xt[:, 0], yt)
    with pytest.raises(ValueError, match="val_fraction"):
        data.train_val_split(x, 1.5)


def test_load_array_formats(tmp_path):
    arr = np.arange(6, dtype=np.float64).reshape(3, 2)
    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "b.npz", x=arr)
    np.savez(tmp_path / "c.npz", x=arr, y=arr)
    (tmp_path / "d.csv").write_text("p,q\n0,1\n2,3\n4,5\n")
    (tmp_path / "e.csv").write_text("0,1\n2,3\n4,5\n")
    for name in ("a.npy", "b.npz", "d.csv", "e.csv"):
        out = data.load_array(tmp_path / name)
        assert out.dtype == np.float32 and np.array_equal(out, arr)
    assert np.array_equal(data.load_array(tmp_path / "c.npz", key="y"), arr)
    with pytest.raises(data.DataError, match="pass key="):
        data.load_array(tmp_path / "c.npz")


def test_load_array_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("1,2\n3\n")
    with pytest.raises(data.DataError, match="line 2 has 1 columns, the first data line 1 has 2"):
        data.load_array(tmp_path / "bad.csv")
    (tmp_path / "txt.csv").write_text("a,b\n1,x\n")
    with pytest.raises(data.DataError, match="line 2 is not comma-separated numbers"):  # the file's own line
        data.load_array(tmp_path / "txt.csv")
    (tmp_path / "nan.csv").write_text("1,nan\n")
    with pytest.raises(data.DataError, match="NaN"):
        data.load_array(tmp_path / "nan.csv")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))  # np.save pickles objects
    with pytest.raises(data.DataError, match="Python objects"):
        data.load_array(tmp_path / "obj.npy")
    with pytest.raises(data.DataError, match="unsupported data format"):
        (tmp_path / "x.txt").write_text("1")
        data.load_array(tmp_path / "x.txt")
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_array(tmp_path / "none.npy")


def test_a_zero_size_dtype_or_a_structured_one_is_refused(tmp_path):
    import io
    for descr, shape in (([], (5, 10**15)), ("|V0", (3,)), ([("a", "<f4")], (3,))):
        b = io.BytesIO()
        np.lib.format.write_array_header_1_0(b, {"descr": descr, "fortran_order": False, "shape": shape})
        (tmp_path / "z.npy").write_bytes(b.getvalue())
        with pytest.raises(data.DataError):
            data.load_array(tmp_path / "z.npy")


def test_standardizer_saves_and_refuses_bad_files(tmp_path):
    s = data.Standardizer().fit(np.random.default_rng(0).random((5, 3)))
    path = s.save(tmp_path / "s.npz")
    assert np.array_equal(data.Standardizer.load(path).std, s.std)
    np.savez(tmp_path / "z.npz", mean=np.zeros(3), std=np.zeros(3))
    with pytest.raises(data.DataError, match="std > 0"):
        data.Standardizer.load(tmp_path / "z.npz")
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(data.DataError):
        data.Standardizer.load(tmp_path / "a.npy")


def test_a_memory_mapped_npy_is_checked_like_a_read_one(tmp_path):
    from npvae import data, files
    good = tmp_path / "good.npy"
    np.save(good, np.arange(12, dtype=np.float32).reshape(4, 3))
    m = data.load_array(good, mmap=True)
    assert isinstance(m, np.memmap) and m.shape == (4, 3) and m.dtype == np.float32
    np.testing.assert_array_equal(m, np.arange(12).reshape(4, 3))
    # truncated: the header declares more than the file holds
    cut = tmp_path / "cut.npy"
    cut.write_bytes(good.read_bytes()[:-4])
    with pytest.raises(data.DataError, match="declares"):
        data.load_array(cut, mmap=True)
    # pickled objects are refused before anything is mapped
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(data.DataError, match="pickled"):
        data.load_array(obj, mmap=True)
    with pytest.raises(data.DataError, match="only an .npy"):
        data.load_array(tmp_path / "x.csv", mmap=True)
    with pytest.raises(data.DataError, match="2-D"):
        np.save(tmp_path / "one.npy", np.arange(3.0))
        data.load_array(tmp_path / "one.npy", mmap=True)
    assert files.map_npy(good).flags.writeable is False


def test_fit_on_a_memory_mapped_file_equals_fit_on_the_array(tmp_path):
    import npvae
    x = np.random.default_rng(0).random((90, 6))
    np.save(tmp_path / "x.npy", x)
    runs = []
    for arr in (x, npvae.data.load_array(tmp_path / "x.npy", mmap=True)):
        m = npvae.VAE(6, 2, hidden=(5,), dtype=np.float64, seed=1)
        npvae.fit(m, arr, epochs=2, batch_size=16, binarize="dynamic", compiled=False, progress=False)
        runs.append(m.params)
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])
    bad = x.copy()
    bad[70, 2] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match="rows 0:90"):
        npvae.fit(npvae.VAE(6, 2, dtype=np.float64), npvae.data.load_array(tmp_path / "bad.npy", mmap=True),
                  epochs=1, progress=False)
    with pytest.raises(ValueError, match="static binarisation"):
        npvae.fit(npvae.VAE(6, 2, dtype=np.float64), npvae.data.load_array(tmp_path / "x.npy", mmap=True),
                  epochs=1, progress=False, binarize="static")
