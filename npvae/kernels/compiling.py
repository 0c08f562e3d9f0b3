"""Saying when numba compiles npvae's kernels: what, about how long, that it is alive, and
how long it took.

numba compiles a kernel the first time it is called with argument types it has not seen
(a new dtype, likelihood or layer mix), and :mod:`npvae.kernels.jit` caches the result, so
only a cold cache waits.  npvae listens to numba's compile events (``"numba:compile"``) for
its own kernels.  Once a stretch of compiling has gone on for :data:`DELAY` seconds it
prints one line: what is compiling and an estimate, measured once per kernel on a 2-core
machine (:data:`ESTIMATES`); on a terminal a bar then counts the seconds against that
estimate, with an ETA, so a long compile shows it is alive.  When the stretch ends (no
compile for :data:`GAP` seconds) it prints how long numba spent compiling in it.  Short
compiles say nothing.

``announce(False)`` silences it; it starts silenced in an MPI rank other than 0 (the rank an
``mpiexec`` launcher gives in its environment), so one terminal shows one notice.
``announce(True, bar=False)``
keeps the two lines without the bar (``npvae ... --quiet``).  The bar is drawn only on a
terminal (tqdm's own test); the two lines are printed in logs too.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time

from numba.core import event

from . import jit

DELAY = 2.0
"""Seconds of compiling before it is announced."""
GAP = 0.5
"""Seconds without a compile that end a stretch of compiling."""

ESTIMATES = {
    # outermost kernel: (what it is, seconds to compile with a cold cache on a 2-core machine)
    "adam_steps_blocks": ("the training step (row blocks on numba's threads)", 26),
    "adam_steps": ("the training step", 19),
    "log_weights": ("ln p(x)'s importance weights", 10),
}
"""What the long compiles are and how long each took, measured (2026-12-08, a fresh kernel
cache, the thread time of numba's compile events, kernels it calls included): 25.4 s for
``npvae train`` on the built-in data (the step in two row blocks), 18.6 s for a table of 16
features (one block), 9.7 s for ``npvae evaluate``'s importance weights.  Another
likelihood, dtype or layer mix compiles its own copy, for about as long; a kernel not named
here is announced without an estimate."""

_state = threading.local()  # per thread: how deep in numba's compile events it is
_lock = threading.Lock()
_enabled = all(os.environ.get(v, "0") in ("", "0") for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"))
_bar = True
_stretch = None  # the stretch of compiling under way, or None


def announce(enabled: bool, *, bar: bool = True) -> None:
    """Say (True, the default) or keep quiet about (False) compiles of npvae's kernels;
    ``bar=False``: the lines without the counting bar."""
    global _enabled, _bar
    _enabled, _bar = bool(enabled), bool(bar)


def is_announcing() -> bool:
    return _enabled


def wait(timeout: float = GAP + 1.0) -> None:
    """Let a stretch of compiling that has just ended say so (before a process exits)."""
    stretch = _stretch
    if stretch is not None:
        stretch.thread.join(timeout)


def _say(msg: str) -> None:
    if sys.stderr is None:  # no stderr (pythonw, 2>&-): tqdm would write to stdout instead
        return
    try:
        from tqdm import tqdm  # only when a message is written: kept off `import npvae`
        tqdm.write(msg, file=sys.stderr)
    except (OSError, ValueError, AttributeError):  # stderr closed or gone: nothing to tell
        pass


class _Stretch:
    """Compiling that goes on with gaps shorter than GAP: timed, announced once it passes
    DELAY, and closed by its watcher thread."""

    def __init__(self):
        self.start = time.monotonic()
        self.compiling = 0  # outermost compiles under way (one per compiling thread)
        self.seconds = 0.0  # their summed durations so far
        self.last_end = self.start
        self.kernel = None  # the first kernel of ESTIMATES compiled in this stretch
        self.shown = False
        self.bar = None
        self.thread = threading.Thread(target=self._watch, name="npvae-compile-notice", daemon=True)
        self.thread.start()

    def begin(self, name):
        self.compiling += 1
        if self.kernel is None and name in ESTIMATES:
            self.kernel = name

    def end(self, seconds):
        self.compiling -= 1
        self.seconds += seconds
        self.last_end = time.monotonic()

    def _notice(self):
        where = (f"kept in {jit.KERNEL_CACHE} for later runs" if jit.KERNEL_CACHE is not None else
                 "no writable cache folder: compiled again by every run; set NUMBA_CACHE_DIR to keep them")
        if self.kernel is not None:
            what, est = ESTIMATES[self.kernel]
            _say(f"npvae: compiling {what} for this CPU, once (about {est} s on a 2-core machine; {where})")
        else:
            est = None
            _say(f"npvae: compiling npvae's kernels for this CPU, once ({where})")
        if not _bar or sys.stderr is None:
            return
        try:
            from tqdm import tqdm  # only when a bar is drawn: kept off `import npvae`
            self.bar = tqdm(total=est, desc="compiling", unit="s", leave=False, disable=None,
                            bar_format="{desc}: {n:.0f}/{total:.0f} s {bar} ETA {remaining}" if est else
                            "{desc}: {n:.0f} s")
        except (OSError, ValueError, AttributeError):
            self.bar = None

    def _watch(self):
        global _stretch
        while True:
            time.sleep(0.1)
            with _lock:
                now = time.monotonic()
                if self.compiling == 0 and now - self.last_end >= GAP:
                    _stretch = None
                    break
                if not self.shown and _enabled and now - self.start >= DELAY:
                    self.shown = True
                    self._notice()
                if self.bar is not None:
                    elapsed = now - self.start
                    if self.bar.total is not None and elapsed > self.bar.total:
                        self.bar.total = elapsed  # later than the estimate: keep counting
                    self.bar.n = elapsed
                    self.bar.refresh()
        if self.bar is not None:
            self.bar.close()
        if self.shown and _enabled:
            _say(f"npvae: compiled in {self.seconds:.1f} s")


class _Listener(event.Listener):
    """Times the outermost compiles of npvae's kernels.  A notice must never break a
    compile, its own or anyone else's: any error here is dropped."""

    def on_start(self, ev):
        try:
            self._start(ev)
        except Exception:  # noqa: BLE001 - see the class's docstring
            pass

    def on_end(self, ev):
        try:
            self._end()
        except Exception:  # noqa: BLE001
            pass

    @staticmethod
    def _start(ev):
        global _stretch
        depth = getattr(_state, "depth", 0)
        _state.depth = depth + 1
        if depth:
            return
        _state.own = None
        fn = getattr(ev.data.get("dispatcher"), "py_func", None)
        module = getattr(fn, "__module__", None) or ""  # None for code made by exec (a jitclass's)
        if not module.startswith("npvae."):
            return
        _state.own = time.monotonic()
        with _lock:
            if _stretch is None:
                _stretch = _Stretch()
            _stretch.begin(fn.__name__)

    @staticmethod
    def _end():
        _state.depth = max(0, getattr(_state, "depth", 0) - 1)
        if _state.depth or getattr(_state, "own", None) is None:
            return
        seconds, _state.own = time.monotonic() - _state.own, None
        with _lock:
            if _stretch is not None:
                _stretch.end(seconds)


event.register("numba:compile", _Listener())
atexit.register(wait)  # a script that ends right after compiling still closes its bar and says so

__all__ = ["announce", "is_announcing", "wait", "ESTIMATES", "DELAY", "GAP"]
