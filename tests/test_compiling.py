"""Compiles of npvae's kernels are announced once they last, with what compiles and an
estimate, and followed by how long they took; short ones and other packages' say nothing."""
import re
import time

import numba
import pytest

from npvae.kernels import compiling


@pytest.fixture
def quick(monkeypatch):
    compiling.wait(timeout=60)  # a stretch of real compiles left by an earlier test ends first
    monkeypatch.setattr(compiling, "DELAY", 0.5)
    monkeypatch.setattr(compiling, "GAP", 0.2)
    compiling.announce(True, bar=False)
    yield
    compiling.announce(True)


def compile_for(module, seconds, monkeypatch, name=None):
    from numba.core import event
    dispatcher = numba.njit(lambda x: x + 1)
    fn = dispatcher.py_func
    monkeypatch.setattr(fn, "__module__", module)
    if name:
        monkeypatch.setattr(fn, "__name__", name)
    with event.trigger_event("numba:compile", data={"dispatcher": dispatcher, "args": (), "return_type": None}):
        time.sleep(seconds)
    compiling.wait()


def test_a_long_compile_is_announced_with_its_estimate_and_timed(quick, monkeypatch, capsys):
    compile_for("npvae.kernels.step", 1.5, monkeypatch, name="adam_steps_blocks")
    err = capsys.readouterr().err
    what, est = compiling.ESTIMATES["adam_steps_blocks"]
    assert f"npvae: compiling {what} for this CPU, once (about {est} s on a 2-core machine" in err
    seconds = float(re.search(r"npvae: compiled in (\d+\.\d) s", err).group(1))
    assert 1.4 <= seconds <= 10.0


def test_an_unknown_kernel_is_announced_without_an_estimate(quick, monkeypatch, capsys):
    compile_for("npvae.kernels.arrays", 1.5, monkeypatch, name="something_new")
    err = capsys.readouterr().err
    assert "npvae: compiling npvae's kernels for this CPU, once (" in err and "about" not in err
    assert "npvae: compiled in" in err


def test_short_compiles_other_packages_and_announce_false_say_nothing(quick, monkeypatch, capsys):
    compile_for("npvae.kernels.step", 0.05, monkeypatch)      # shorter than DELAY
    compile_for("someone_else.module", 1.5, monkeypatch)      # not npvae's
    compiling.announce(False)
    compile_for("npvae.kernels.step", 1.5, monkeypatch)
    assert capsys.readouterr().err == ""


def test_other_compiles_are_never_broken_by_the_listener():
    """numba builds a jitclass's constructor with exec, whose functions have no module name:
    the listener must let that compile (anyone's) through untouched."""
    from numba.experimental import jitclass

    @jitclass([("v", numba.float64)])
    class Point:
        def __init__(self, v):
            self.v = v

    assert Point(1.5).v == 1.5
    from numba.core import event
    with event.trigger_event("numba:compile", data={"dispatcher": object(), "args": (), "return_type": None}):
        pass  # an event with no function at all
    compiling.wait()
