"""The compiled ln p(x)'s Bernoulli terms on one thread, per 64 rows of 784 logits: the
kernel as log_weights runs it (npvae.kernels.step.bernoulli_row + row_log_lik; float32
logits take vmath.exp32), a float64 exp alone, the reduction alone (on float64 scratch), an
exp in float32 arithmetic, and an older fused terms-and-product pass (float64).  Medians of 200 calls.

Run:  python benchmarks/micro_log_lik.py
"""
import time, math, numpy as np, numba
from npvae.kernels import step, vmath
from npvae.kernels.jit import jit
rng = np.random.default_rng(0)
R, D = 64, 784
out = (rng.standard_normal((R, D)) * 3).astype(np.float32)
x = (rng.random((R, D)) < 0.3).astype(np.float32)
terms = np.empty((2, D))
lv = np.zeros(D, np.float32); acc = np.zeros(1)
E = jit(cache_subfolder=step.CACHE, fastmath={"contract", "nsz", "arcp"}, error_model="numpy", nogil=True)
Rd = jit(cache_subfolder=step.CACHE, fastmath={"contract", "nsz", "arcp", "reassoc"}, error_model="numpy", nogil=True)
@E
def cur(out, x, lv, terms, acc):
    # what log_weights runs per decoder row: the elementwise pass, then the float64 reduction
    lin, e = np.empty(out.shape[1], out.dtype), np.empty(out.shape[1], out.dtype)
    s = 0.0
    for r in range(out.shape[0]):
        step.bernoulli_row(out, r, x, r, lin, e)
        s += step.row_log_lik(step.BERNOULLI, terms[0], lin, e)
    acc[0] = s
@E
def terms_only(out, x, terms):
    for r in range(out.shape[0]):
        o = out[r]; xr = x[r]; t = terms[0]
        for j in range(o.shape[0]):
            l = o[j]
            t[j] = xr[j] * l - (l if l > 0 else 0.0)
@E
def exp_only(out, terms):
    for r in range(out.shape[0]):
        o = out[r]; f = terms[1]
        for j in range(o.shape[0]):
            f[j] = 1.0 + np.float64(vmath.exp(-abs(o[j])))
@E
def exp32_only(out, f32):
    for r in range(out.shape[0]):
        o = out[r]
        for j in range(o.shape[0]):
            f32[j] = np.float32(1.0) + vmath.exp(-abs(o[j]))
@Rd
def red_only(terms, acc):
    s = 0.0
    for r in range(64):
        s += step.row_log_lik(step.BERNOULLI, terms[0], terms[0], terms[1])
    acc[0] = s
f32 = np.empty(D, np.float32)
fs = dict(cur=lambda: cur(out, x, lv, terms, acc), terms=lambda: terms_only(out, x, terms), exp=lambda: exp_only(out, terms),
          exp32=lambda: exp32_only(out, f32), red=lambda: red_only(terms, acc))
for f in fs.values(): f()
for rep in range(1):
    for name, f in fs.items():
        ts=[]
        for _ in range(200):
            t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
        print(name, f"{np.median(ts)*1e6:.1f} us")
from numba import types
from numba.extending import intrinsic
from llvmlite import ir
@intrinsic
def _bits_to_float32(typingctx, bits):
    sig = types.float32(types.int32)
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return sig, codegen
I = jit(fastmath={"contract", "nsz", "arcp"}, error_model="numpy", inline="always")
@I
def exp_neg32(x):
    # e^x for x <= 0 in float32 arithmetic
    f = np.float32
    xc = max(x, f(-87.0))
    k = math.floor(xc * f(1.4426950408889634) + f(0.5))
    r = (xc - k * f(0.693359375)) - k * f(-2.12194440e-4)
    p = f(1.9875691500E-4)
    p = p * r + f(1.3981999507E-3)
    p = p * r + f(8.3334519073E-3)
    p = p * r + f(4.1665795894E-2)
    p = p * r + f(1.6666665459E-1)
    p = p * r + f(5.0000001201E-1)
    p = p * r * r + r + f(1.0)
    return p * _bits_to_float32(np.int32(k + f(127.0)) << 23)
@E
def exp32b(out, f32):
    for r in range(out.shape[0]):
        o = out[r]
        for j in range(o.shape[0]):
            f32[j] = np.float32(1.0) + exp_neg32(-abs(o[j]))
@Rd
def red4(terms, acc):
    s = 0.0
    D = terms.shape[1]
    for r in range(64):
        a = 0.0
        t = terms[0]; f = terms[1]
        for j in range(D):
            a += t[j]
        for j0 in range(0, D, 512):
            p0 = 1.0; p1 = 1.0; p2 = 1.0; p3 = 1.0
            j1 = min(j0 + 512, D)
            j = j0
            while j + 4 <= j1:
                p0 *= f[j]; p1 *= f[j+1]; p2 *= f[j+2]; p3 *= f[j+3]
                j += 4
            while j < j1:
                p0 *= f[j]; j += 1
            a -= math.log(p0 * p1 * p2 * p3)
        s += a
    acc[0] = s
exp32b(out, f32); red4(terms, acc)
ref = 1 + np.exp(-np.abs(out.astype(np.float64)))
exp32b(out, f32); print("exp32b max rel err", np.max(np.abs(f32[None] - ref[-1:]) / ref[-1:]))
for rep in range(1):
    for name, f in dict(exp32b=lambda: exp32b(out, f32), red4=lambda: red4(terms, acc), red=lambda: red_only(terms, acc)).items():
        ts=[]
        for _ in range(200):
            t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
        print(name, f"{np.median(ts)*1e6:.1f} us")
@E
def exp_factors(out, f):
    for j in range(out.shape[0]):
        f[j] = 1.0 + np.float64(vmath.exp(-abs(out[j])))
@Rd
def fused_red(out, x, f):
    acc = 0.0
    D = out.shape[0]
    for j in range(D):
        l = np.float64(out[j])
        acc += x[j] * l - (l if l > 0 else 0.0)
    for j0 in range(0, D, 512):
        p = 1.0
        for j in range(j0, min(j0 + 512, D)):
            p *= f[j]
        acc -= math.log(p)
    return acc
@E
def fused(out, x, terms, acc):
    s = 0.0
    for r in range(out.shape[0]):
        exp_factors(out[r], terms[1])
        s += fused_red(out[r], x[r], terms[1])
    acc[0] = s
acc2 = np.zeros(1)
fused(out, x, terms, acc2); cur(out, x, lv, terms, acc); print("fused vs cur", acc2[0], acc[0])
for rep in range(1):
    for name, f in dict(cur=lambda: cur(out, x, lv, terms, acc), fused=lambda: fused(out, x, terms, acc2)).items():
        ts=[]
        for _ in range(300):
            t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
        print(name, f"{np.median(ts)*1e6:.1f} us")
