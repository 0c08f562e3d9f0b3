"""The examples and docs stay true: each runs (quickly) and says what the docs quote."""
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(name, *args):
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, check=True, timeout=300).stdout


def test_quickstart_runs_and_learns():
    out = run("quickstart.py")
    assert "loss" in out and "yes" in out
    elbos = [float(line.split("ELBO(all data, beta=1)")[1].split()[0]) for line in out.splitlines()
             if "ELBO(all data" in line]
    assert elbos[-1] > elbos[0] + 5


def test_gradient_flow_example_prints_the_documented_numbers():
    out = run("gradient_flow.py")
    doc = (EXAMPLES.parent / "docs" / "gradient_flow.md").read_text()
    for value in ("0.383175", "-0.550479", "-0.144157", "1.196795"):
        assert value in out
        assert value.replace("-", "−") in doc or value in doc


def test_custom_layer_example_and_its_property_test(tmp_path):
    """Define a layer, check it, train a VAE with it on real data, save, load, evaluate."""
    out = run("custom_layer.py", "--epochs", "1", "--examples", "1500", "--out", str(tmp_path))
    errors = [float(line.split("largest relative error")[1].split()[0]) for line in out.splitlines()
              if "largest relative error" in line]
    assert len(errors) == 2 and max(errors) < 1e-6
    assert "loaded with layers=[Swish]" in out and "ln p(x)" in out
    assert (tmp_path / "model.npz").exists()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(EXAMPLES / "custom_layer.py")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout


def test_ising_example_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("NPVAE_CACHE", str(tmp_path / "cache"))
    env_out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "ising.py"), "--L", "6", "--n-per-T", "20",
                           "--epochs", "2", "--out", str(env_out), "--quiet"],
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NPVAE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json
    result = json.loads((env_out / "result.json").read_text())
    assert len(result["spearman_latent_m"]) == 2 and result["test_elbo"] < 0
    assert (env_out / "model.npz").exists()
