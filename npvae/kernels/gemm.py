"""npvae's own matrix product for compiled code: ``product(a, b, c, acc)`` writes c ← a b, or
c ← c + a b when ``acc``; a (m, k), b (k, n), c (m, n), one dtype (float32 or float64), any
strides (C-contiguous arrays, their transposes, row slices of them).

Why a kernel of our own.  A BLAS library picks its kernels for the CPU it finds, and may be
told otherwise: on the development machine (AMD Zen 5, AVX-512) the environment pins
OpenBLAS to its Haswell kernels (``OPENBLAS_CORETYPE``), half the vector width the cores
have.  numba compiles for the CPU it runs on, so a kernel written here uses the widest
vectors the machine has.

What every element is.  Each c[i, j] is one chain of fused multiply-adds over k in order,

    s ← c[i, j] (acc) or 0;   s ← fma(a[i, k], b[k, j], s)  for k = 0, 1, …, K−1;   c[i, j] ← s,

so the result is the same bits whatever the tile shape, the vector width, the operands'
layout or how the rows are shared between threads: the kernel's choices below change the
speed, never the numbers.  (A BLAS sums in blocks that depend on its kernel and threads.)

How it is computed.  A register tile of ``MR`` rows (8 with 512-bit vectors, else 6) by
``NV`` vectors of c lives in vector registers while k runs: per k, ``NV`` vectors of b's row k are loaded, and each of the
``MR`` scalars a[i, k] is broadcast and multiplied into them (``_micro_intrinsic``: LLVM IR
with vector types and ``llvm.fma``).  The vector operand must have unit stride along its
columns; the scalar operand may have any strides.  So:

- b with unit stride along n (row-major b): tiles of c = a b directly;
- else a with unit stride along m (a = xᵀ of a row-major x): tiles of cᵀ = bᵀ aᵀ, with
  aᵀ the vector operand (the chain per element is the same: an FMA's product is exact);
- else the smaller of b and aᵀ is first copied into a contiguous buffer (``dY Wᵀ``: dYᵀ,
  a few hundred kB at most, instead of W).

Column panels are ``NV`` vectors wide, then one of a single vector, then the last few
columns on a zero-padded copy of the operand; the last rows (m not a multiple of ``MR``) on
a zero-padded copy too.  Tiles that are partial, or of a c without unit stride along its
columns, are computed in a small buffer and their valid part copied to c.  Single-threaded
and without shared state: the compiled step calls it from each of its threads on that
thread's rows.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import target_features


def _vector_bits() -> int:
    """512 with AVX-512 (and FMA), 256 with AVX2 and FMA, else 128 (where npvae's kernel is not
    the default: :mod:`npvae.kernels.blas`), for the CPU numba compiles for
    (:func:`npvae.kernels.jit.target_features`: the host's, or the one ``NUMBA_CPU_NAME``
    names, so that ``NUMBA_CPU_NAME=haswell`` runs the kernel an AVX2 machine runs)."""
    features = target_features()
    if not features.get("fma", False):
        return 128
    if features.get("avx512f", False):
        return 512
    if features.get("avx2", False):
        return 256
    return 128


VECTOR_BITS = _vector_bits()
"""The width of the vectors the kernel is written in, from the CPU it runs on."""
SOURCE_ID = f"{VECTOR_BITS}-" + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]
"""The width and a hash of this file, for the cache of compiled code that inlines the kernel
(numba checks only the caller's own source file)."""
def rows_per_tile(vector_bits: int) -> int:
    """Rows of a register tile: 8 with 512-bit vectors (32 vector registers hold the 16
    accumulators, 2 loads and a broadcast; measured faster than 6, 10 and 12 on the
    products of the benchmarks' steps), else 6 (16 registers: 12 accumulators and 3)."""
    return 8 if vector_bits == 512 else 6


MR = rows_per_tile(VECTOR_BITS)
"""Rows of a register tile at the machine's :data:`VECTOR_BITS`."""
NV = 2
"""Vectors per row of a register tile: 2 × MR accumulators, 2 loads and a broadcast per k."""


def _micro_intrinsic(vector_bits: int, nv: int, mr: int):
    """The register-tile kernel: an mr × (nv vectors of ``vector_bits``) tile of c,
    c[i, v] (+)= Σ_k s[i, k] · w[k, v], in LLVM IR, for the element type of its first
    argument (a float32 or float64 scalar: only that type's code is generated).

    Arguments (an array's address and an offset in bytes, strides in elements): like (any
    scalar of the type); K; s, s_off, s_si, s_sk (the scalar operand, any strides); w, w_off,
    w_sk (the vector operand: unit stride along its columns); c, c_off, c_si (the tile: unit
    stride along its columns); acc (start from c's values, else 0)."""

    @intrinsic
    def micro(typingctx, like, k, s, s_off, s_si, s_sk, w, w_off, w_sk, c, c_off, c_si, acc):
        if like not in (types.float32, types.float64):
            return None
        real = "float" if like == types.float32 else "double"
        lanes = vector_bits // (32 if real == "float" else 64)
        i64, up = types.int64, types.uintp
        sig = types.void(like, i64, up, i64, i64, i64, up, i64, i64, up, i64, i64, types.boolean)

        def codegen(context, builder, signature, args):
            _, k_, s_, s_off_, s_si_, s_sk_, w_, w_off_, w_sk_, c_, c_off_, c_si_, acc_ = args
            t = ir.FloatType() if real == "float" else ir.DoubleType()
            vt = ir.VectorType(t, lanes)
            i32, i64_ = ir.IntType(32), ir.IntType(64)
            align = 4 if real == "float" else 8
            s_base = builder.inttoptr(builder.add(s_, s_off_), t.as_pointer())   # address + bytes
            w_base = builder.inttoptr(builder.add(w_, w_off_), t.as_pointer())
            c_base = builder.inttoptr(builder.add(c_, c_off_), t.as_pointer())
            zero_v = ir.Constant(vt, [0.0] * lanes)
            suffix = f"v{lanes}{'f32' if real == 'float' else 'f64'}"
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]),
                                                 f"llvm.fma.{suffix}")
            splat_mask = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)

            def c_slot(i, v):
                off = builder.add(builder.mul(ir.Constant(i64_, i), c_si_), ir.Constant(i64_, v * lanes))
                return builder.bitcast(builder.gep(c_base, [off]), vt.as_pointer())

            init = []
            for i in range(mr):
                for v in range(nv):
                    loaded = builder.load(c_slot(i, v), align=align)
                    init.append(builder.select(acc_, loaded, zero_v))
            s_rows = [builder.mul(ir.Constant(i64_, i), s_si_) for i in range(mr)]

            entry = builder.block
            loop = builder.append_basic_block("npvae_micro_loop")
            done = builder.append_basic_block("npvae_micro_done")
            builder.cbranch(builder.icmp_signed(">", k_, ir.Constant(i64_, 0)), loop, done)

            builder.position_at_end(loop)
            kk = builder.phi(i64_)
            kk.add_incoming(ir.Constant(i64_, 0), entry)
            accs = []
            for j in range(mr * nv):
                p = builder.phi(vt)
                p.add_incoming(init[j], entry)
                accs.append(p)
            w_row = builder.mul(kk, w_sk_)
            ws = []
            for v in range(nv):
                ptr = builder.gep(w_base, [builder.add(w_row, ir.Constant(i64_, v * lanes))])
                ws.append(builder.load(builder.bitcast(ptr, vt.as_pointer()), align=align))
            s_col = builder.mul(kk, s_sk_)
            new = []
            for i in range(mr):
                a = builder.load(builder.gep(s_base, [builder.add(s_rows[i], s_col)]), align=align)
                a_v = builder.shuffle_vector(builder.insert_element(ir.Constant(vt, ir.Undefined), a,
                                                                    ir.Constant(i32, 0)),
                                             ir.Constant(vt, ir.Undefined), splat_mask)
                for v in range(nv):
                    new.append(builder.call(fma, [a_v, ws[v], accs[i * nv + v]]))
            k_next = builder.add(kk, ir.Constant(i64_, 1))
            kk.add_incoming(k_next, loop)
            for j in range(mr * nv):
                accs[j].add_incoming(new[j], loop)
            builder.cbranch(builder.icmp_signed("<", k_next, k_), loop, done)

            builder.position_at_end(done)
            outs = []
            for j in range(mr * nv):                 # the phis first: LLVM wants them on top
                out = builder.phi(vt)
                out.add_incoming(init[j], entry)
                out.add_incoming(new[j], loop)
                outs.append(out)
            for i in range(mr):
                for v in range(nv):
                    builder.store(outs[i * nv + v], c_slot(i, v), align=align)
            return context.get_dummy_value()
        return sig, codegen
    return micro


def build(vector_bits: int):
    """The product kernel written in vectors of ``vector_bits`` (128, 256 or 512): the same
    numbers at every width (see the module's docstring), at the speed of the width.  The
    package's :func:`product` is built for the machine's :data:`VECTOR_BITS`."""
    if vector_bits not in (128, 256, 512):
        raise ValueError(f"vector_bits must be 128, 256 or 512, got {vector_bits!r}")
    l32, l64 = vector_bits // 32, vector_bits // 64      # lanes of a vector
    mr = rows_per_tile(vector_bits)
    wide_tile, narrow_tile = _micro_intrinsic(vector_bits, NV, mr), _micro_intrinsic(vector_bits, 1, mr)

    @njit  # not inlined: one compiled tile kernel per type, called from every _tiles (cold start)
    def micro(wide, like, k, s, s_off, s_si, s_sk, w, w_off, w_sk, c, c_off, c_si, acc):
        """An mr × NV-vector tile (``wide``), or mr × one vector (a panel's remainder), of
        the element type of ``like``."""
        if wide:
            wide_tile(like, k, s, s_off, s_si, s_sk, w, w_off, w_sk, c, c_off, c_si, acc)
        else:
            narrow_tile(like, k, s, s_off, s_si, s_sk, w, w_off, w_sk, c, c_off, c_si, acc)

    @njit
    def _tiles(s, w, c, acc):
        """c (+)= s w by register tiles: s (rows, K) any strides, w (K, cols) with unit stride
        along cols (or a single column), c (rows, cols) any strides.  Column panels of NV
        vectors, then one of a single vector, then the last few columns zero-padded to one."""
        rows, kk = s.shape
        cols = w.shape[1]
        isz = c.itemsize
        lanes = l32 if isz == 4 else l64
        s_si, s_sk = s.strides[0] // isz, s.strides[1] // isz
        w_sk = w.strides[0] // isz
        c_si, c_sj = c.strides[0] // isz, c.strides[1] // isz
        direct_w = w.strides[1] == isz
        # the last, partial row sliver, zero-padded (the same for every column panel)
        full_rows = rows - rows % mr
        s_edge = np.zeros((mr if full_rows < rows else 0, max(kk, 1)), c.dtype)
        for i in range(full_rows, rows):
            for k in range(kk):
                s_edge[i - full_rows, k] = s[i, k]
        w_edge = np.zeros((max(kk, 1), lanes), c.dtype)
        tile = np.zeros((mr, NV * lanes), c.dtype)
        like = tile[0, 0]  # the element type, for the tile kernel (one type compiled, not two)
        # (every address is taken where it is used, and offsets are added in the tile kernel:
        # an address taken earlier does not keep its array alive, numba frees an array after
        # its last use; and an address is unsigned, its offsets are not)
        j0 = 0
        while j0 < cols:
            left = cols - j0
            wide = left >= NV * lanes
            nj = NV * lanes if wide else min(lanes, left)
            if (wide or nj == lanes) and direct_w:
                w_off, w_step, w_copied = j0 * isz, w_sk, False
            else:  # a few columns, or a single one of another stride: fewer than one vector
                for k in range(kk):
                    for j in range(nj):
                        w_edge[k, j] = w[k, j0 + j]
                    for j in range(nj, lanes):
                        w_edge[k, j] = 0
                w_off, w_step, w_copied = 0, lanes, True
            full_cols = nj == (NV * lanes if wide else lanes)
            for i0 in range(0, rows, mr):
                w_addr = w_edge.ctypes.data if w_copied else w.ctypes.data
                ni = min(mr, rows - i0)
                if ni == mr:
                    s_addr, s_off, si, sk = s.ctypes.data, i0 * s_si * isz, s_si, s_sk
                else:
                    s_addr, s_off, si, sk = s_edge.ctypes.data, 0, max(kk, 1), 1
                if ni == mr and full_cols and c_sj == 1:
                    micro(wide, like, kk, s_addr, s_off, si, sk, w_addr, w_off, w_step,
                          c.ctypes.data, (i0 * c_si + j0) * isz, c_si, acc)
                else:
                    if acc:
                        for i in range(ni):
                            for j in range(nj):
                                tile[i, j] = c[i0 + i, j0 + j]
                    micro(wide, like, kk, s_addr, s_off, si, sk, w_addr, w_off, w_step,
                          tile.ctypes.data, 0, NV * lanes, acc)
                    for i in range(ni):
                        for j in range(nj):
                            c[i0 + i, j0 + j] = tile[i, j]
            j0 += nj

    @njit
    def product(a, b, c, acc):
        """c ← a b, or c ← c + a b when ``acc``: a (m, k), b (k, n), c (m, n), one dtype; each
        element one in-order chain of fused multiply-adds over k (see the module's docstring)."""
        m, kk = a.shape
        n = b.shape[1]
        if b.shape[0] != kk or c.shape[0] != m or c.shape[1] != n:
            raise ValueError("product: shapes do not match, a (m, k), b (k, n), c (m, n)")
        if a.itemsize != c.itemsize or b.itemsize != c.itemsize:
            raise ValueError("product: a, b and c must have one dtype")
        if m == 0 or n == 0:
            return
        isz = c.itemsize
        # every view as numba's "any layout" type ([::1, ::1]: a step, so numba cannot assume
        # contiguity), so that _tiles is compiled once per dtype, not once per combination of
        # layouts (C, F, A) of its three arrays: a cold start costs seconds per combination
        a_, b_, c_ = a[::1, ::1], b[::1, ::1], c[::1, ::1]
        if b.strides[1] == isz or n == 1:
            _tiles(a_, b_, c_, acc)                 # c = a b, b's rows are the vectors
        elif a.strides[0] == isz or m == 1:
            _tiles(b_.T, a_.T, c_.T, acc)           # cᵀ = bᵀ aᵀ, aᵀ's rows are the vectors
        elif kk * n <= kk * m:
            _tiles(a_, np.ascontiguousarray(b)[::1, ::1], c_, acc)
        else:
            _tiles(b_.T, np.ascontiguousarray(a.T)[::1, ::1], c_.T, acc)

    return product


product = build(VECTOR_BITS)
"""c ← a b, or c ← c + a b when ``acc``, in the machine's widest vectors."""


__all__ = ["product", "build", "rows_per_tile", "VECTOR_BITS", "SOURCE_ID", "MR", "NV"]
