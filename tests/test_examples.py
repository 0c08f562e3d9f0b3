"""The examples and docs stay true: each runs (quickly) and says what the docs quote.

Every command line that an example's docstring shows ("Run:  python examples/..." and the
like) is run here as written (RUN_AS_WRITTEN: the test that runs it), or is a ``pip install``
of the project, checked instead of run (helpers.check_pip_install), or is marked on the line
after it in the docstring itself, "(not run in tests: the reason)".
test_every_docstring_command_is_run_checked_or_marked holds the docstrings to that, so a new
command cannot go untested unnoticed.  A script too slow to run as written still runs here
with small arguments."""
import ast
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import check_pip_install

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
COMMAND = re.compile(r"(?:python|pip install|mpiexec) ")
NOT_RUN = "(not run in tests:"

# A docstring's command (continuation lines joined, spaces collapsed) -> the test that runs it
# as written: a script with its defaults, in a fresh folder (its outputs go there).
RUN_AS_WRITTEN = {
    "python examples/quickstart.py": "test_quickstart_runs_and_learns",
    "python examples/gradient_flow.py": "test_gradient_flow_example_prints_the_documented_numbers",
    "python -m pytest examples/custom_layer.py": "test_custom_layer_example_and_its_property_test",
    "python examples/ising.py [--L 16] [--epochs 40] [--out runs/examples/ising]":
        "test_ising_example_as_documented",
}


def run(name, *args, cwd):
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, check=True, timeout=300, cwd=cwd).stdout


def docstring_commands():
    """(example, command, marked not run) for each command line of the examples' docstrings."""
    found = []
    for path in sorted(EXAMPLES.rglob("*.py")):
        lines = (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").splitlines()
        i = 0
        while i < len(lines):
            text = lines[i].strip().removeprefix("Run:").strip()
            i += 1
            if not COMMAND.match(text):
                continue
            while i < len(lines) and lines[i].strip().startswith("["):   # continued options
                text += " " + lines[i].strip()
                i += 1
            command = " ".join(re.split(r"\s{2,}\(", text)[0].split())   # without a "  (note)"
            marked = i < len(lines) and lines[i].strip().startswith(NOT_RUN)
            found.append((path.relative_to(EXAMPLES.parent).as_posix(), command, marked))
    return found


def test_every_docstring_command_is_run_checked_or_marked():
    commands = docstring_commands()
    assert len(commands) >= 10, commands
    for example, command, marked in commands:
        if command.startswith("pip install"):
            print(f"{example}: $ {command}\n  {check_pip_install(command)}")
        elif not marked:
            assert command in RUN_AS_WRITTEN, (
                f"{example} shows {command!r}: run it as written in tests/test_examples.py (and "
                f"list it in RUN_AS_WRITTEN), or mark it on the next line '{NOT_RUN} why)'")
    shown = {c for _, c, _ in commands}
    for command, test in RUN_AS_WRITTEN.items():
        assert command in shown, f"RUN_AS_WRITTEN lists {command!r}, which no docstring shows"
        assert callable(globals().get(test)), f"RUN_AS_WRITTEN names {test}, which is not here"
    for path in sorted(EXAMPLES.rglob("*.py")):   # a command inside a sentence would be missed
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        inline = re.findall(r"``((?:python|pip install|mpiexec) [^`]*)``", doc)
        assert not inline, f"{path.name}: give {inline} a line of its own, so this test sees it"


def test_quickstart_runs_and_learns(tmp_path):
    out = run("quickstart.py", cwd=tmp_path)
    assert "loss" in out and "yes" in out
    elbos = [float(line.split("ELBO(all data, beta=1)")[1].split()[0]) for line in out.splitlines()
             if "ELBO(all data" in line]
    assert elbos[-1] > elbos[0] + 5


def test_gradient_flow_example_prints_the_documented_numbers(tmp_path):
    out = run("gradient_flow.py", cwd=tmp_path)
    doc = (EXAMPLES.parent / "docs" / "gradient_flow.md").read_text()
    for value in ("0.383175", "-0.550479", "-0.144157", "1.196795"):
        assert value in out
        assert value.replace("-", "−") in doc or value in doc


def test_custom_layer_example_and_its_property_test(tmp_path):
    """Define a layer, check it, train a VAE with it on real data, save, load, evaluate."""
    out = run("custom_layer.py", "--epochs", "1", "--examples", "1500", "--out", str(tmp_path),
              cwd=tmp_path)
    errors = [float(line.split("largest relative error")[1].split()[0]) for line in out.splitlines()
              if "largest relative error" in line]
    assert len(errors) == 2 and max(errors) < 1e-6
    assert "loaded with layers=[Swish]" in out and "ln p(x)" in out
    assert (tmp_path / "model.npz").exists()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(EXAMPLES / "custom_layer.py")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout


def test_ising_example_as_documented(tmp_path):
    """``python examples/ising.py`` with its defaults, and the number the README, the tutorial
    and docs/ising.md quote from it: Spearman(latent, m) = −0.996 on held-out configurations."""
    out = run("ising.py", "--quiet", cwd=tmp_path)
    run_dir = tmp_path / "runs" / "examples" / "ising"
    result = json.loads((run_dir / "result.json").read_text())
    best = result["best_latent_for_m"]
    rho = result["spearman_latent_m"][best]
    assert abs(abs(rho) - 0.996) <= 0.003, (rho, out)   # the latent's sign is arbitrary
    assert len(result["spearman_latent_m"]) == 2 and result["test_elbo"] < 0
    assert (run_dir / "model.npz").exists()


def write_idx_images(path, images):
    """A gzipped IDX file of uint8 images (n, rows, cols), as Fashion-MNIST's."""
    header = bytes([0, 0, 0x08, images.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + images.astype(np.uint8).tobytes())


def test_fashion_mnist_example_runs_small(tmp_path):
    """The script as its docstring shows it is too slow to run here (marked there): the same
    script on a few hundred made-up 28x28 images, one epoch, ln p(x) with K = 50, and --iwae."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    write_idx_images(data / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (384, 28, 28)))
    write_idx_images(data / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (64, 28, 28)))
    out = run("fashion_mnist.py", "--epochs", "1", "--data", str(data), "--log-likelihood", "50",
              "--test-images", "16", "--iwae", "2", "--quiet", cwd=tmp_path)
    result = json.loads((tmp_path / "runs" / "examples" / "fashion_mnist" / "result.json").read_text())
    assert set(result) == {"vae", "iwae2"}, out
    for res in result.values():
        assert res["test_images"] == 16 and res["K"] == 50 and len(res["test_elbo"]) == 1
        assert np.isfinite(res["test_log_px"]) and 1 <= res["mean_ess"] <= 50
    assert os.path.exists(tmp_path / "runs" / "examples" / "fashion_mnist" / "iwae2" / "model.npz")


def test_the_docstring_commands_are_found():
    """The reader of test_every_docstring_command_is_run_checked_or_marked: what it sees."""
    commands = {c: marked for _, c, marked in docstring_commands()}
    assert commands["python -m pytest examples/custom_layer.py"] is False
    assert commands["mpiexec -n 3 python examples/hep/anomaly.py"] is True
    assert any(c.startswith("python examples/fashion_mnist.py") and c.endswith("[--iwae 5]") and m
               for c, m in commands.items())

