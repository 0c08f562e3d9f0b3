"""npvae.kernels.blas.gemm (c ← a b) and gemm_acc (c ← c + a b): products from compiled
code, through npvae's own kernel (CPUs with 256-bit vectors or wider), NumPy's bundled
OpenBLAS, or numba's np.dot; NPVAE_BLAS chooses."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from npvae.kernels import blas


@njit
def _product(a, b, c):
    blas.gemm(a, b, c)


@njit
def _product_added(a, b, c):
    blas.gemm_acc(a, b, c)


@njit
def _product_of_rows(a, b, c, r0, r1):
    # row blocks of larger arrays, as the compiled step passes them
    blas.gemm(a[r0:r1], b, c[r0:r1])


@settings(max_examples=80, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 40), n=st.integers(1, 40),
       ta=st.booleans(), tb=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       acc=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_gemm_and_gemm_acc_equal_numpys_product_for_every_layout(m, k, n, ta, tb, dtype, acc, seed):
    """gemm writes a b over whatever c held (NaN here); gemm_acc adds a b to what c holds."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    a, b = (a.T if ta else a), (b.T if tb else b)
    c0 = rng.standard_normal((m, n)).astype(dtype) if acc else np.full((m, n), np.nan, dtype)
    c = c0.copy()
    (_product_added if acc else _product)(a, b, c)
    want = a.astype(np.float64) @ b.astype(np.float64) + (c0.astype(np.float64) if acc else 0.0)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(c, want, rtol=tol, atol=tol * np.sqrt(k + 1) * np.abs(want).max())


def test_gemm_on_row_blocks_writes_only_those_rows():
    rng = np.random.default_rng(1)  # several register tiles, partial ones at both ends
    a, b = rng.standard_normal((40, 33)), rng.standard_normal((33, 37))
    c = np.zeros((40, 37))
    _product_of_rows(a, b, c, 3, 30)
    np.testing.assert_allclose(c[3:30], a[3:30] @ b, rtol=1e-13)
    assert not c[:3].any() and not c[30:].any()


def test_the_product_in_use_is_named():
    from npvae.kernels import gemm
    assert blas.BLAS in ("npvae", "numpy-openblas", "scipy")
    if blas.BLAS == "numpy-openblas":
        assert "openblas" in blas.BLAS_LIBRARY.lower()
    if gemm.VECTOR_BITS >= 256 and not os.environ.get("NPVAE_BLAS"):
        assert blas.BLAS == "npvae"


SCRIPT = (
    "import json, sys, numpy as np, npvae\n"
    "from npvae.kernels import blas\n"
    "L = npvae.layers\n"  # dense and gated layers: gemm and gemm_acc
    "m = npvae.VAE(12, 3, encoder=[L.Dense(9, 'relu'), L.GatedDense(6)], decoder=[L.GatedDense(6),"
    " L.Dense(9, 'relu')], seed=0, dtype='float64')\n"
    "x = (np.random.default_rng(0).random((64, 12)) > 0.5).astype(float)\n"
    "npvae.fit(m, x, epochs=2, batch_size=16, seed=0, progress=False, compiled=True)\n"
    "json.dump({'blas': blas.BLAS, 'p': np.concatenate([v.ravel() for v in m.params.values()]).tolist()},"
    " sys.stdout)\n")


@pytest.mark.reproducibility
def test_npvae_blas_chooses_the_product_with_the_same_results(tmp_path):
    # the same short compiled training run through each product: agreement to float64 rounding
    out = {}
    for choice in ("", "openblas", "scipy"):
        env = dict(os.environ, NPVAE_BLAS=choice)
        if choice:  # the default compiles into the usual (warm) cache; the others into their own
            env["NUMBA_CACHE_DIR"] = str(tmp_path / "cache")
        res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                             timeout=600)
        assert res.returncode == 0, res.stderr
        out[choice] = json.loads(res.stdout)
    assert out["scipy"]["blas"] == "scipy"
    assert out["openblas"]["blas"] in ("numpy-openblas", "scipy")  # scipy where NumPy bundles none
    assert out[""]["blas"] == blas.BLAS
    for choice in ("openblas", "scipy"):
        np.testing.assert_allclose(out[""]["p"], out[choice]["p"], rtol=1e-12, atol=1e-14)
    # each product keeps its own compiled cache (its folder named for it, then the hash of the
    # sources its kernels inline)
    folders = [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert any(f.startswith("blas-scipy-") for f in folders), folders
    assert any(f.startswith(f"blas-{out['openblas']['blas']}-") for f in folders), folders


def test_an_unknown_npvae_blas_is_refused_with_the_choices():
    env = dict(os.environ, NPVAE_BLAS="mkl")
    res = subprocess.run([sys.executable, "-c", "import npvae.kernels.blas"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode != 0
    assert "NPVAE_BLAS must be one of npvae, openblas, scipy" in res.stderr
