"""Progress bars for long calls: a tqdm bar with an ETA on a terminal, nothing in a log.

``progress`` arguments across npvae take True (a bar on a terminal), False (none) or
``"auto"`` (a bar on a terminal, shown only once the call has lasted :data:`AUTO_DELAY`
seconds, so quick calls draw nothing).  tqdm decides what a terminal is (``disable=None``:
no bar when stderr is not a TTY), and tqdm.auto draws a widget in a notebook.
"""
from __future__ import annotations

import sys

AUTO_DELAY = 2.0
"""Seconds an ``"auto"`` bar waits before it is drawn."""


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def setting(progress):
    """``progress`` checked: ``"auto"``, or True or False (anything bool() takes)."""
    if isinstance(progress, str):
        if progress != "auto":
            raise ValueError(f"progress must be True, False or 'auto', got {progress!r}")
        return "auto"
    try:
        return bool(progress)
    except Exception:  # noqa: BLE001 - an array, or an object whose truth is an error
        raise ValueError(f"progress must be True, False or 'auto', got {progress!r}") from None


def bar(progress, total, desc, unit, **options):
    """A bar counting to ``total`` ``unit``s (``update(n)``, ``close()``), or one that draws
    nothing when ``progress`` is False; ``options`` go to tqdm (``unit_scale``...)."""
    progress = setting(progress)
    if progress is False or sys.stderr is None:
        return _NoBar()
    try:
        from tqdm.auto import tqdm  # only when a bar is drawn: kept off `import npvae`
        return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=None,
                    delay=AUTO_DELAY if progress == "auto" else 0.0, **options)
    except (OSError, ValueError, AttributeError):  # stderr closed or unusable: no bar, no error
        return _NoBar()


__all__ = ["bar", "setting", "AUTO_DELAY"]
