"""Data parallelism over MPI: N = 1, 2 and 3 processes give one process's result.

Every test starts ``mpiexec`` in a subprocess under a timeout, so a hang fails instead of
blocking the suite.  Skipped, with the reason, where mpi4py or mpiexec is missing (install
the extra: pip install ".[mpi]")."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npvae

HERE = Path(__file__).parent
JOB = HERE / "mpi_job.py"
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
needs_mpi = pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC),
                               reason="needs mpi4py and mpiexec: pip install '.[mpi]'")
TIMEOUT = 300

SPEC = dict(n=203, D=10, latent=3, hidden=[12], seed=4, epochs=6, batch=29)  # 7 steps an epoch: 42


def launch(n, args, timeout=TIMEOUT, env=None):
    """Run ``args`` (a python command line) under mpiexec -n n (n = 0: without mpiexec)."""
    cmd = ([MPIEXEC, "-n", str(n)] if n else []) + [sys.executable, *args]
    e = dict(os.environ, **(env or {}))
    e.pop("NPVAE_MPI", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=HERE.parent)


def job(n, spec, tmp_path, name):
    out = tmp_path / f"{name}.npz"
    res = launch(n, [str(JOB), json.dumps(spec), str(out)])
    assert res.returncode == 0, res.stdout + res.stderr
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def assert_same_params(a, b, rtol):
    keys = [k for k in a if k.startswith("p/")]
    assert keys and keys == [k for k in b if k.startswith("p/")]
    for k in keys:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=rtol * np.abs(a[k]).max(), err_msg=k)


@needs_mpi
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_two_and_three_ranks_train_as_one_process(tmp_path, objective):
    # batch 29: shards 14 + 15 and 9 + 10 + 10; the epoch's last batch has 0 < 203 − 6·29 = 29 rows
    spec = dict(SPEC, objective=objective, k=3 if objective == "iwae" else 1)
    one = job(0, spec, tmp_path, "one")
    assert int(one["ranks"]) == 1
    for n in (2, 3):
        many = job(n, spec, tmp_path, f"n{n}")
        assert int(many["ranks"]) == n
        assert_same_params(one, many, 1e-12)
        np.testing.assert_allclose(many["loss"], one["loss"], rtol=1e-12)
        np.testing.assert_allclose(many["val_elbo"], one["val_elbo"], rtol=1e-12)
    # and training moved the parameters (the comparison is not of untouched ones)
    init = npvae.VAE(SPEC["D"], SPEC["latent"], hidden=tuple(SPEC["hidden"]), seed=SPEC["seed"])
    assert max(np.abs(one["p/" + k] - v).max() for k, v in init.params.items()) > 1e-2


@needs_mpi
def test_float32_agrees_to_float32_rounding(tmp_path):
    spec = dict(SPEC, dtype="float32", epochs=3)
    one, two = job(0, spec, tmp_path, "one"), job(2, spec, tmp_path, "two")
    assert_same_params(one, two, 2e-5)


@needs_mpi
def test_stopped_under_two_ranks_resumes_under_three(tmp_path):
    spec = dict(SPEC, ckpt=str(tmp_path / "run"))
    whole = job(0, dict(SPEC), tmp_path, "whole")
    job(2, dict(spec, epochs=2), tmp_path, "first")
    assert len(list((tmp_path / "run").glob("ckpt-*.npz"))) == 2  # written once, by rank 0
    resumed = job(3, dict(spec, resume=True), tmp_path, "resumed")
    assert_same_params(whole, resumed, 1e-12)
    np.testing.assert_allclose(resumed["loss"], whole["loss"], rtol=1e-12)


@needs_mpi
def test_a_memory_mapped_npy_trains_as_the_array_read_whole(tmp_path):
    # float32 on disk, trained in float64: each rank reads and converts only its rows
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random((SPEC["n"], SPEC["D"])).astype(np.float32))
    spec = dict(SPEC, mmap=str(path), epochs=3, ckpt=str(tmp_path / "run"))
    whole = job(0, dict(spec, mapped=False, ckpt=None), tmp_path, "whole")
    job(2, dict(spec, epochs=2), tmp_path, "first")
    mapped = job(3, dict(spec, resume=True), tmp_path, "mapped")  # the fingerprint is rank-invariant
    assert_same_params(whole, mapped, 1e-12)


@needs_mpi
def test_evaluation_splits_the_examples_and_gives_one_process_numbers(tmp_path):
    spec = dict(SPEC, epochs=0, evaluate=True, n=40)
    one = job(0, spec, tmp_path, "one")
    for n in (2, 3):
        many = job(n, spec, tmp_path, f"n{n}")
        np.testing.assert_array_equal(many["ll"], one["ll"])
        np.testing.assert_array_equal(many["elbo"], one["elbo"])
    assert np.all(np.isfinite(one["ll"])) and np.all(one["ll"] < 0)


@needs_mpi
def test_bad_data_on_one_rank_stops_the_job_with_its_message(tmp_path):
    spec = dict(SPEC, bad_rows_on_rank=1)
    res = launch(2, [str(JOB), json.dumps(spec), str(tmp_path / "x.npz")], timeout=120)
    assert res.returncode != 0
    assert "rank 1 of 2 failed" in res.stderr and "NaN" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "x.npz").exists()


@needs_mpi
def test_a_divergence_stops_every_rank_with_the_divergence_message(tmp_path):
    spec = dict(SPEC, lr=1e300)  # parameters of 1e300 after a step: products overflow
    spec_text = json.dumps(spec)
    res = launch(2, [str(JOB), spec_text, str(tmp_path / "x.npz")], timeout=120)
    assert res.returncode != 0
    assert "training diverged" in res.stderr or "NaN" in res.stderr, res.stderr[-2000:]


@needs_mpi
def test_groups_split_the_ranks_for_many_models(tmp_path):
    script = (
        "import json, sys, npvae\n"
        "from npvae import parallel\n"
        "g, sub = parallel.groups(2)\n"
        "mine = parallel.my_share(range(5), n_groups=2)\n"
        "rank = parallel.rank_of(parallel.world())\n"
        "open(sys.argv[1] + str(rank), 'w').write(json.dumps({'group': g, 'sub': parallel.size_of(sub), "
        "'mine': mine}))\n")
    res = launch(3, ["-c", script, str(tmp_path / "rank")], timeout=120)
    assert res.returncode == 0, res.stderr
    rows = [json.loads((tmp_path / f"rank{r}").read_text()) for r in range(3)]
    seen = sorted((r["group"], r["sub"], tuple(r["mine"])) for r in rows)
    # ranks 0 and 1 → group 0 (a communicator of 2), rank 2 → group 1 (alone); items 0, 2, 4 and 1, 3
    assert seen == [(0, 2, (0, 2, 4)), (0, 2, (0, 2, 4)), (1, 1, (1, 3))]


def test_without_a_launcher_there_is_no_communicator(monkeypatch):
    for v in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE", "NPVAE_MPI"):
        monkeypatch.delenv(v, raising=False)
    assert npvae.parallel.world() is None
    assert npvae.parallel.world(None) is None
    monkeypatch.setenv("NPVAE_MPI", "0")
    monkeypatch.setenv("PMI_SIZE", "4")
    assert npvae.parallel.world() is None
    with pytest.raises(ValueError, match="communicator"):
        npvae.parallel.world("yes")


@pytest.mark.parametrize("n", [1, 7, 29, 128])
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_shards_cover_the_batch_in_order(n, size):
    bounds = [npvae.parallel.shard(n, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


@needs_mpi
def test_the_command_line_trains_and_evaluates_under_mpiexec(tmp_path):
    common = ["--epochs", "2", "--no-plots", "--quiet"]
    res = launch(2, ["-m", "npvae.cli", "train", *common[:3], "--out", str(tmp_path / "two")])
    assert res.returncode == 0, res.stderr
    # one log: every epoch line once (rank 0's), no other rank's
    assert res.stdout.count("epoch 1/2") == 1 and res.stdout.count("trained 2 epochs") == 1, res.stdout
    assert "rank 1" not in res.stdout + res.stderr
    one = launch(0, ["-m", "npvae.cli", "train", *common, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    # the command line trains in float32, and one process takes the compiled path, MPI the
    # engine's: the same run to float32 rounding (exactness is tested above, in float64)
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())["records"]
    h2 = json.loads((tmp_path / "two" / "history.json").read_text())["records"]
    # (float32 trajectories drift apart slowly under Adam: 1e-4 after one epoch, 2e-3 after two)
    for key in ("loss", "kl", "val_elbo"):
        np.testing.assert_allclose(h2[0][key], h1[0][key], rtol=1e-3, err_msg=key)
        np.testing.assert_allclose(h2[1][key], h1[1][key], rtol=1e-2, err_msg=key)
    evals = {}
    for n, name in ((2, "two"), (0, "one")):
        res = launch(n, ["-m", "npvae.cli", "evaluate", str(tmp_path / name), "--n-samples", "50", "--quiet"])
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("held-out examples") == 1
        evals[name] = json.loads((tmp_path / name / "evaluation.json").read_text())
    # the same model evaluated by one process and by two: the same numbers
    res = launch(0, ["-m", "npvae.cli", "evaluate", str(tmp_path / "two"), "--n-samples", "50", "--quiet"])
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "two" / "evaluation.json").read_text()) == evals["two"]


@needs_mpi
def test_a_usage_error_under_mpiexec_ends_the_job_with_its_message(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text("seed = 1\n")
    res = launch(2, ["-m", "npvae.cli", "train", "--epochs", "1", "--out", str(tmp_path / "run")], timeout=120)
    assert res.returncode != 0
    assert "already holds a run" in res.stderr


TRAIN_MANY = """
import sys, numpy as np, npvae
from npvae import parallel
x = np.random.default_rng(0).random((97, 8))

def train(item, group_comm):
    seed, latent = item
    m = npvae.VAE(8, latent, hidden=(6,), dtype=np.float64, seed=seed)
    # validation and early stopping inside each group: its own communicator, never the world's
    npvae.fit(m, x, x_val=x[:30], early_stopping=1, epochs=4, batch_size=16, seed=seed, binarize="dynamic",
              progress=False, compiled=False, comm=group_comm)
    return m

models = parallel.train_many([(1, 2), (2, 3), (3, 2), (4, 1)], train, n_groups=int(sys.argv[2]))
if parallel.rank_of(parallel.world()) == int(sys.argv[3]):
    np.savez(sys.argv[1], **{f"{i}/{k}": v for i, m in enumerate(models) for k, v in m.params.items()})
"""


@needs_mpi
def test_train_many_shares_models_over_groups_and_gives_every_rank_all_of_them(tmp_path):
    one = tmp_path / "one.npz"
    res = launch(0, ["-c", TRAIN_MANY, str(one), "1", "0"])
    assert res.returncode == 0, res.stderr
    # 3 ranks in 2 groups: ranks 0 and 1 train items 0 and 2 data-parallel, rank 2 items 1 and 3;
    # rank 2 writes what it received, so the broadcast is checked too
    for groups, reader in (("2", "2"), ("3", "0")):
        many = tmp_path / f"many{groups}.npz"
        res = launch(3, ["-c", TRAIN_MANY, str(many), groups, reader])
        assert res.returncode == 0, res.stderr
        with np.load(one) as a, np.load(many) as b:
            assert a.files == b.files and len(a.files) == 4 * 10  # 10 arrays a model
            for k in a.files:
                np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-14, err_msg=k)


@needs_mpi
def test_sigterm_to_mpiexec_stops_every_rank_at_one_step_and_the_run_resumes(tmp_path):
    import signal
    import time
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "npvae.cli", "train", "--epochs", "40", "--no-plots",
           "--out", str(out)]
    env = dict(os.environ)
    env.pop("NPVAE_MPI", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=HERE.parent)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not list((out / "checkpoints").glob("ckpt-*.npz")):  # after the first epoch
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # what a scheduler sends; mpiexec forwards it to the ranks
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted after" in stdout and "Traceback" not in stderr
    done = len(json.loads((out / "history.json").read_text())["records"])
    assert 1 <= done < 40
    res = launch(3, ["-m", "npvae.cli", "train", "--resume", "--epochs", str(done + 1), "--no-plots",
                     "--quiet", "--out", str(out)])
    assert res.returncode == 0, res.stderr
    assert len(json.loads((out / "history.json").read_text())["records"]) == done + 1
