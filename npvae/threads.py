"""Thread control for training: BLAS (through threadpoolctl) and numba, set explicitly.

The compiled path (:mod:`npvae.compiled`, what ``fit`` runs for Dense-only models) uses one
pool: its 2 row blocks run on up to ``blas`` numba threads, each running its matrix products
(:func:`npvae.kernels.blas.gemm`: npvae's own kernel, or BLAS) on one thread.
The settings below are the engine path's (and the default ``blas`` = 2 is also the compiled
path's thread count).

Measured with ``benchmarks/bench_step.py`` on the 2-core development VM (784-400-20 step,
ms, median of 7): BLAS 1 / numba 1: 5.18, BLAS 1 / numba 2: 4.60, BLAS 2 / numba 1: 4.43,
BLAS 2 / numba 2: 51.2.  OpenBLAS threads and numba's parallel kernels interleaved on two
cores are pathological (11x slower), so the default is BLAS on 2 threads and numba on 1;
for the 16-64-64-4 step every setting gave 0.163-0.165 ms.  ``set_threads`` (or the
environment variables NPVAE_BLAS_THREADS / NPVAE_NUMBA_THREADS) changes the setting.
The limits apply inside ``fit``, ``loss_and_grad``, ``elbo`` and ``log_likelihood`` (and
``limited()``), so a user's own loop runs as fast as ``fit`` with no settings of its own.
Inside ``fit``'s compiled path, the epoch's evaluation (the validation ELBO, the diagnostics),
which is the engine's work, goes back to these settings (:func:`engine_limits`), and an
optimizer's update in a user's loop runs on the pool of the step that made its gradients
(:func:`update_limits`);
npvae never changes the process-wide settings at import, and restores them after each call.
Entering the limits costs a few µs: the BLAS thread count is set only when it differs from
the process's (a cached threadpoolctl controller; a fresh ``threadpool_limits`` scans the
loaded libraries, about 0.7 ms, and every limit keeps ~150 bytes of ctypes look-ups).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from contextlib import contextmanager

import numba as nb

from .validation import positive_int

DEFAULT_BLAS_THREADS = 2
DEFAULT_NUMBA_THREADS = 1


def _env_int(name):
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return positive_int(int(value), name)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None


_config = {"blas": _env_int("NPVAE_BLAS_THREADS") or DEFAULT_BLAS_THREADS,
           "numba": _env_int("NPVAE_NUMBA_THREADS") or DEFAULT_NUMBA_THREADS}


def set_threads(blas: int | None = None, numba: int | None = None) -> dict:
    """Threads for training: ``blas`` for matrix products, ``numba`` for the kernels
    (None keeps the current value).  Returns the settings."""
    if blas is not None:
        _config["blas"] = positive_int(blas, "blas")
    if numba is not None:
        _config["numba"] = positive_int(numba, "numba")
    return get_threads()


def get_threads() -> dict:
    return {"blas": _config["blas"], "numba": min(_config["numba"], nb.config.NUMBA_NUM_THREADS)}


# The pool the last training step ran on: "numba" for the compiled step (numba's threads;
# its products npvae's own, or BLAS on one thread a block), "blas" for the engine's (OpenBLAS
# on its threads, which spin for a while after each product, waiting for the next).
_last_pool = "blas"


def ran_on(pool: str) -> None:
    """Record the pool a training step just ran on ("numba" or "blas"), for
    :func:`update_limits`."""
    global _last_pool
    if pool not in ("numba", "blas"):
        raise ValueError(f"pool must be 'numba' or 'blas', got {pool!r}")
    _last_pool = pool


def update_limits() -> dict:
    """The thread limits for an optimizer's update (:meth:`npvae.optim.Optimizer.update`):
    the pool of npvae's last step in this process, which in a loop of ``loss_and_grad`` and
    ``update`` is the step that made the gradients (gradients made otherwise may update on
    the wrong pool: slower, never different numbers).  After a compiled step, numba on npvae's
    thread count (``blas``), as the compiled step updates inside ``fit``: right after a
    step, whose buffers pushed Adam's moments out of cache, Adam's pass over 784-400-20's
    parameters took 0.56 ms on one thread and 0.30 on two (timed inside a user's loop).  After
    the engine's step, the training settings: OpenBLAS's
    threads are still spinning, and a second numba thread next to them made a user's loop
    3.5x slower (8.4 ms a step against 2.4)."""
    if _last_pool == "numba":
        return {"numba": _config["blas"]}
    return {}


def engine_limits() -> dict:
    """The training settings, given explicitly: a block under them runs with them even inside
    other limits (``fit``'s compiled path runs on numba's threads).  For the engine's work:
    its products on BLAS's threads, its kernels on one numba thread.  Measured after compiled
    steps (784-400-20, the ELBO of 2,000 examples): 24 ms under these, 39 ms on 2 numba
    threads and 1 BLAS thread, 53 ms on 2 of each."""
    return {"blas": _config["blas"], "numba": _config["numba"]}


_controller = None
_depth = 0
_current = None  # the (blas, numba) threads in effect inside limited()


def _blas_controller():
    global _controller
    if _controller is None:
        # SciPy's BLAS, which the compiled step calls (numba's np.dot), is loaded first, so
        # that the controller, which sees the libraries loaded when it is made, limits it too
        try:
            import scipy.linalg.cython_blas  # noqa: F401
        except ImportError:  # pragma: no cover - scipy is a dependency
            pass
        from threadpoolctl import ThreadpoolController  # after SciPy's BLAS is loaded (above)
        _controller = ThreadpoolController()
    return _controller


_getters = None


def _blas_thread_getters():
    """One callable per BLAS library: its thread count now.  OpenBLAS's own
    ``*openblas_get_num_threads*`` found once and kept (threadpoolctl looks the symbol up on
    every call, and each failed look-up of a name variant keeps some memory); any other
    library through threadpoolctl."""
    global _getters
    if _getters is None:
        getters = []
        for lib in _blas_controller().lib_controllers:
            if lib.user_api != "blas":
                continue
            fn = None
            if lib.internal_api == "openblas":
                try:
                    dll = ctypes.CDLL(lib.filepath)
                except OSError:
                    dll = None
                for name in ("openblas_get_num_threads", "openblas_get_num_threads64_",
                             "scipy_openblas_get_num_threads", "scipy_openblas_get_num_threads64_"):
                    fn = getattr(dll, name, None) if dll is not None else None
                    if fn is not None:
                        fn.restype = ctypes.c_int
                        fn.argtypes = []
                        break
            getters.append(fn if fn is not None else (lambda lib=lib: lib.num_threads))
        _getters = getters
    return _getters


@contextmanager
def limited(blas: int | None = None, numba: int | None = None):
    """Run a block with the training thread settings (or the ones given).  Nested blocks
    without arguments keep the outer block's settings and cost nothing."""
    global _depth, _current
    if _depth and blas is None and numba is None:
        yield
        return

    n_blas = blas or _config["blas"]
    n_numba = min(numba or _config["numba"], nb.config.NUMBA_NUM_THREADS)
    if _depth and _current == (n_blas, n_numba):  # already in effect: nothing to set
        yield
        return
    previous = nb.get_num_threads()
    controller = _blas_controller()
    # BLAS already runs with the wanted threads (the usual case): nothing to set.  Each
    # threadpoolctl limit keeps ~150 bytes (its ctypes look-ups), so it is not entered per step.
    # (the threads in effect now, not when npvae first looked: a caller's own
    # threadpool_limits may be around this call)
    now = {get() for get in _blas_thread_getters()}
    blas_limit = (contextlib.nullcontext() if now == {n_blas}
                  else controller.limit(limits=n_blas, user_api="blas"))
    _depth += 1
    outer, _current = _current, (n_blas, n_numba)
    try:
        with blas_limit:
            nb.set_num_threads(n_numba)
            try:
                yield
            finally:
                nb.set_num_threads(previous)
    finally:
        _depth -= 1
        _current = outer
