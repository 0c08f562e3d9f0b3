"""Matrix products from compiled code: ``gemm(a, b, c)`` writes c ← a b, ``gemm_acc(a, b, c)``
adds it, c ← c + a b (the second product of a gated layer's input gradient).

Three implementations, one named by :data:`BLAS`:

- ``"npvae"``, the default on every CPU: npvae's own kernel, :mod:`npvae.kernels.gemm`,
  compiled for the CPU it runs on.  Every element of c is one in-order chain of fused
  multiply-adds over k, so the numbers do not depend on the machine's vector width or
  threads: the same bits on an AVX-512, an AVX2 and a baseline x86-64 CPU.  (On a CPU
  without FMA instructions, numba's ``generic`` target, each fused multiply-add is the C
  library's exact ``fma``: the same numbers, many times slower; such CPUs predate 2013.)  On the development
  machine (AMD Zen 5, where the environment pins OpenBLAS to its Haswell kernels) a
  64×784 by 784×400 float32 product on one thread takes 184 µs against OpenBLAS's 330;
  written in 256-bit vectors, as on an AVX2 machine, 311 µs (``benchmarks/bench_gemm.py``).
- ``"numpy-openblas"``: NumPy's bundled OpenBLAS, its CBLAS ``?gemm`` called directly by
  address (``NPVAE_BLAS=openblas``).
  NumPy's OpenBLAS (0.3.31) ran a training step's products about 17% faster than SciPy's
  (0.3.30) on the development machine.
- ``"scipy"``: numba's own ``np.dot``, which calls SciPy's BLAS (``scipy.linalg.cython_blas``):
  the fallback when NumPy is linked against another BLAS (Accelerate, MKL, a distribution's
  OpenBLAS).

``NPVAE_BLAS=npvae|openblas|scipy`` (read at import) chooses one.  A run's numbers depend
on the choice (a BLAS sums in blocks of its own), never on the number of threads.

How an OpenBLAS call is made: the function's address, looked up once at import through
ctypes, is registered with LLVM under a name of ours (``npvae_sgemm``, ``npvae_dgemm``), and
the compiled code calls that name.  The address itself is never baked into compiled code, so
the kernels stay cacheable on disk; the cache for code that calls ``gemm`` is kept per
:data:`BLAS` (see :func:`npvae.kernels.jit.jit`'s ``cache_subfolder``), so a cache
compiled for one BLAS is never loaded with another.

``a`` and ``b`` may each be a C-contiguous array or the transpose (``.T``) of one; rows of a
larger C-contiguous array (``h[r0:r1]``) are fine, as are columns-major views of them. ``c``
must be C-contiguous by rows (OpenBLAS's requirement; npvae's kernel takes any strides).
Shapes: a (m, k), b (k, n), c (m, n).
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import os
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import gemm as own

# CBLAS's enumerations
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# symbol names NumPy's wheels export, 64-bit integers (ILP64), newest first
_CANDIDATES = (("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_"),
               ("cblas_sgemm64_", "cblas_dgemm64_"))


def _numpy_openblas_files():
    here = os.path.dirname(np.__file__)
    patterns = [os.path.join(here, os.pardir, "numpy.libs", "*openblas*"),   # Linux, Windows
                os.path.join(here, ".dylibs", "*openblas*")]                   # macOS
    found = []
    for pattern in patterns:
        found += sorted(glob.glob(pattern))
    return found


CHOICES = ("npvae", "openblas", "scipy")
"""What ``NPVAE_BLAS`` may say."""


def _choice() -> str:
    asked = os.environ.get("NPVAE_BLAS", "").strip().lower()
    if asked and asked not in CHOICES:
        raise ValueError(f"NPVAE_BLAS must be one of {', '.join(CHOICES)} (or unset), got {asked!r}")
    if asked:
        return asked
    return "npvae"


def _find_numpy_gemm():
    """(sgemm address, dgemm address, library path) of NumPy's bundled OpenBLAS, or None."""
    for path in _numpy_openblas_files():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for s_name, d_name in _CANDIDATES:
            try:
                s, d = getattr(lib, s_name), getattr(lib, d_name)
            except AttributeError:
                continue
            return (ctypes.cast(s, ctypes.c_void_p).value, ctypes.cast(d, ctypes.c_void_p).value, path)
    return None


_asked = _choice()
_found = _find_numpy_gemm() if _asked == "openblas" else None
if _asked == "npvae":
    BLAS = "npvae"
    BLAS_LIBRARY: str | None = None
elif _found is not None:
    llvm.add_symbol("npvae_sgemm", _found[0])
    llvm.add_symbol("npvae_dgemm", _found[1])
    BLAS = "numpy-openblas"
    BLAS_LIBRARY = _found[2]
else:
    BLAS = "scipy"
    BLAS_LIBRARY = None
"""Which implementation ``gemm`` calls: ``"npvae"`` (:mod:`npvae.kernels.gemm`),
``"numpy-openblas"`` (NumPy's bundled OpenBLAS, by ctypes address) or ``"scipy"`` (numba's
``np.dot``); ``NPVAE_BLAS`` chooses, see the module's docstring."""


def _gemm_intrinsic(symbol, real, beta):
    @intrinsic
    def call(typingctx, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc):
        i32, i64 = types.int32, types.int64
        sig = types.void(i32, i32, i64, i64, i64, types.uintp, i64, types.uintp, i64, types.uintp, i64)

        def codegen(context, builder, signature, args):
            ta, tb, m_, n_, k_, pa, la, pb, lb, pc, lc = args
            lt_i32, lt_i64 = ir.IntType(32), ir.IntType(64)
            lt_real = ir.FloatType() if real == "float" else ir.DoubleType()
            ptr = ir.IntType(8).as_pointer()
            fnty = ir.FunctionType(ir.VoidType(), [lt_i32, lt_i32, lt_i32, lt_i64, lt_i64, lt_i64, lt_real,
                                                   ptr, lt_i64, ptr, lt_i64, lt_real, ptr, lt_i64])
            fn = cgutils.get_or_insert_function(builder.module, fnty, symbol)
            one, b_ = ir.Constant(lt_real, 1.0), ir.Constant(lt_real, beta)
            builder.call(fn, [ir.Constant(lt_i32, _ROW_MAJOR), ta, tb, m_, n_, k_, one,
                              builder.inttoptr(pa, ptr), la, builder.inttoptr(pb, ptr), lb, b_,
                              builder.inttoptr(pc, ptr), lc])
            return context.get_dummy_value()
        return sig, codegen
    return call


# c ← a b (β = 0) and c ← c + a b (β = 1)
_sgemm = _gemm_intrinsic("npvae_sgemm", "float", 0.0)
_dgemm = _gemm_intrinsic("npvae_dgemm", "double", 0.0)
_sgemm_acc = _gemm_intrinsic("npvae_sgemm", "float", 1.0)
_dgemm_acc = _gemm_intrinsic("npvae_dgemm", "double", 1.0)


@njit(inline="always")
def _layout(x):
    """(CBLAS transpose code, leading dimension) of a 2-D view that is row-major (stride of
    one along axis 1) or the transpose of one."""
    s = x.itemsize
    if x.strides[1] == s or x.shape[1] <= 1:
        return _NO_TRANS, max(x.strides[0] // s, x.shape[1], 1)
    return _TRANS, max(x.strides[1] // s, x.shape[0], 1)


@njit(inline="always")
def _openblas(a, b, c, acc):
    """c ← a b, or c ← c + a b when ``acc``, by NumPy's OpenBLAS."""
    m, k = a.shape
    n = b.shape[1]
    ta, lda = _layout(a)
    tb, ldb = _layout(b)
    ldc = max(c.strides[0] // c.itemsize, n, 1)
    pa, pb, pc = a.ctypes.data, b.ctypes.data, c.ctypes.data
    if c.itemsize == 4:
        if acc:
            _sgemm_acc(ta, tb, m, n, k, pa, lda, pb, ldb, pc, ldc)
        else:
            _sgemm(ta, tb, m, n, k, pa, lda, pb, ldb, pc, ldc)
    elif acc:
        _dgemm_acc(ta, tb, m, n, k, pa, lda, pb, ldb, pc, ldc)
    else:
        _dgemm(ta, tb, m, n, k, pa, lda, pb, ldb, pc, ldc)


@njit(inline="always")
def _gemm_openblas(a, b, c):
    _openblas(a, b, c, False)


@njit(inline="always")
def _gemm_acc_openblas(a, b, c):
    _openblas(a, b, c, True)


@njit(inline="always")
def _gemm_numba(a, b, c):
    np.dot(a, b, c)


@njit(inline="always")
def _gemm_acc_numba(a, b, c):
    c += np.dot(a, b)


@njit(inline="always")
def _gemm_own(a, b, c):
    own.product(a, b, c, False)


@njit(inline="always")
def _gemm_acc_own(a, b, c):
    own.product(a, b, c, True)


SOURCE_ID = own.SOURCE_ID + "-" + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:6]
"""npvae's kernel's :data:`npvae.kernels.gemm.SOURCE_ID` and a hash of this file: the cache
key of compiled code that inlines ``gemm``."""

_IMPLEMENTATIONS = {"npvae": (_gemm_own, _gemm_acc_own),
                    "numpy-openblas": (_gemm_openblas, _gemm_acc_openblas),
                    "scipy": (_gemm_numba, _gemm_acc_numba)}
gemm = _IMPLEMENTATIONS[BLAS][0]
"""c ← a b in compiled code; a (m, k), b (k, n), c (m, n), one dtype (float32 or float64)."""
gemm_acc = _IMPLEMENTATIONS[BLAS][1]
"""c ← c + a b in compiled code (the product added to what c holds); shapes as :data:`gemm`."""

__all__ = ["gemm", "gemm_acc", "BLAS", "BLAS_LIBRARY", "CHOICES", "SOURCE_ID"]
