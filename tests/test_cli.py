"""The npvae command on tiny data, in temporary directories."""
import json
import struct

import numpy as np
import pytest

from npvae import cli

TINY_ISING = ["--ising-L", "6", "--ising-n-per-T", "12", "--epochs", "2", "--quiet"]


def png_size(path):
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NPVAE_CACHE", str(tmp_path / "cache"))


def test_train_with_defaults_writes_a_complete_run(tmp_path, capsys):
    assert cli.main(["train", *TINY_ISING]) == 0
    run = tmp_path / "runs" / "ising"
    for name in ("config.toml", "model.npz", "history.csv", "history.json"):
        assert (run / name).exists(), name
    assert list((run / "checkpoints").glob("ckpt-*.npz"))
    assert "run written to runs/ising" in capsys.readouterr().out
    cfg = cli.read_config(run / "config.toml")
    assert cfg["data"] == "ising" and cfg["epochs"] == 2 and cfg["likelihood"] == "bernoulli"
    history = json.loads((run / "history.json").read_text())["records"]
    assert len(history) == 2


def test_plots_are_valid_pngs_of_the_expected_size(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the plot extra (.ci/run installs it)")
    assert cli.main(["train", *TINY_ISING]) == 0
    run = tmp_path / "runs" / "ising"
    expected = {"training_curves.png": (1300, 360), "latent_scatter.png": (600, 500),
                "prior_samples.png": (600, 600)}
    for name, size in expected.items():
        assert png_size(run / name) == size, name
    for name in ("reconstructions.png", "latent_traversal.png"):
        w, h = png_size(run / name)
        assert w > 500 and h > 150


def test_train_on_a_user_file_with_a_config(tmp_path):
    x = np.random.default_rng(0).normal(size=(120, 5)).astype(np.float32) * 3 + 10
    np.save(tmp_path / "feat.npy", x)
    (tmp_path / "run.toml").write_text('[train]\nepochs = 2\nlatent = 2\nhidden = "8,4"\nactivation = "tanh"\n'
                                       'beta_warmup = 0.0\nplots = false\n')
    assert cli.main(["train", "--data", "feat.npy", "--config", "run.toml", "--quiet", "--seed", "3"]) == 0
    run = tmp_path / "runs" / "feat"
    cfg = cli.read_config(run / "config.toml")
    assert cfg["likelihood"] == "gaussian" and cfg["hidden"] == "8,4" and cfg["seed"] == 3
    assert (run / "standardizer.npz").exists()
    assert not (run / "training_curves.png").exists()


def test_evaluate_sample_and_gradcheck(tmp_path, capsys):
    assert cli.main(["train", *TINY_ISING, "--no-plots"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "runs/ising", "--n-samples", "50"]) == 0
    out = capsys.readouterr().out
    assert "ELBO (β = 1)" in out and "ln p(x) (K=50)" in out
    res = json.loads((tmp_path / "runs" / "ising" / "evaluation.json").read_text())
    assert res["test_log_px"] >= res["test_elbo"] - 1.0
    assert cli.main(["sample", "runs/ising", "--n", "9", "--out", "s.npy"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (9, 36)
    assert cli.main(["gradcheck", "--likelihood", "gaussian", "--sigma", "learned"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "likelihood.logvar" in out
    assert cli.main(["gradcheck", "--objective", "iwae", "--n-samples", "3"]) == 0


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "nope.npy"], "does not exist"),
    (["train", "--hidden", "4,x"], "hidden must be comma-separated widths"),
    (["train", "--epochs", "0"], "epochs must be a positive integer"),
    (["train", "--val-fraction", "1.5"], "val_fraction must lie in"),
    (["train", "--config", "missing.toml"], "config file missing.toml does not exist"),
    (["evaluate", "nowhere"], "is not an npvae run directory"),
    (["gradcheck", "--sigma", "wide", "--likelihood", "gaussian"], "--sigma must be"),
])
def test_bad_arguments_say_what_is_allowed(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_config_keys_and_toml(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("epochs = 2\ncolour = 'blue'\n")
    assert cli.main(["train", "--config", "bad.toml"]) == 2
    assert "unknown keys ['colour']" in capsys.readouterr().err
    (tmp_path / "broken.toml").write_text("epochs = = 2\n")
    assert cli.main(["train", "--config", "broken.toml"]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    (tmp_path / "choice.toml").write_text("activation = 'swish'\n")
    assert cli.main(["train", "--config", "choice.toml"]) == 2
    assert "activation must be one of relu" in capsys.readouterr().err


def test_argparse_rejects_unknown_choices(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--likelihood", "poisson"])
    assert info.value.code == 2
    assert "invalid choice: 'poisson'" in capsys.readouterr().err


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch, capsys):
    from npvae import data
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setenv("NPVAE_DATA", str(tmp_path))
    assert cli.main(["train", "--data", "fashion-mnist", "--epochs", "1"]) == 2
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err
