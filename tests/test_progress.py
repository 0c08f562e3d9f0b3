"""Long calls show a bar with an ETA on a terminal, nothing in a log, and "auto" stays quiet
for quick calls."""
import io
import sys

import numpy as np
import pytest

import npvae
from npvae import progress
from npvae.testing import check_gradients


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def terminal(monkeypatch):
    """A terminal as stderr.  (Set when the test's body starts: pytest puts its own capture
    back on sys.stderr between a fixture's set-up and the test.)"""
    screen = Terminal()

    def attach():
        monkeypatch.setattr(sys, "stderr", screen)
        return screen
    return attach


def small_check(progress_setting):
    model = npvae.VAE(4, 2, hidden=(3,), dtype=np.float64, seed=0)
    x = np.random.default_rng(0).random((3, 4))
    eps = np.random.default_rng(1).standard_normal((3, 2))
    return check_gradients(lambda p: model.loss_and_grad(x, eps=eps), model.params, progress=progress_setting)


def test_a_gradient_check_counts_its_elements_with_an_eta_on_a_terminal(terminal):
    terminal = terminal()
    report = small_check(True)
    screen = terminal.getvalue()
    n = sum(r.shape and int(np.prod(r.shape)) or 1 for r in report.rows)
    assert "gradient check" in screen and f"/{n}" in screen and "element" in screen
    assert "<" in screen  # tqdm's "elapsed<remaining": the ETA


def test_ln_px_shows_its_bar_on_a_terminal_and_nothing_when_asked_not_to(terminal):
    terminal = terminal()
    model = npvae.VAE(6, 2, hidden=(4,), seed=0)
    x = np.random.default_rng(0).random((5, 6)).astype(np.float32)
    model.log_likelihood(x, n_samples=50, progress=True)
    assert "ln p(x), K=50" in terminal.getvalue()
    terminal.seek(0)
    terminal.truncate()
    model.log_likelihood(x, n_samples=50, progress=False)
    assert terminal.getvalue() == ""


def test_auto_draws_nothing_for_a_quick_call_and_nothing_goes_to_a_log(terminal, monkeypatch):
    terminal = terminal()
    small_check("auto")  # well under AUTO_DELAY
    assert terminal.getvalue() == ""
    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    small_check(True)
    assert log.getvalue() == ""


def test_progress_takes_true_false_or_auto():
    with pytest.raises(ValueError, match="progress must be"):
        progress.bar("yes", 10, "x", "it")
    assert progress.setting(np.False_) is False and progress.setting(0) is False  # no bar, as False
    assert progress.setting(np.True_) is True and progress.setting("auto") == "auto"
    with pytest.raises(ValueError, match="progress must be"):
        npvae.VAE(3, 1, seed=0).log_likelihood(np.zeros((1, 3)), n_samples=2, progress="yes")
