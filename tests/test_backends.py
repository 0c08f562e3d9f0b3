"""The model suite on both backends, the kernels as plain Python, and the on-disk cache.

These run pytest (or Python) in subprocesses, because the backend is chosen per process
(NPVAE_BACKEND) and NUMBA_DISABLE_JIT must be set before numba is imported.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
SUBRUN = os.environ.get("NPVAE_SUBRUN") == "1"
inside_subrun = pytest.mark.skipif(SUBRUN, reason="already inside a backend sub-run")


def run_pytest(env_extra, *files):
    env = dict(os.environ, NPVAE_SUBRUN="1", **env_extra)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *[str(TESTS / f) for f in files]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]
    return proc.stdout


@inside_subrun
def test_model_suite_on_the_numpy_backend():
    run_pytest({"NPVAE_BACKEND": "numpy"}, "test_model.py", "test_train.py", "test_optim.py",
               "test_likelihoods.py", "test_checkpoint.py", "test_engine_reference.py")


@inside_subrun
def test_kernels_and_model_as_plain_python():
    """NUMBA_DISABLE_JIT=1: every kernel runs as the Python it is written in."""
    run_pytest({"NUMBA_DISABLE_JIT": "1", "NPVAE_FD_EXAMPLES": "2"}, "test_backend_kernels.py",
               "test_model.py", "test_optim.py")


def test_backend_from_the_environment():
    code = "import npvae; print(npvae.get_backend())"
    for name in ("numpy", "numba"):
        out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, NPVAE_BACKEND=name),
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == name


CACHE_PROBE = textwrap.dedent("""
    import json, numpy as np, npvae
    from npvae import activations, likelihoods, optim, posterior
    from npvae.kernels import arrays, sums
    m = npvae.VAE(30, 3, hidden=(20,))
    opt = npvae.Adam(); state = opt.init(m.params)
    step = npvae.train.TrainStep(m, dynamic_binarize=True)
    x = np.random.default_rng(0).random((64, 30)).astype(np.float32)
    step(x, np.arange(64), np.random.default_rng(0), 1.0)
    opt.update(m.params, step.grads, state)
    stats = {}
    for module in (arrays, sums, activations, likelihoods, optim, posterior):
      for name in dir(module):
        f = getattr(module, name)
        if hasattr(f, "stats") and hasattr(f, "signatures") and f.signatures:
            stats[name] = [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())]
    print(json.dumps(stats))
""")


def test_compiled_kernels_load_from_the_disk_cache(tmp_path):
    """A second process compiles nothing: every kernel it used came from the cache."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("NUMBA_DISABLE_JIT", None)
    run = lambda: json.loads(subprocess.run([sys.executable, "-c", CACHE_PROBE], env=env, capture_output=True,
                                            text=True, check=True, timeout=300).stdout.strip().splitlines()[-1])
    first = run()
    assert first and any(miss for _, miss in first.values())  # compiled and written
    second = run()
    assert {"bias_activation_", "activation_backward_bias_grad_", "bernoulli_nll_", "adam_update_",
            "reparametrize_kl_"} <= second.keys()
    for name, (hits, misses) in second.items():
        assert misses == 0 and hits >= 1, (name, hits, misses)
    assert any(tmp_path.rglob("*.nbi"))
