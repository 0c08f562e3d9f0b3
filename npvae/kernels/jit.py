"""numba's ``njit`` with npvae's on-disk cache: where compiled kernels live, and whether
they are there yet.

numba's own default caches next to the source, in ``__pycache__``.  For an installed
package that is ``site-packages/npvae/kernels/__pycache__``: ``pip uninstall`` does not know
those files and leaves the folder behind, where it later shadows an editable install of the
same package as an empty namespace package.  So npvae keeps its compiled kernels in its own
cache folder instead, chosen once at import:

1. ``$NUMBA_CACHE_DIR`` when set (numba's own setting, honoured as numba does);
2. else ``$NPVAE_CACHE/kernels`` when ``NPVAE_CACHE`` is set;
3. else ``~/.cache/npvae/kernels`` (``$XDG_CACHE_HOME/npvae/kernels`` where that is set).

When that folder cannot be created or written (a read-only home, a locked-down node), the
kernels are compiled in memory for this process and nothing is written anywhere: slower to
start, never an error.  Two processes compiling at once is safe: numba writes each cache
file under a temporary name and renames it into place.  A cache written by another numba
version or for an edited source file is ignored and rewritten (numba keys each entry on
its version and the source file's hash).

Inside that folder a module's kernels live in a folder named for its file and a hash of
its source (:class:`ContentCacheLocator`), not for the path it is installed at, as numba's
own locator does: the same npvae in two environments (a virtual environment and an editable
checkout, a reinstall, two venvs of one user) shares its compiled kernels, and two versions
of a module keep theirs side by side.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import llvmlite.binding as llvm
from numba import njit
from numba.core import config as numba_config

try:
    from numba.core.caching import UserProvidedCacheLocator
except ImportError:  # numba before the locators had public names
    from numba.core.caching import _UserProvidedCacheLocator as UserProvidedCacheLocator


def npvae_cache_root() -> Path:
    """npvae's cache folder: ``$NPVAE_CACHE``, else ``$XDG_CACHE_HOME/npvae``, else
    ``~/.cache/npvae`` (generated data sets live here too)."""
    root = os.environ.get("NPVAE_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "npvae"


def _writable_folder(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def _choose_kernel_cache() -> Path | None:
    user = os.environ.get("NUMBA_CACHE_DIR")
    path = Path(user) if user else npvae_cache_root() / "kernels"
    return path if _writable_folder(path) else None


KERNEL_CACHE: Path | None = _choose_kernel_cache()
"""Where compiled kernels are kept for this process; None when they are compiled in memory."""


_PACKAGE = Path(__file__).resolve().parent.parent
FORMULA_MODULES = ("activations.py", "layers.py", "posterior.py", "likelihoods.py", "importance.py", "optim.py")
"""The modules outside ``kernels/`` that hold a formula's reference and its kernel side by side."""
# what compiled code can read besides its own module: numba bakes in the values of the globals
# a kernel reads (constants.py's numbers, codes.py's codes) and links in the kernels it calls
# (the formula modules'), so a change to any of them must give a new cache folder
_SHARED_SOURCES = (sorted((_PACKAGE / "kernels").glob("*.py")) + [_PACKAGE / "constants.py"]
                   + [_PACKAGE / name for name in FORMULA_MODULES])


def sources_id() -> str:
    """A hash of every source compiled code can read (see ``_SHARED_SOURCES``)."""
    h = hashlib.sha256()
    for path in _SHARED_SOURCES:
        try:
            h.update(path.read_bytes())
        except OSError:
            h.update(b"missing")
    return h.hexdigest()[:10]


def _module_folder(py_file) -> str:
    """The folder of a module's kernels: its file's name and a hash of its source and of the
    sources its compiled code may read (npvae/kernels/*.py, npvae/constants.py)."""
    h = hashlib.sha256()
    for path in [Path(py_file), *_SHARED_SOURCES]:
        try:
            h.update(path.read_bytes())
        except OSError:
            h.update(b"missing")
    return f"{Path(py_file).stem}-{h.hexdigest()[:16]}"


class ContentCacheLocator(UserProvidedCacheLocator):
    """numba's cache locator for a folder given in its ``CACHE_DIR``, keyed by the module's
    file name and source instead of the path it is installed at (numba names the folder after a
    hash of that path), so that every environment with the same source finds the same
    compiled kernels, and two versions keep theirs side by side.  numba still checks each
    entry against the source's hash, its own version and the CPU."""

    def __init__(self, py_func, py_file):
        super().__init__(py_func, py_file)
        self._cache_path = os.path.join(numba_config.CACHE_DIR, _module_folder(py_file))


@contextlib.contextmanager
def _numba_cache_dir(path: Path):
    # numba picks a function's cache folder once, when caching is enabled for it: setting its
    # CACHE_DIR (and the locator that reads it, where this numba lets a locator be named) just
    # for that moment steers npvae's kernels without touching anyone else's.
    old = numba_config.CACHE_DIR, getattr(numba_config, "CACHE_LOCATOR_CLASSES", None)
    numba_config.CACHE_DIR = str(path)
    if hasattr(numba_config, "CACHE_LOCATOR_CLASSES"):
        numba_config.CACHE_LOCATOR_CLASSES = f"{__name__}.ContentCacheLocator"
    try:
        yield
    finally:
        numba_config.CACHE_DIR = old[0]
        if hasattr(numba_config, "CACHE_LOCATOR_CLASSES"):
            numba_config.CACHE_LOCATOR_CLASSES = old[1]


# The vector extensions of CPUs that NUMBA_CPU_NAME may name (LLVM's names and aliases).
_AVX512_CPUS = ("skylake-avx512", "skx", "cascadelake", "cooperlake", "cannonlake", "icelake-client",
                "icelake-server", "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids",
                "graniterapids-d", "diamondrapids", "znver4", "znver5", "x86-64-v4")
_AVX2_CPUS = ("haswell", "core-avx2", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake", "arrowlake",
              "arrowlake-s", "lunarlake", "pantherlake", "gracemont", "sierraforest", "grandridge", "clearwaterforest",
              "znver1", "znver2", "znver3", "x86-64-v3")


def target_features() -> dict:
    """The vector extensions npvae's own kernels are built for, as ``{"avx2": True, "fma":
    True, "avx512f": False}``: the host CPU's; under ``NUMBA_CPU_NAME`` (another CPU emulated on
    this one, or a cache shared between machines) the named CPU's own, changed by the
    ``+feature,-feature`` list of ``NUMBA_CPU_FEATURES`` where one is given, as LLVM reads it
    (AVX-512 brings AVX2 and FMA with it).  ``haswell`` gives AVX2 and FMA, ``generic`` and
    a name not known here none.  (numba's own code, given a name and no feature list, is
    compiled with the host's features on top of the name's.)  ``NUMBA_ENABLE_AVX=0`` gives
    none."""
    if not getattr(numba_config, "ENABLE_AVX", True):
        return {"avx2": False, "fma": False, "avx512f": False}
    if numba_config.CPU_NAME:
        name = numba_config.CPU_NAME.strip().lower()
        wide = name in _AVX512_CPUS
        features = {"avx2": wide or name in _AVX2_CPUS, "fma": wide or name in _AVX2_CPUS, "avx512f": wide}
    else:
        try:
            features = dict(llvm.get_host_cpu_features())
        except RuntimeError:  # llvmlite cannot tell on this platform (numba then compiles without)
            features = {}
    for flag in (numba_config.CPU_FEATURES or "").split(","):
        flag = flag.strip()
        if flag[:1] in "+-" and len(flag) > 1:
            features[flag[1:]] = flag[0] == "+"
            if flag == "+avx512f":
                features["avx2"] = features["fma"] = True
    return features


# The arithmetic of every kernel that the compiled step is built from, in one place (numba's
# fastmath flags are the kernels' numerics).  Only "nsz" (the sign of a zero may be ignored):
# no "contract" (LLVM would fuse a multiply and an add into one FMA where the CPU has one, so
# a CPU without FMA, numba's generic target, rounds differently; where npvae wants an FMA it
# says so, as the gemm kernel does), no "arcp" and no "reassoc" (the sums keep the order
# written: npvae.kernels.sums), and never nnan / ninf (NaNs and infs surface).  So every
# kernel rounds the same way on every x86-64 CPU.
ELEMENTWISE = dict(fastmath={"nsz"}, error_model="numpy", nogil=True)


def jit(cache_subfolder: str = "", **options):
    """``numba.njit(**options)`` whose compiled code is cached in :data:`KERNEL_CACHE`
    (in its folder ``cache_subfolder`` when given: code compiled against one of several
    external libraries, such as :mod:`npvae.kernels.blas`'s two BLAS, keeps one cache each).

    Used as ``@jit(fastmath=..., parallel=True)``; ``cache`` is not an option here, it is
    decided once for the package.  Under ``NUMBA_DISABLE_JIT=1`` it returns the plain Python
    function, as njit does.
    """
    if "cache" in options:
        raise TypeError("npvae's jit chooses the cache itself; do not pass cache=")

    def decorate(fn):
        dispatcher = njit(**options)(fn)
        if KERNEL_CACHE is not None and hasattr(dispatcher, "enable_caching"):
            with _numba_cache_dir(KERNEL_CACHE / cache_subfolder if cache_subfolder else KERNEL_CACHE):
                try:
                    dispatcher.enable_caching()
                except RuntimeError:  # no locator for this source (a zip, a frozen app): in memory
                    pass
        return dispatcher
    return decorate


def cache_is_warm(module_file, cache_subfolder: str = "") -> bool:
    """True when the kernel cache (its folder ``cache_subfolder``) already holds compiled
    code for the module at ``module_file`` (its ``.nbi`` index files), so importing and
    running it will not compile."""
    if numba_config.DISABLE_JIT:
        return True
    if KERNEL_CACHE is None:
        return False
    root = KERNEL_CACHE / cache_subfolder if cache_subfolder else KERNEL_CACHE
    stem = Path(module_file).stem
    if hasattr(numba_config, "CACHE_LOCATOR_CLASSES"):
        folder = root / _module_folder(module_file)
    else:
        folder = root / UserProvidedCacheLocator.get_suitable_cache_subpath(str(module_file))
    py = f".py{sys.version_info[0]}{sys.version_info[1]}"  # numba's index files are per Python version
    try:
        return any(p.name.startswith(stem + ".") and py in p.name for p in folder.glob("*.nbi"))
    except OSError:
        return False


__all__ = ["jit", "KERNEL_CACHE", "cache_is_warm", "npvae_cache_root", "target_features", "ContentCacheLocator",
           "ELEMENTWISE", "FORMULA_MODULES", "sources_id"]
