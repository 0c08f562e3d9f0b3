"""Bad arguments, generated: every public entry point answers a ValueError or TypeError that
names the argument, and nothing else escapes (no IndexError from deep inside, no silent NaN).
Valid values in odd layouts (non-contiguous, read-only, byte-swapped, unaligned, float32)
are not errors: they give exactly the result of a contiguous copy.

The normal profile runs FUZZ_EXAMPLES cases per entry point (default 100); the long profile
(HYPOTHESIS_PROFILE=long NPVAE_FUZZ_EXAMPLES=1000) runs 1000.
"""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npvae

FUZZ = int(os.environ.get("NPVAE_FUZZ_EXAMPLES", "100"))

bad_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=4), st.just([1, 2]), st.just(object()), st.just(np.float64(np.nan)))


# ----------------------------------------------------------------------------------------
# Valid values in unusual layouts: non-contiguous, read-only, byte-swapped, unaligned,
# another float width.  These are not errors: each entry point gives exactly the result of a
# plain C-contiguous copy, and never writes into the caller's array.
# ----------------------------------------------------------------------------------------
def _unaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)[1:]
    out = buf.view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def _strided(a):
    big = np.zeros((a.shape[0] * 2, a.shape[1] * 3), a.dtype)
    big[::2, ::3] = a
    return big[::2, ::3]


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


LAYOUTS = {"fortran": np.asfortranarray, "strided": _strided, "reversed": lambda a: a[::-1].copy()[::-1],
           "read-only": _read_only, "big-endian": lambda a: a.astype(a.dtype.newbyteorder(">")),
           "unaligned": _unaligned, "float32": lambda a: a.astype(np.float32)}


def bad_arrays(good_shape, bad_values=(np.nan, np.inf, -np.inf, 1.5, -0.1)):
    """Arrays that are wrong in one way: shape, rank, dtype, values (1.5 and −0.1 are outside
    Bernoulli's support; also in non-contiguous, read-only and byte-swapped arrays),
    emptiness, raggedness."""
    n, d = good_shape
    return st.one_of(
        st.tuples(st.integers(0, 4), st.integers(0, 7)).filter(lambda s: s != (n, d) and s[1] != d)
        .map(lambda s: np.full(s, 0.5)),
        st.just(np.full((n,), 0.5)), st.just(np.full((n, d, 1), 0.5)), st.just(np.float64(0.5)),
        st.sampled_from([np.int64, np.bool_, np.complex128, object]).map(lambda t: np.ones((n, d), dtype=t)),
        st.sampled_from(bad_values).map(lambda v: np.where(np.eye(n, d) > 0, v, 0.5)),
        st.tuples(st.sampled_from(bad_values), st.sampled_from(["strided", "read-only", "fortran", "big-endian"]))
        .map(lambda t: LAYOUTS[t[1]](np.where(np.eye(n, d) > 0, t[0], 0.5))),
        st.just(np.zeros((0, d))), st.just("not an array"), st.just([[0.5] * d] * (n - 1) + [[0.5]]),
    )


@settings(max_examples=FUZZ)
@given(kw=st.fixed_dictionaries({}, optional={
    "n_inputs": bad_scalars, "n_latent": bad_scalars, "hidden": st.one_of(bad_scalars, st.lists(bad_scalars, max_size=3)),
    "activation": bad_scalars, "likelihood": bad_scalars, "dtype": st.one_of(bad_scalars, st.just(np.int8)),
    "seed": bad_scalars, "sigma": bad_scalars, "init": bad_scalars}))
def test_constructor(kw):
    args = {"n_inputs": 4, "n_latent": 2, **kw}
    try:
        npvae.VAE(**args)
    except (ValueError, TypeError) as exc:
        assert str(exc)


MODEL = npvae.VAE(4, 2, hidden=(3,))


@settings(max_examples=FUZZ)
@given(x=bad_arrays((3, 4)), beta=st.one_of(st.just(1.0), bad_scalars))
def test_loss_and_grad(x, beta):
    with pytest.raises((ValueError, TypeError)) as info:
        MODEL.loss_and_grad(x, rng=np.random.default_rng(0), beta=beta)
    assert any(name in str(info.value) for name in ("x", "beta", "eps", "rng"))


@settings(max_examples=FUZZ)
@given(eps=bad_arrays((3, 2), bad_values=(np.nan, np.inf, -np.inf)))
def test_loss_and_grad_eps(eps):
    with pytest.raises((ValueError, TypeError), match="eps"):
        MODEL.loss_and_grad(np.full((3, 4), 0.5), eps=eps)


@settings(max_examples=FUZZ)
@given(x=bad_arrays((3, 4)), n=st.one_of(st.just(10), bad_scalars))
def test_log_likelihood(x, n):
    with pytest.raises((ValueError, TypeError)):
        MODEL.log_likelihood(x, n_samples=n)


@settings(max_examples=FUZZ)
@given(x=st.one_of(st.just(np.full((6, 4), 0.5)), bad_arrays((6, 4))),
       kw=st.fixed_dictionaries({}, optional={"epochs": bad_scalars, "batch_size": bad_scalars, "beta": bad_scalars,
                                              "seed": bad_scalars, "binarize": bad_scalars, "free_bits": bad_scalars,
                                              "objective": bad_scalars, "n_samples": bad_scalars,
                                              "early_stopping": bad_scalars, "x_val": bad_arrays((2, 4))}))
def test_fit(x, kw):
    try:
        npvae.fit(npvae.VAE(4, 2, hidden=(3,)), x, progress=False, **{"epochs": 1, **kw})
    except (ValueError, TypeError) as exc:
        assert str(exc)


layouts = st.sampled_from(sorted(LAYOUTS))


def odd(a, layout):
    out = LAYOUTS[layout](a)
    assert np.array_equal(out, a) or layout == "float32"
    return out


def same(r1, r2):
    if isinstance(r1, dict):
        assert r1.keys() == r2.keys()
        for k in r1:
            same(r1[k], r2[k])
    elif isinstance(r1, (tuple, list)):
        for a, b in zip(r1, r2):
            same(a, b)
    else:
        assert np.array_equal(np.asarray(r1), np.asarray(r2)), (r1, r2)


LAYOUT_X = np.random.default_rng(5).random((5, 4))
LAYOUT_EPS = np.random.default_rng(6).standard_normal((5, 2))


@settings(max_examples=FUZZ)
@given(lx=layouts, le=layouts)
def test_layouts_give_the_contiguous_result(lx, le):
    x, eps = odd(LAYOUT_X, lx), odd(LAYOUT_EPS, le)
    x_ref = np.ascontiguousarray(x, dtype=np.float64)
    eps_ref = np.ascontiguousarray(eps, dtype=np.float64)
    before = x.copy()
    m = MODEL
    same(m.loss_and_grad(x, eps=eps), m.loss_and_grad(x_ref, eps=eps_ref))
    same(m.encode(x), m.encode(x_ref))
    same(m.reconstruct(x), m.reconstruct(x_ref))
    same(m.decode(eps), m.decode(eps_ref))
    same(m.elbo(x, rng=np.random.default_rng(0)), m.elbo(x_ref, rng=np.random.default_rng(0)))
    same(m.log_likelihood(x, n_samples=7, rng=np.random.default_rng(0)),
         m.log_likelihood(x_ref, n_samples=7, rng=np.random.default_rng(0)))
    assert np.array_equal(x, before)


@settings(max_examples=max(FUZZ // 10, 5), deadline=None)
@given(lx=layouts, lv=layouts)
def test_fit_takes_any_layout(lx, lv):
    x, xv = odd(LAYOUT_X, lx), odd(LAYOUT_X[:3], lv)
    runs = []
    for a, b in ((x, xv), (np.ascontiguousarray(x, np.float64), np.ascontiguousarray(xv, np.float64))):
        model = npvae.VAE(4, 2, hidden=(3,), seed=1)
        npvae.fit(model, a, x_val=b, epochs=2, batch_size=2, progress=False, seed=3)
        runs.append(model.params)
    same(runs[0], runs[1])
    assert np.array_equal(x, LAYOUT_X) or lx == "float32"


@settings(max_examples=FUZZ)
@given(raw=st.binary(max_size=400))
def test_load_random_bytes(raw, tmp_path_factory):
    path = tmp_path_factory.mktemp("f") / "x.npz"
    path.write_bytes(raw)
    with pytest.raises(npvae.CheckpointError):
        npvae.load(path)


def read_or_data_error(path, reader):
    """The reader returns an array or raises DataError; nothing else may escape."""
    try:
        return reader(path)
    except npvae.data.DataError:
        return None


@settings(max_examples=FUZZ)
@given(raw=st.binary(max_size=300))
def test_idx_reader_random_bytes(raw, tmp_path_factory):
    path = tmp_path_factory.mktemp("f") / "x.idx"
    path.write_bytes(raw)
    out = read_or_data_error(path, npvae.data.read_idx)
    assert out is None or isinstance(out, np.ndarray)  # a tiny valid file may parse


@settings(max_examples=FUZZ)
@given(text=st.text(alphabet="0123456789.,-e\nabn ", max_size=200))
def test_csv_reader_random_text(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("f") / "x.csv"
    path.write_text(text)
    out = read_or_data_error(path, npvae.data.load_array)
    assert out is None or (out.ndim == 2 and np.isfinite(out).all())


WORDS = ["train", "evaluate", "sample", "gradcheck", "--data", "--epochs", "--latent", "--hidden", "--lr",
         "--likelihood", "--sigma", "--activation", "--binarize", "--objective", "--n-samples", "--config",
         "--seed", "--val-fraction", "-1", "0", "2", "1e9", "nan", "abc", "4,x", "bernoulli", "gaussian",
         "ising", "fashion-mnist", "nope.npy", "runs/none", "--beta", "--batch-size", "--free-bits"]


@pytest.fixture(scope="module")
def cli_sandbox(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp_path_factory.mktemp("cli"))
    mp.setenv("NPVAE_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setattr(npvae.data, "DEBIAN_FASHION_MNIST", tmp_path_factory.mktemp("nofm"))
    mp.setenv("NPVAE_DATA", str(tmp_path_factory.mktemp("nodata")))
    yield
    mp.undo()


@settings(max_examples=FUZZ)
@given(argv=st.lists(st.sampled_from(WORDS), min_size=0, max_size=6))
def test_cli_bad_flags(argv, cli_sandbox):
    from npvae import cli
    if argv[:1] == ["train"]:  # keep any run that is valid tiny
        argv = argv + ["--epochs", "1", "--ising-L", "4", "--ising-n-per-T", "4", "--no-plots", "--quiet"]
    if argv[:1] == ["gradcheck"]:
        argv = argv + ["--inputs", "3", "--latent", "1", "--hidden", "2"]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse: unknown flags or bad values
        assert exc.code in (0, 2)
        return
    assert code in (0, 1, 2)
