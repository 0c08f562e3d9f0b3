"""Hypothesis profiles: "ci" (default, fast) and "long" (HYPOTHESIS_PROFILE=long)."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=500, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Subprocesses that point NPVAE_CACHE at a temporary folder (for their data) still share the
# compiled kernels of this run, instead of compiling them again each time.
if not os.environ.get("NUMBA_CACHE_DIR"):
    from npvae.kernels.jit import npvae_cache_root

    os.environ["NUMBA_CACHE_DIR"] = str(npvae_cache_root() / "kernels")
