"""The trainer: learning, reproducibility, resume bit-identity, divergence and Ctrl-C."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import npvae
from npvae import data, train


def bars(n=300, size=5, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, size, size), np.float32)
    for img in x:
        img[rng.random(size) < 0.3, :] = 1
        img[:, rng.random(size) < 0.3] = 1
    return np.clip(x.reshape(n, -1) * 0.9 + 0.05, 0, 1)


def no_time(history):
    return [{k: v for k, v in r.items() if k != "time"} for r in history]


def same_params(a, b):
    return all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST.exists(),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_fit_reduces_the_loss_on_fashion_mnist():
    x = data.load_fashion_mnist("train")[:3000]
    xv = data.load_fashion_mnist("test")[:500]
    model = npvae.VAE(784, 10, hidden=(128,))
    h = npvae.fit(model, x, x_val=xv, epochs=3, batch_size=64, binarize="dynamic", progress=False)
    untrained = npvae.VAE(784, 10, hidden=(128,)).elbo(npvae.data.binarize(
        xv, np.random.default_rng([0, 3]))).mean()
    assert h["loss"][-1] < h["loss"][0] - 50
    assert h["val_elbo"][-1] > h["val_elbo"][0] + 20
    assert h["val_elbo"][-1] > untrained + 200  # an untrained model scores about −550


@pytest.mark.reproducibility
def test_same_seed_gives_bit_identical_history_and_parameters():
    x = bars()
    runs = []
    for _ in range(2):
        model = npvae.VAE(25, 3, hidden=(16,))
        h = npvae.fit(model, x, x_val=x[:50], epochs=3, batch_size=32, seed=7,
                      binarize="dynamic", beta=npvae.LinearBeta(2), progress=False)
        runs.append((model, h))
    assert no_time(runs[0][1]) == no_time(runs[1][1])
    assert same_params(runs[0][0], runs[1][0])
    other = npvae.VAE(25, 3, hidden=(16,))
    npvae.fit(other, x, epochs=1, batch_size=32, seed=8, progress=False)
    assert not same_params(other, runs[0][0])


def test_history_records_and_exports(tmp_path):
    x = bars()
    model = npvae.VAE(25, 2, hidden=(8,))
    h = npvae.fit(model, x, x_val=x[:40], epochs=4, batch_size=50, beta=npvae.LinearBeta(2),
                  optimizer=npvae.Adam(lr=npvae.StepDecay(1e-3, every=6, gamma=0.5)), progress=False)
    assert len(h) == 4 and h["epoch"] == [1, 2, 3, 4]
    # 6 steps per epoch: β at steps 0..5 is t/12, so the first epoch's mean is 15/72
    assert h["beta"][0] == pytest.approx(sum(s / 12 for s in range(6)) / 6)
    assert h["beta"][-1] == 1.0
    assert h["lr"] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])
    for r in h:
        assert r["loss"] == pytest.approx(r["reconstruction"] + r["beta"] * r["kl"], rel=0.05)
        assert set(npvae.History.COLUMNS) <= set(r)
    h.to_csv(tmp_path / "h.csv")
    h.to_json(tmp_path / "h.json")
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,loss,reconstruction,kl,beta,lr") and len(lines) == 5
    assert json.loads((tmp_path / "h.json").read_text())["records"] == h.records


RESUME_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, npvae
    sys.path.insert(0, {tests!r})
    from test_train import bars
    epochs, ckdir, out, resume = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    model = npvae.VAE(25, 3, hidden=(16,), activation="tanh")
    h = npvae.fit(model, bars(), x_val=bars(60, seed=1), epochs=epochs, batch_size=32, seed=3,
                  binarize="dynamic", beta=npvae.CyclicalBeta(4, cycles=2),
                  optimizer=npvae.Adam(lr=npvae.Cosine(3e-3, 60)),
                  checkpoint_dir=None if ckdir == "-" else ckdir, resume=resume, progress=False)
    model.save(out)
    open(out + ".json", "w").write(h.to_json())
""")


def run_script(tmp_path, *args):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT.format(tests=os.path.dirname(__file__)))
    subprocess.run([sys.executable, str(script), *map(str, args)], check=True, timeout=300)


@pytest.mark.reproducibility
def test_resume_across_processes_is_bit_identical(tmp_path):
    run_script(tmp_path, 5, "-", tmp_path / "full.npz", 0)
    ck = tmp_path / "ck"
    run_script(tmp_path, 2, ck, tmp_path / "part.npz", 0)
    run_script(tmp_path, 5, ck, tmp_path / "resumed.npz", 1)
    full, resumed = npvae.load(tmp_path / "full.npz"), npvae.load(tmp_path / "resumed.npz")
    assert same_params(full, resumed)
    h_full = json.loads((tmp_path / "full.npz.json").read_text())["records"]
    h_res = json.loads((tmp_path / "resumed.npz.json").read_text())["records"]
    assert no_time(h_full) == no_time(h_res)
    part = npvae.load(tmp_path / "part.npz")
    assert not same_params(part, full)
    assert len(train.list_checkpoints(ck)) == 2  # the newest two are kept


@pytest.mark.reproducibility
@pytest.mark.parametrize("path", ["engine", "compiled"])
def test_ctrl_c_saves_mid_epoch_and_resumes_bit_identically(path, tmp_path, monkeypatch):
    if path == "compiled" and npvae.get_backend() != "numba":
        pytest.skip("the compiled path is numba's")
    x = bars()
    on = dict(compiled=path == "compiled")
    ref = npvae.VAE(25, 3, hidden=(16,))
    h_ref = npvae.fit(ref, x, epochs=2, batch_size=32, seed=1, binarize="dynamic", progress=False, **on)

    model = npvae.VAE(25, 3, hidden=(16,))
    calls = []
    if path == "engine":
        real = npvae.engine.elbo_step

        def interrupting(*a, **k):
            calls.append(1)
            if len(calls) == 13:  # step 3 of epoch 2: as if the user pressed Ctrl-C
                os.kill(os.getpid(), signal.SIGINT)
            return real(*a, **k)
        monkeypatch.setattr(npvae.engine, "elbo_step", interrupting)
    else:
        real = npvae.compiled.AdamSteps.run

        def interrupting(self, x, idx, *a, **k):  # a chunk of steps: the signal lands inside it
            calls.extend([1] * len(idx))
            if len(calls) >= 13:
                os.kill(os.getpid(), signal.SIGINT)
            return real(self, x, idx, *a, **k)
        monkeypatch.setattr(npvae.compiled.AdamSteps, "run", interrupting)
    h = npvae.fit(model, x, epochs=2, batch_size=32, seed=1, binarize="dynamic",
                  checkpoint_dir=tmp_path, progress=False, **on)
    assert h.interrupted and len(h) == 1
    newest = train.list_checkpoints(tmp_path)[-1]
    if path == "engine":
        assert newest.name == "ckpt-0000000013.npz"
    else:  # the chunk in hand finishes first: a step of epoch 2, not its end
        assert 10 < int(newest.stem.split("-")[1]) < 20, newest.name
    monkeypatch.undo()

    again = npvae.VAE(25, 3, hidden=(16,))
    h2 = npvae.fit(again, x, epochs=2, batch_size=32, seed=1, binarize="dynamic",
                   checkpoint_dir=tmp_path, resume=True, progress=False)
    assert not h2.interrupted and len(h2) == 2
    assert same_params(again, ref)
    assert no_time(h2) == no_time(h_ref)


def test_divergence_names_epoch_step_parameter_and_keeps_checkpoint(tmp_path, monkeypatch):
    x = bars()
    model = npvae.VAE(25, 3, hidden=(16,))
    npvae.fit(model, x, epochs=1, batch_size=100, checkpoint_dir=tmp_path, progress=False, compiled=False)
    good = train.list_checkpoints(tmp_path)
    good_bytes = good[-1].read_bytes()

    real = npvae.engine.elbo_step
    calls = []

    def poisoned(plan, P, G, *a, **k):
        loss, parts = real(plan, P, G, *a, **k)
        calls.append(1)
        if len(calls) == 2:
            G["decoder.0.W"][0, 0] = np.nan
        return loss, parts

    monkeypatch.setattr(npvae.engine, "elbo_step", poisoned)
    with pytest.raises(npvae.DivergenceError,
                       match=r"epoch 2, at step 5 \(step 2 of the epoch\).*'decoder.0.W'") as info:
        npvae.fit(model, x, epochs=3, batch_size=100, checkpoint_dir=tmp_path, resume=True,
                  progress=False, compiled=False)
    assert (info.value.epoch, info.value.step) == (2, 5)
    assert train.list_checkpoints(tmp_path) == good
    assert good[-1].read_bytes() == good_bytes
    npvae.load(good[-1])


def test_real_divergence_with_a_huge_learning_rate(tmp_path):
    x = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32) * 100
    model = npvae.VAE(6, 2, hidden=(8,), likelihood="gaussian", sigma=0.01)
    with pytest.raises(npvae.DivergenceError, match="diverged in epoch"):
        npvae.fit(model, x, epochs=50, batch_size=20, optimizer=npvae.SGD(lr=10.0),
                  checkpoint_dir=tmp_path, progress=False)


def test_early_stopping_restores_the_best_parameters():
    x = bars()
    model = npvae.VAE(25, 2, hidden=(8,))
    seen = []
    h = npvae.fit(model, x, x_val=x[:50], epochs=20, batch_size=50, progress=False,
                  optimizer=npvae.SGD(lr=0.0), early_stopping=2,
                  callbacks=[lambda rec, m: seen.append(rec["epoch"])])
    assert h.stopped_early and len(h) == 3 and seen == [1, 2, 3] and h.best_epoch == 1


def test_callback_can_stop_training():
    model = npvae.VAE(25, 2, hidden=(8,))
    h = npvae.fit(model, bars(), epochs=10, batch_size=50, progress=False,
                  callbacks=[lambda rec, m: rec["epoch"] == 2])
    assert len(h) == 2


def test_free_bits_and_static_binarisation_run():
    model = npvae.VAE(25, 4, hidden=(8,))
    h = npvae.fit(model, bars(), epochs=2, batch_size=50, free_bits=0.5, binarize="static",
                  progress=False)
    assert len(h) == 2 and np.isfinite(h["loss"]).all()


def test_progress_output(capsys):
    npvae.fit(npvae.VAE(25, 2, hidden=(8,)), bars(), x_val=bars(20), epochs=1, batch_size=50)
    out = capsys.readouterr()
    assert "epoch 1/1" in out.out and "val ELBO" in out.out


def test_resume_refuses_a_different_run(tmp_path):
    x = bars()
    npvae.fit(npvae.VAE(25, 2, hidden=(8,)), x, epochs=1, batch_size=50, checkpoint_dir=tmp_path,
              progress=False)
    with pytest.raises(ValueError, match="batch_size was 50, now 25"):
        npvae.fit(npvae.VAE(25, 2, hidden=(8,)), x, epochs=2, batch_size=25,
                  checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="it was made for"):
        npvae.fit(npvae.VAE(25, 2, hidden=(9,)), x, epochs=2, batch_size=50,
                  checkpoint_dir=tmp_path, resume=True, progress=False)


def test_resume_skips_a_corrupt_newest_checkpoint(tmp_path):
    x = bars()
    npvae.fit(npvae.VAE(25, 2, hidden=(8,)), x, epochs=2, batch_size=50, checkpoint_dir=tmp_path,
              progress=False)
    newest = train.list_checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="skipping unreadable checkpoint"):
        h = npvae.fit(npvae.VAE(25, 2, hidden=(8,)), x, epochs=2, batch_size=50,
                      checkpoint_dir=tmp_path, resume=True, progress=False)
    assert len(h) == 2


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(batch_size=-5), ValueError, "batch_size must be >= 1"),
    (dict(epochs=0), ValueError, "epochs must be >= 1"),
    (dict(x_train=np.zeros((0, 25), np.float32)), ValueError, "x_train is empty"),
    (dict(x_val=np.zeros((5, 24), np.float32)), ValueError, r"x_val must have shape \(any, 25\)"),
    (dict(x_train=np.full((5, 25), 2.0)), ValueError, r"targets x_train must lie in \[0, 1\]"),
    (dict(binarize="sometimes"), ValueError, "binarize must be"),
    (dict(resume=True), ValueError, "resume=True needs checkpoint_dir"),
    (dict(early_stopping=3), ValueError, "early_stopping needs validation data"),
    (dict(optimizer="adam"), TypeError, "optimizer must be an npvae optimizer"),
    (dict(beta=-0.5), ValueError, "beta must be >= 0"),
])
def test_bad_arguments(kwargs, exc, match):
    args = dict(x_train=bars(20), epochs=1, progress=False)
    args.update(kwargs)
    x = args.pop("x_train")
    with pytest.raises(exc, match=match):
        npvae.fit(npvae.VAE(25, 2, hidden=(8,)), x, **args)


def test_training_steps_allocate_no_large_arrays():
    """In steady state a step reuses its workspaces: nothing near the size of an activation
    (64 x 100 float32 = 25.6 kB here) is allocated.  This is the numba backend's promise;
    the NumPy reference allocates freely."""
    import tracemalloc
    before = npvae.get_backend()
    npvae.set_backend("numba")
    try:
        _steady_state_allocation()
    finally:
        npvae.set_backend(before)


def _steady_state_allocation():
    import tracemalloc
    model = npvae.VAE(200, 10, hidden=(100,))
    opt = npvae.Adam(lr=1e-3)
    state = opt.init(model.params)
    step = train.TrainStep(model, dynamic_binarize=True)
    x = np.random.default_rng(0).random((512, 200)).astype(np.float32)
    rng = np.random.default_rng(1)
    batches = [np.arange(i * 64, (i + 1) * 64) for i in range(8)]
    for idx in batches:  # warm-up: workspaces and compiled kernels
        step(x, idx, rng, 1.0)
        opt.update(model.params, step.grads, state)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(3):
            for idx in batches:
                step(x, idx, rng, 0.5)
                opt.update(model.params, step.grads, state)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < 12_000, (peak - base)
    assert current - base < 4_000, (current - base)


def test_memory_stays_flat_over_epochs():
    import tracemalloc
    x = bars(640)
    model = npvae.VAE(25, 3, hidden=(16,))
    seen = []
    tracemalloc.start()
    try:
        npvae.fit(model, x, epochs=6, batch_size=64, progress=False, binarize="dynamic",
                  callbacks=[lambda rec, m: seen.append(tracemalloc.get_traced_memory()[0])])
    finally:
        tracemalloc.stop()
    assert seen[-1] - seen[1] < 20_000, seen  # only the small history records grow


@pytest.mark.parametrize("path", ["engine", "compiled"])
def test_a_nan_in_the_state_is_never_saved(path, tmp_path, monkeypatch):
    """fit checks the parameters and moments it saves, not only the loss: a NaN that slips
    into a weight (here injected after the update) stops training before the checkpoint."""
    if path == "compiled" and npvae.get_backend() != "numba":
        pytest.skip("the compiled path is numba's")
    x = bars()
    model = npvae.VAE(25, 2, hidden=(8,))
    opt = npvae.Adam()
    if path == "engine":
        real_update = type(opt).update

        def poisoned(self, params, grads, state, **kw):
            real_update(self, params, grads, state, **kw)
            if state["step"] == 6:  # the last step of epoch 1: the next thing fit does is save
                params["decoder.out.b"][0] = np.nan
        monkeypatch.setattr(type(opt), "update", poisoned)
    else:
        real_run = npvae.compiled.AdamSteps.run

        def poisoned(self, *a, **kw):
            out = real_run(self, *a, **kw)
            if self.state["step"] == 6:  # epoch 1's last chunk ends at step 6
                self.model.params["decoder.out.b"][0] = np.nan
            return out
        monkeypatch.setattr(npvae.compiled.AdamSteps, "run", poisoned)
    with pytest.raises(npvae.DivergenceError, match="'decoder.out.b' holds NaN"):
        npvae.fit(model, x, optimizer=opt, epochs=2, batch_size=50, checkpoint_dir=tmp_path, progress=False,
                  compiled=path == "compiled")
    assert train.list_checkpoints(tmp_path) == []


def test_a_fresh_run_refuses_a_folder_with_checkpoints(tmp_path):
    x = bars()
    npvae.fit(npvae.VAE(25, 2, hidden=(8,)), x, epochs=1, batch_size=50, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        npvae.fit(npvae.VAE(25, 2, hidden=(8,)), x, epochs=1, batch_size=50, checkpoint_dir=tmp_path,
                  progress=False)


def test_stale_temporaries_of_live_writers_are_kept(tmp_path):
    live = tmp_path / f".ckpt-0000000001.npz.tmp-{os.getppid()}"
    dead = tmp_path / ".ckpt-0000000001.npz.tmp-999999999"
    live.write_bytes(b"in flight")
    dead.write_bytes(b"left by a killed writer")
    npvae.fit(npvae.VAE(25, 2, hidden=(8,)), bars(), epochs=1, batch_size=50, checkpoint_dir=tmp_path,
              progress=False)
    assert live.exists() and not dead.exists()


def test_a_second_writer_into_one_folder_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import filelock, sys, time
        lock = filelock.FileLock({str(tmp_path.parent / ('.' + tmp_path.name + '.lock'))!r}, timeout=0)
        lock.acquire(); print("held", flush=True); time.sleep(60)""")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(train.RunLockedError, match="another process is writing into"):
            npvae.fit(npvae.VAE(25, 2, hidden=(8,)), bars(), epochs=1, batch_size=50,
                      checkpoint_dir=tmp_path, progress=False)
    finally:
        holder.kill()
        holder.wait()


def test_resume_never_silently_restarts_over_a_runs_checkpoints(tmp_path):
    """A resume that cannot use any checkpoint (here: another optimizer) is refused; it does
    not start afresh and prune the run's checkpoints."""
    x = bars()
    npvae.fit(npvae.VAE(25, 2, hidden=(8,)), x, epochs=2, batch_size=50, checkpoint_dir=tmp_path, progress=False)
    before = {p.name: p.read_bytes() for p in train.list_checkpoints(tmp_path)}
    with pytest.raises(ValueError, match="optimizer state does not fit SGD"):
        npvae.fit(npvae.VAE(25, 2, hidden=(8,)), x, epochs=3, batch_size=50, checkpoint_dir=tmp_path,
                  resume=True, progress=False, optimizer=npvae.SGD(lr=1e-3))
    newest = train.list_checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[:50])  # and when every checkpoint is unreadable
    for p in train.list_checkpoints(tmp_path)[:-1]:
        p.write_bytes(b"junk")
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="none of the 2 checkpoints"):
        npvae.fit(npvae.VAE(25, 2, hidden=(8,)), x, epochs=3, batch_size=50, checkpoint_dir=tmp_path,
                  resume=True, progress=False)
    assert sorted(p.name for p in train.list_checkpoints(tmp_path)) == sorted(before)


TRAIN_MANY_WITHOUT_CONFIG = """
import sys, numpy as np, npvae
from npvae import parallel


class Bare:  # init and forward only: trains, but cannot be sent to another rank as a config
    def init(self, rng, n_in):
        return 3, {"W": rng.normal(0, 0.5, (n_in, 3))}

    def forward(self, params, x):
        y = np.tanh(x @ params["W"])
        return y, lambda dy: ((dy * (1 - y * y)) @ params["W"].T, {"W": x.T @ (dy * (1 - y * y))})


x = np.random.default_rng(0).random((40, 4))


def train(seed, group_comm):
    m = npvae.VAE(4, 2, encoder=[Bare()], decoder=[Bare()], dtype=np.float64, seed=seed)
    npvae.fit(m, x, epochs=1, batch_size=8, progress=False, comm=group_comm)
    return m


try:
    parallel.train_many([1, 2], train)
except TypeError as exc:  # on every rank: none is left waiting for the model that cannot be sent
    open(sys.argv[1] + str(parallel.rank_of(parallel.world())), "w").write(str(exc))
"""


def test_train_many_of_a_layer_without_config_raises_on_every_rank(tmp_path):
    from test_mpi import launch, needs_mpi  # the MPI launcher of the MPI tests, and their skip

    if needs_mpi.args[0]:
        pytest.skip(needs_mpi.kwargs["reason"])
    res = launch(2, ["-c", TRAIN_MANY_WITHOUT_CONFIG, str(tmp_path / "rank")], timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    for rank in (0, 1):
        msg = (tmp_path / f"rank{rank}").read_text()
        assert "encoder[0] (Bare) has no config() method" in msg and "def config(self):" in msg
