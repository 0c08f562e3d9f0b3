"""The npvae command on tiny data, in temporary directories."""
import json
import re
import struct

import numpy as np
import pytest

from npvae import cli
from npvae.settings import read_toml

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
    assert f"run written to {run}" in capsys.readouterr().out  # an absolute path
    cfg = read_toml(run / "config.toml")
    assert cfg["data"] == "ising" and cfg["epochs"] == 2 and cfg["likelihood"] == "bernoulli"
    history = json.loads((run / "history.json").read_text())["records"]
    assert len(history) == 2


def test_plots_are_valid_pngs_of_the_expected_size(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the plot extra (.ci/run installs it)")
    assert cli.main(["train", *TINY_ISING]) == 0
    run = tmp_path / "runs" / "ising"
    for name in ("training_curves.png", "latent_scatter.png", "prior_samples.png", "reconstructions.png",
                 "latent_traversal.png", "ising_observables.png"):
        w, h = png_size(run / name)
        assert w >= 500 and h >= 150, name
    assert json.loads((run / "ising_observables.json").read_text())


def test_train_on_a_user_file_with_a_config(tmp_path):
    x = np.random.default_rng(0).normal(size=(120, 5)).astype(np.float32) * 3 + 10
    np.save(tmp_path / "feat.npy", x)
    (tmp_path / "run.toml").write_text('[train]\nepochs = 2\nlatent = 2\nhidden = "8,4"\nactivation = "tanh"\n'
                                       'beta_warmup = 0.0\nplots = false\n')
    assert cli.main(["train", "--data", "feat.npy", "--config", "run.toml", "--quiet", "--seed", "3"]) == 0
    run = tmp_path / "runs" / "feat.npy"
    cfg = read_toml(run / "config.toml")
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
    capsys.readouterr()
    assert cli.main(["gradcheck", "--layer", "gated", "--hidden", "5,3"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "encoder.0.V" in out and "decoder.1.c" in out


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "nope.npy"], "does not exist"),
    (["train", "--hidden", "4,x"], "--hidden must be comma-separated positive widths"),
    (["train", "--hidden", ",,,"], "--hidden must be comma-separated positive widths"),
    (["train", "--epochs", "0"], "--epochs must be >= 1; got 0"),
    (["train", "--val-fraction", "1.5"], "--val-fraction must be <= 1"),
    (["train", "--seed", "-1"], "--seed must be >= 0"),
    (["train", "--config", "."], "is a folder, not a file"),
    (["train", "--sigma", "2"], "--sigma applies to the gaussian likelihood only"),
    (["train", "--n-samples", "5"], "--n-samples is the iwae objective's K"),
    (["train", "--objective", "iwae", "--beta-warmup", "3"], "--beta-warmup does not apply to --objective iwae"),
    (["train", "--objective", "iwae", "--beta", "0.5"], "--beta must be 1 with --objective iwae"),
    (["train", "--data-key", "x"], "--data-key chooses an array in an .npz file"),
    (["train", "--layer", "gated", "--activation", "tanh"], "--activation applies to dense layers"),
    (["train", "--layer", "gated", "--hidden", "none"], "--layer gated makes the hidden layers gated"),
    (["gradcheck", "--layer", "gated", "--activation", "elu"], "--activation applies to dense layers"),
    (["gradcheck", "--layer", "gated", "--hidden", "none"], "--layer gated makes the hidden layers gated"),
    (["train", "--data", "fashion-mnist", "--ising-L", "8"], "--ising-L applies to the built-in Ising data only"),
    (["gradcheck", "--hidden", "abc"], "--hidden must be comma-separated"),
    (["train", "--beta-warmup", "nan"], "--beta-warmup must be a finite number"),
    (["gradcheck", "--hidden", "²"], "--hidden must be comma-separated"),
    (["train", "--out", "x\x00y"], "must not contain a NUL"),
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
    assert "activation in config file choice.toml must be one of relu" in capsys.readouterr().err
    for text, message in [('lr = "fast"', "lr in config file v.toml must be a number; got 'fast'"),
                          ("data = 5", "data in config file v.toml must be a non-empty text"),
                          ('plots = "no"', "plots in config file v.toml must be true or false; got 'no'"),
                          ("epochs = 2.5", "epochs in config file v.toml must be a whole number"),
                          ("[train]\nsigma = 3\n[other]\nx = 1", "[train] must be a table and the only one")]:
        (tmp_path / "v.toml").write_text(text + "\n")
        assert cli.main(["train", "--config", "v.toml"]) == 2
        assert message in capsys.readouterr().err, text


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


def test_version_and_help_show_every_default(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("npvae ")
    for command in ("train", "evaluate", "sample", "gradcheck"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        options = [ln.split()[0] for ln in text.splitlines() if ln.strip().startswith("--")]
        assert options, command
        blocks = text.split("\n  -")
        for block in blocks[1:]:
            flag = block.split()[0].strip(",")
            if flag in ("h", "-help", "-config", "-quiet", "-data-key", "-out", "-likelihood",
                        "-binarize", "-image-shape", "-mean", "-version"):
                continue  # no default, or the help says what happens without it
            assert "default" in " ".join(block.split()), (command, flag, block)


def test_every_flag_says_what_it_does_once():
    import argparse
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, sub in subs.choices.items():
        for action in sub._actions:
            flag, text = action.option_strings[-1] if action.option_strings else action.dest, action.help
            assert text.count("default") <= 1, (command, flag, text)  # once, not twice
            what = re.sub(r"\(?default:[^)]*\)?", "", text).strip(" ;()")
            assert len(what) >= 10, (command, flag, text)  # what it does, not only its default
            if action.metavar is None and action.nargs != 0 and action.option_strings:
                assert action.choices, (command, flag)  # a named value (N, K, X, DIR), not --seed SEED


def test_beta_with_a_warmup_warms_up_to_that_beta(tmp_path):
    assert cli.main(["train", *TINY_ISING, "--epochs", "4", "--beta", "0.5", "--beta-warmup", "2",
                     "--no-plots"]) == 0
    betas = json.loads((tmp_path / "runs" / "ising" / "history.json").read_text())
    betas = [r["beta"] for r in betas["records"]]
    assert betas[-1] == pytest.approx(0.5) and betas[0] < 0.5


def test_messages_name_the_real_problem(tmp_path, capsys):
    (tmp_path / "text.npz").write_text("just some text\n")
    assert cli.main(["train", "--data", "text.npz"]) == 2
    err = capsys.readouterr().err
    assert "not a NumPy file" in err and "pickle" not in err
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n\n3,oops\n")
    assert cli.main(["train", "--data", "bad.csv"]) == 2
    assert "line 4 is not comma-separated numbers" in capsys.readouterr().err
    np.savez(tmp_path / "two.npz", a=np.ones((5, 2)), b=np.ones((5, 2)))
    assert cli.main(["train", "--data", "two.npz"]) == 2
    assert "choose one with --data-key" in capsys.readouterr().err


def test_a_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    (tmp_path / "bom.csv").write_text("1.5,2\n3,4\n", encoding="utf-8-sig")
    from npvae.data import load_array
    assert load_array(tmp_path / "bom.csv").tolist() == [[1.5, 2.0], [3.0, 4.0]]


def test_evaluation_json_is_strict_json(tmp_path, capsys):
    assert cli.main(["train", *TINY_ISING, "--no-plots"]) == 0
    assert cli.main(["evaluate", "runs/ising", "--n-samples", "20", "--quiet"]) == 0
    res = json.loads((tmp_path / "runs" / "ising" / "evaluation.json").read_text(),
                     parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert res["non_finite_log_px"] == 0


def test_a_healthy_run_prints_no_warning(tmp_path):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-W", "error", "-m", "npvae.cli", "train", *TINY_ISING,
                           "--epochs", "4"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**__import__("os").environ, "NPVAE_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "warn" not in proc.stderr.lower(), proc.stderr


def test_the_first_run_says_that_it_compiles(tmp_path):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT")}
    env.update(NPVAE_CACHE=str(tmp_path / "cache"), NPVAE_BACKEND="numba")
    run = lambda out: subprocess.run([sys.executable, "-m", "npvae.cli", "train", *TINY_ISING, "--no-plots",
                                      "--out", out], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                                     env=env)
    first, second = run("a"), run("b")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    # what compiles, an estimate measured on a 2-core machine, and where it is kept
    assert re.search(r"npvae: compiling the training step .*for this CPU, once \(about \d+ s on a 2-core machine; "
                     r"kept in .+ for later runs\)", first.stderr), first.stderr
    assert re.search(r"npvae: compiled in \d+\.\d s", first.stderr), first.stderr  # and how long it took
    assert "compil" not in second.stderr


# ----------------------------------------------------------------------------------------
# A run directory is an honest record
# ----------------------------------------------------------------------------------------
def digest(folder):
    import hashlib
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def test_a_new_run_into_a_used_folder_is_refused_and_changes_nothing(tmp_path, capsys):
    assert cli.main(["train", *TINY_ISING, "--no-plots"]) == 0
    run = tmp_path / "runs" / "ising"
    before = digest(run)
    capsys.readouterr()
    assert cli.main(["train", *TINY_ISING, "--no-plots", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err
    assert digest(run) == before


def test_the_same_command_again_over_its_finished_run_does_nothing(tmp_path, capsys):
    assert cli.main(["train", *TINY_ISING, "--no-plots"]) == 0
    run = tmp_path / "runs" / "ising"
    before = digest(run)
    capsys.readouterr()
    assert cli.main(["train", *TINY_ISING, "--no-plots"]) == 0
    assert f"nothing was trained: {run} already holds this run, trained for its 2 epochs" in capsys.readouterr().out
    assert digest(run) == before
    # more epochs than the run has: a resume, not a new run, says how
    assert cli.main(["train", *TINY_ISING, "--no-plots", "--epochs", "4"]) == 2
    assert f"epochs = 2 (asked: 4): continue it with 'npvae train --resume --out {run} --epochs 4'" \
        in capsys.readouterr().err
    # a setting that follows from the data is compared once the data is read
    x = np.random.default_rng(0).random((60, 3))
    np.save(tmp_path / "u.npy", x)  # in [0, 1]: bernoulli unless asked otherwise
    tiny = ["--data", "u.npy", "--epochs", "1", "--hidden", "4", "--latent", "2", "--quiet", "--no-plots"]
    assert cli.main(["train", *tiny, "--likelihood", "gaussian"]) == 0
    capsys.readouterr()
    assert cli.main(["train", *tiny]) == 2
    assert "likelihood = 'gaussian' (asked: 'bernoulli')" in capsys.readouterr().err
    # a run stopped before its epochs are done is continued with --resume, never passed over
    (tmp_path / "runs" / "u.npy" / "model.npz").unlink()
    assert cli.main(["train", *tiny, "--likelihood", "gaussian"]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::npvae.diagnostics.PosteriorCollapseWarning")  # 3 epochs of tiny data
def test_a_log_density_is_said_to_be_one_where_it_is_printed(tmp_path, capsys):
    """A continuous Bernoulli's ELBO can be positive (a density on [0, 1]^D): train and
    evaluate say why; a Bernoulli's log probability needs no such note."""
    x = np.clip(np.random.default_rng(0).normal(0.5, 0.01, size=(100, 20)), 0, 1)
    np.save(tmp_path / "narrow.npy", x)  # concentrated: a density far above 1
    tiny = ["--epochs", "3", "--hidden", "8", "--latent", "2", "--quiet", "--no-plots"]
    assert cli.main(["train", "--data", "narrow.npy", "--likelihood", "continuous_bernoulli", *tiny]) == 0
    out = capsys.readouterr().out
    assert "density on [0, 1]^20" in out and "may be positive" in out
    assert cli.main(["evaluate", "runs/narrow.npy", "--n-samples", "5", "--quiet"]) == 0
    assert "density on [0, 1]^20" in capsys.readouterr().out
    assert cli.main(["train", *TINY_ISING, "--no-plots"]) == 0
    assert "log densit" not in capsys.readouterr().out


def test_two_files_of_one_name_get_their_own_run_folders(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(60, 3))
    np.savetxt(tmp_path / "features.csv", x, delimiter=",")
    np.save(tmp_path / "features.npy", x)
    tiny = ["--epochs", "1", "--hidden", "4", "--latent", "2", "--quiet", "--no-plots"]
    assert cli.main(["train", "--data", "features.csv", *tiny]) == 0
    assert cli.main(["train", "--data", "features.npy", *tiny]) == 0
    for name in ("features.csv", "features.npy"):
        assert read_toml(tmp_path / "runs" / name / "config.toml")["data"] == str(tmp_path / name)
    # a folder chosen by hand that holds another file's run: the refusal names that file
    capsys.readouterr()
    assert cli.main(["train", "--data", "features.npy", "--out", "runs/features.csv", *tiny]) == 2
    err = capsys.readouterr().err
    assert f"already holds a run of {tmp_path / 'features.csv'}" in err and "another --out" in err


def test_resume_keeps_the_runs_settings_and_refuses_a_conflict_before_writing(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32) * 5 + 3
    np.save(tmp_path / "t.npy", x)
    common = ["--quiet", "--no-plots", "--hidden", "8", "--latent", "2"]
    assert cli.main(["train", "--data", "t.npy", "--epochs", "2", *common]) == 0
    run = tmp_path / "runs" / "t.npy"
    before = digest(run)
    for flags, message in [(["--lr", "0.01"], "--lr 0.01 conflicts with the run's lr = 0.001"),
                           (["--seed", "3"], "--seed 3 conflicts with the run's seed = 0"),
                           (["--hidden", "16"], "--hidden 16 conflicts")]:
        assert cli.main(["train", "--data", "t.npy", "--resume", "--epochs", "4", *flags]) == 2
        assert message in capsys.readouterr().err
        assert digest(run) == before
    # no flags again: the run's own settings; --epochs extends it
    assert cli.main(["train", "--resume", "--out", str(run), "--epochs", "4", "--quiet"]) == 0
    resumed = json.loads((run / "history.json").read_text())["records"]
    assert read_toml(run / "config.toml")["epochs"] == 4
    # the same as four epochs without a stop
    assert cli.main(["train", "--data", "t.npy", "--epochs", "4", "--out", "straight", *common]) == 0
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())["records"]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]
    assert strip(resumed) == strip(straight)


def test_the_last_line_says_what_was_trained_and_which_plots_were_written(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "runs" / "ising"
    assert cli.main(["train", *TINY_ISING, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "trained 1 epoch in" in out
    pngs = sorted(p.name for p in run.glob("*.png"))
    listed = re.search(r"^(\d+) plots: (.*?)(; and (.*))?$", out, re.M)
    assert listed and int(listed[1]) == len(pngs) == 7, out
    assert sorted(listed[2].split(", ")) == pngs and listed[4] == "ising_observables.json"
    assert cli.main(["train", "--resume", "--out", str(run), "--epochs", "3", "--quiet", "--no-plots"]) == 0
    assert "trained 2 more epochs, to epoch 3, in" in capsys.readouterr().out
    # a run already past the epochs asked for: nothing is trained, and its record keeps its epochs
    assert cli.main(["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "nothing was trained: the run is already at epoch 3, past the 2 epochs asked for" in out
    assert read_toml(run / "config.toml")["epochs"] == 3
    assert len(json.loads((run / "history.json").read_text())["records"]) == 3


@pytest.mark.filterwarnings("ignore::npvae.diagnostics.PosteriorCollapseWarning")  # 2 epochs of tiny data
def test_gated_layers_train_evaluate_resume_and_count(tmp_path, capsys):
    """--layer gated builds GatedDense layers (encoder 8, 4; decoder mirrored), records the
    choice, evaluates, resumes; a run whose config.toml predates the setting resumes dense."""
    import npvae
    from npvae import settings
    assert cli.main(["train", *TINY_ISING, "--no-plots", "--layer", "gated", "--hidden", "8,4"]) == 0
    run = tmp_path / "runs" / "ising"
    assert read_toml(run / "config.toml")["layer"] == "gated"
    m = npvae.load(run / "model.npz")
    assert [(type(l).__name__, l.n_out) for l in m.encoder_layers] == [("GatedDense", 8), ("GatedDense", 4)]
    assert [(type(l).__name__, l.n_out) for l in m.decoder_layers] == [("GatedDense", 4), ("GatedDense", 8)]
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--n-samples", "20"]) == 0
    assert "ln p(x) (K=20)" in capsys.readouterr().out
    assert cli.main(["train", "--resume", "--out", str(run), "--epochs", "3", "--quiet", "--no-plots"]) == 0
    assert type(npvae.load(run / "model.npz").encoder_layers[0]).__name__ == "GatedDense"
    # the size check counts a gated layer's two weight matrices
    cfg = dict(read_toml(run / "config.toml"), hidden="8,4")
    n = sum(p.size for p in m.params.values())
    settings.check_model_size(36, cfg, limit=n)
    with pytest.raises(settings.SettingsError, match="parameters"):
        settings.check_model_size(36, cfg, limit=n - 1)
    dense = sum(p.size for p in npvae.VAE(36, 2, hidden=(8, 4)).params.values())
    settings.check_model_size(36, dict(cfg, layer="dense"), limit=dense)
    with pytest.raises(settings.SettingsError, match="parameters"):
        settings.check_model_size(36, dict(cfg, layer="dense"), limit=dense - 1)
    # the run's own config.toml, given back, trains the same model (no activation written)
    assert "activation" not in read_toml(run / "config.toml")
    (tmp_path / "again.toml").write_text((run / "config.toml").read_text().replace(str(run), "again")
                                         .replace("resume = true", "resume = false"))
    assert cli.main(["train", "--config", "again.toml", "--quiet", "--no-plots"]) == 0
    assert type(npvae.load(tmp_path / "again" / "model.npz").decoder_layers[1]).__name__ == "GatedDense"
    # a run written before --layer existed: its config.toml has no layer, and it is dense
    assert cli.main(["train", *TINY_ISING, "--no-plots", "--out", "old"]) == 0
    toml = (tmp_path / "old" / "config.toml")
    toml.write_text("".join(l for l in toml.read_text().splitlines(True) if not l.startswith("layer")))
    assert cli.main(["train", "--resume", "--out", "old", "--epochs", "3", "--quiet", "--no-plots"]) == 0
    assert type(npvae.load(tmp_path / "old" / "model.npz").encoder_layers[0]).__name__ == "Dense"


def test_cosine_learning_rate_follows_its_plan_and_keeps_its_epochs(tmp_path, capsys):
    """--lr-schedule cosine: each epoch's recorded lr (its last step's) is the warm-up and
    cosine over the run's steps, ending near lr/10; a resume may not change --epochs."""
    import math
    np.save(tmp_path / "t.npy", np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32))
    common = ["--data", "t.npy", "--quiet", "--no-plots", "--hidden", "8", "--latent", "2", "--val-fraction", "0.2",
              "--batch-size", "16", "--lr", "0.002"]
    assert cli.main(["train", *common, "--epochs", "3", "--lr-schedule", "cosine"]) == 0
    run = tmp_path / "runs" / "t.npy"
    cfg = read_toml(run / "config.toml")
    assert cfg["lr_schedule"] == "cosine"
    sched = cli.learning_rate(cfg, 80)  # 80 training rows: 5 steps an epoch, 15 in all, warm-up 1
    assert sched.steps == 1 and sched.after.total == 15
    lrs = [r["lr"] for r in json.loads((run / "history.json").read_text())["records"]]
    assert lrs == [sched(5 * e - 1) for e in (1, 2, 3)]
    assert lrs[-1] == pytest.approx(0.0002 + 0.0009 * (1 + math.cos(math.pi * 14 / 15)), rel=1e-12)
    assert lrs[0] > lrs[1] > lrs[2] > 0.0002
    assert cli.learning_rate(dict(cfg, lr_schedule="constant"), 80) == 0.002
    # a long run: the warm-up is 1000 steps, and lr(0) is lr/1000
    long = cli.learning_rate(dict(cfg, epochs=4000), 80)
    assert long.steps == 1000 and long(0) == pytest.approx(0.002 / 1000)
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(run), "--epochs", "4", "--quiet"]) == 2
    assert "cosine learning rate is planned over its 3 epochs" in capsys.readouterr().err


def test_resume_with_nothing_to_resume(tmp_path, capsys):
    assert cli.main(["train", *TINY_ISING, "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_second_writer_is_refused(tmp_path, capsys):
    import filelock
    assert cli.main(["train", *TINY_ISING, "--no-plots"]) == 0
    run = tmp_path / "runs" / "ising"
    before = digest(run)
    holder = filelock.FileLock(str(run.parent / ".ising.lock"), timeout=0)
    holder.acquire()
    try:
        assert cli.main(["train", *TINY_ISING, "--resume", "--epochs", "3"]) == 2
        assert "another process is writing into" in capsys.readouterr().err
    finally:
        holder.release()
    assert digest(run) == before


def test_a_refused_fit_leaves_no_half_made_run(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32) * 3  # not in [0, 1]
    np.save(tmp_path / "u.npy", x)
    assert cli.main(["train", "--data", "u.npy", "--likelihood", "bernoulli", "--out", "o", "--quiet"]) == 2
    assert "[0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # no config.toml of a run that never started


def cli_process(tmp_path, *argv, env_extra=None, **kw):
    import os
    import subprocess
    import sys
    env = {**os.environ, "NPVAE_CACHE": str(tmp_path / "cache"), **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "npvae.cli", *argv], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def cpu_seconds(pid):
    import os
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigterm_saves_says_one_line_and_resumes(tmp_path):
    import signal
    import time
    proc = cli_process(tmp_path, "train", "--ising-L", "8", "--ising-n-per-T", "200", "--epochs", "500",
                       "--no-plots", "--out", "r", "--quiet")
    ckpts = tmp_path / "r" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(ckpts.glob("ckpt-*.npz")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted") and "--resume" in lines[0]
    from npvae.train import list_checkpoints, load_training_checkpoint
    load_training_checkpoint(list_checkpoints(ckpts)[-1])  # the saved state loads
    assert cli.main(["train", "--resume", "--out", str(tmp_path / "r"), "--epochs", "3", "--quiet",
                     "--no-plots"]) in (0, 2)


def test_ctrl_c_while_starting_up_gives_no_traceback(tmp_path):
    import signal
    import time
    # cold data: the Monte Carlo of a 48x48 lattice takes many CPU seconds before any training
    proc = cli_process(tmp_path, "train", "--ising-L", "48", "--ising-n-per-T", "3000", "--out", "r")
    deadline = time.monotonic() + 120
    while proc.poll() is None and cpu_seconds(proc.pid) < 2.0 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted; nothing was trained" in err
    assert not (tmp_path / "r").exists()


def test_a_full_disk_gives_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    """A real write error from the kernel: RLIMIT_FSIZE caps every file the process writes, so
    the checkpoint that outgrows it fails with EFBIG, as on a full disk."""
    import resource
    import signal
    assert cli.main(["train", *TINY_ISING, "--epochs", "1", "--no-plots", "--out", "r"]) == 0
    ckpts = tmp_path / "r" / "checkpoints"
    first = sorted(ckpts.glob("ckpt-*.npz"))
    size = first[-1].stat().st_size
    saved = {p.name: p.read_bytes() for p in first}

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 200, size + 200))
    proc = cli_process(tmp_path, "train", "--resume", "--out", "r", "--epochs", "6", "--quiet", "--no-plots",
                       preexec_fn=limit)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot write" in lines[0] and "ckpt-" in lines[0], err
    for name, raw in saved.items():  # the last good checkpoint is untouched
        assert (ckpts / name).read_bytes() == raw
    assert not list(ckpts.glob(".*tmp*")), list(ckpts.iterdir())


def test_a_second_ctrl_c_says_where_the_run_stands(tmp_path, monkeypatch, capsys):
    import npvae

    def interrupted(*a, checkpoint_dir, **k):  # stopped at once after a first checkpoint
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        (checkpoint_dir / "ckpt-00000001.npz").write_bytes(b"")
        raise KeyboardInterrupt
    monkeypatch.setattr(npvae, "fit", interrupted)
    assert cli.main(["train", *TINY_ISING, "--no-plots", "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err
    assert "second Ctrl-C" in err and "--resume" in err and "nothing was trained" not in err
    assert (tmp_path / "r" / "config.toml").exists()  # the run's record stays


def test_an_interrupt_before_the_first_checkpoint_leaves_no_run(tmp_path, monkeypatch, capsys):
    import npvae

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(npvae, "fit", interrupted)
    assert cli.main(["train", *TINY_ISING, "--no-plots", "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err
    assert "nothing was trained" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # a new train there is not refused as "already holds a run"


def test_sizes_the_built_in_data_cannot_make_are_refused(capsys):
    assert cli.main(["train", "--ising-L", "256", "--ising-n-per-T", "1000000"]) == 2
    assert "more than the built-in data generates" in capsys.readouterr().err


def test_sigterm_while_the_run_is_written_keeps_the_model_and_history(tmp_path, monkeypatch, capsys):
    """A scheduler's SIGTERM after the last step, while the run's files are written: the model
    and history are still written, the plots are skipped, and --resume writes them."""
    import os
    import signal

    import npvae
    real_to_csv = npvae.History.to_csv

    def to_csv_then_sigterm(self, path):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered here, between two files of the record
        return real_to_csv(self, path)
    monkeypatch.setattr(npvae.History, "to_csv", to_csv_then_sigterm)
    run = tmp_path / "r"
    assert cli.main(["train", *TINY_ISING, "--out", str(run)]) == 130
    out = capsys.readouterr().out
    assert "stopped by a signal after training 2 epochs" in out and "--resume" in out
    trained = npvae.load(run / "model.npz")
    assert (run / "history.csv").exists() and (run / "history.json").exists()
    assert not list(run.glob("*.png"))
    monkeypatch.setattr(npvae.History, "to_csv", real_to_csv)
    pytest.importorskip("matplotlib", reason="the plots need the plot extra")
    assert cli.main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert list(run.glob("*.png"))
    again = npvae.load(run / "model.npz")
    assert all(np.array_equal(again.params[k], trained.params[k]) for k in trained.params)


def test_sigterm_before_training_stops_with_a_message_and_leaves_no_run(tmp_path, monkeypatch, capsys):
    import os
    import signal
    real_load = cli.load_data

    def load_then_sigterm(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_load(*a, **k)
    monkeypatch.setattr(cli, "load_data", load_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["train", *TINY_ISING, "--out", str(tmp_path / "r")]) == 130
    assert "interrupted; nothing was trained" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back
