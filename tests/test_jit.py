"""Where compiled kernels are cached: never inside the installed package; a clean fallback
when the cache folder cannot be written; two processes compiling at once."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import npvae
from npvae.kernels import jit

PACKAGE = Path(npvae.__file__).parent
PROBE = textwrap.dedent("""
    import json, numpy as np, npvae
    from npvae.kernels import jit
    m = npvae.VAE(30, 3, hidden=(20,), seed=1)
    x = np.random.default_rng(0).random((256, 30)).astype(np.float32)
    # the engine's kernels (npvae.activations' and the other formula modules'): the cache's rules are the same for every
    # kernel, and these compile in seconds where the compiled step takes half a minute
    h = npvae.fit(m, x, epochs=2, batch_size=64, binarize="dynamic", progress=False, compiled=False)
    print(json.dumps({"cache": None if jit.KERNEL_CACHE is None else str(jit.KERNEL_CACHE),
                      "loss": h[-1]["loss"], "w": float(m.params["decoder.out.W"].sum())}))
""")


def files_under(folder):
    return {p for p in folder.rglob("*") if p.is_file()}


def run_probe(env_extra, drop=("NUMBA_CACHE_DIR",)):
    env = {k: v for k, v in os.environ.items() if k not in drop and k != "NUMBA_DISABLE_JIT"}
    env.update(env_extra)
    return subprocess.Popen([sys.executable, "-c", PROBE], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def result(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_kernels_are_cached_in_npvae_cache_and_never_in_the_package(tmp_path):
    before = files_under(PACKAGE)
    res = result(run_probe({"NPVAE_CACHE": str(tmp_path / "cache")}))
    assert res["cache"] == str(tmp_path / "cache" / "kernels")
    assert any((tmp_path / "cache" / "kernels").rglob("activations.*.nbi"))
    written = {p for p in files_under(PACKAGE) - before if "__pycache__" not in p.parts or
               p.suffix in (".nbi", ".nbc")}
    assert not written, f"files written into the installed package: {sorted(written)[:5]}"


def test_numba_cache_dir_is_honoured(tmp_path):
    res = result(run_probe({"NUMBA_CACHE_DIR": str(tmp_path / "mine")}, drop=()))
    assert res["cache"] == str(tmp_path / "mine")
    assert any((tmp_path / "mine").rglob("*.nbi"))


def test_an_unwritable_cache_folder_compiles_in_memory_without_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # mkdir below a file fails, even as root
    before = files_under(PACKAGE)
    res = result(run_probe({"NPVAE_CACHE": str(blocker / "cache")}))
    assert res["cache"] is None
    assert not {p for p in files_under(PACKAGE) - before if p.suffix in (".nbi", ".nbc")}
    reference = result(run_probe({"NPVAE_CACHE": str(tmp_path / "ok")}))
    assert res["loss"] == reference["loss"] and res["w"] == reference["w"]


def test_two_processes_compiling_into_one_empty_cache_at_once(tmp_path):
    env = {"NPVAE_CACHE": str(tmp_path / "shared")}
    a, b = run_probe(env), run_probe(env)
    ra, rb = result(a), result(b)
    assert ra == rb
    assert result(run_probe(env)) == ra  # and a third process reads what they wrote


def test_cache_is_warm_after_a_run(tmp_path):
    env = {"NPVAE_CACHE": str(tmp_path / "c")}
    code = ("import npvae; from npvae.kernels import jit; "
            "print(jit.cache_is_warm(npvae.activations.__file__))")
    check = lambda: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                   env={**{k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"},
                                        **env}).stdout.strip()
    assert check() == "False"
    result(run_probe(env))
    assert check() == "True"


def test_a_named_cpu_gets_the_kernels_that_cpu_would_run():
    """NUMBA_CPU_NAME / NUMBA_CPU_FEATURES name the CPU numba compiles for, and npvae's matrix
    kernel follows it: haswell's 256-bit vectors (as on an AVX2 machine), 128-bit ones without
    FMA instructions for generic (the C library's fma then), or an explicit feature list."""
    code = "from npvae.kernels import gemm, blas; print(gemm.VECTOR_BITS, blas.BLAS)"
    cases = {("haswell", None): "256 npvae", ("haswell", ""): "256 npvae", ("generic", None): "128 npvae",
             ("skylake-avx512", None): "512 npvae", ("x86-64", "+avx2,+fma"): "256 npvae",
             ("haswell", "+avx2,-fma"): "128 npvae", ("skylake-avx512", "-avx512f"): "256 npvae",
             ("generic", "+avx512f"): "512 npvae", ("Haswell", None): "256 npvae", ("core-avx2", None): "256 npvae"}
    for (name, features), want in cases.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU") and k != "NPVAE_BLAS"}
        env["NUMBA_CPU_NAME"] = name
        if features is not None:
            env["NUMBA_CPU_FEATURES"] = features
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == want, (name, features, out.stdout)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU") and k != "NPVAE_BLAS"}
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, NUMBA_ENABLE_AVX="0"), capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "128 npvae"  # numba told not to use AVX: neither does npvae


MISSES = textwrap.dedent("""
    import json, numpy as np, npvae
    from npvae import activations, likelihoods, optim, posterior
    from npvae.kernels import arrays, sums
    m = npvae.VAE(10, 2, hidden=(8,), seed=1)
    x = np.random.default_rng(0).random((64, 10)).astype(np.float32)
    npvae.fit(m, x, epochs=1, batch_size=32, progress=False, compiled=False)
    kernels = [getattr(mod, n) for mod in (activations, likelihoods, optim, posterior, arrays, sums) for n in dir(mod)]
    print(json.dumps({"at": npvae.__file__, "w": float(m.params["decoder.out.W"].sum()),
                      "misses": sum(sum(f.stats.cache_misses.values()) for f in kernels
                                    if hasattr(f, "stats") and hasattr(f, "signatures"))}))
""")


def test_two_installs_of_the_same_source_share_the_compiled_kernels(tmp_path):
    """The kernels are kept by the module's source, not the path it is installed at: a second
    copy of npvae (another environment, a reinstall) compiles nothing."""
    import shutil
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT")}
    env["NPVAE_CACHE"] = str(tmp_path / "cache")
    runs = []
    for copy in ("env-a", "env-b"):
        shutil.copytree(PACKAGE, tmp_path / copy / "npvae", ignore=shutil.ignore_patterns("__pycache__"))
        out = subprocess.run([sys.executable, "-c", MISSES], env=dict(env, PYTHONPATH=str(tmp_path / copy)),
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert [r["at"] for r in runs] == [str(tmp_path / c / "npvae" / "__init__.py") for c in ("env-a", "env-b")]
    assert runs[0]["misses"] > 0 and runs[1]["misses"] == 0
    assert runs[0]["w"] == runs[1]["w"]


def test_jit_refuses_a_cache_option():
    import pytest
    with pytest.raises(TypeError, match="cache"):
        jit.jit(cache=True)
