"""Crash safety: SIGKILL a training process at random moments, 8 times (20 with
HYPOTHESIS_PROFILE=long, the suite's long profile); after every kill
the checkpoint directory holds a loadable checkpoint, and resuming reaches exactly the
parameters of a run that was never interrupted.

The kill times are random, but what is asserted does not depend on them: whenever the
process dies, the invariant must hold.  Checkpoints here are large (a 784-400-20 model,
about 5 MB with Adam's moments) and epochs are one step, so most kills land in a write.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import npvae
from npvae import train

SCRIPT = textwrap.dedent("""
    import sys, time, numpy as np, npvae
    epochs, ckdir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    x = (np.random.default_rng(0).random((64, 784)) < 0.3).astype(np.float32)
    model = npvae.VAE(784, 20, hidden=(400,))
    print("training", flush=True)
    t0 = time.perf_counter()
    npvae.fit(model, x, epochs=epochs, batch_size=64, seed=5, checkpoint_dir=ckdir, resume=True,
              progress=False, keep_checkpoints=2)
    print(time.perf_counter() - t0, flush=True)
    model.save(out)
""")
EPOCHS = 40
LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
KILLS, KILLS_AFTER_PROGRESS = (20, 10) if LONG else (8, 4)


def run(tmp_path, ckdir, out, kill_after=None):
    """Run the script; with ``kill_after`` (seconds after it starts training: start-up and
    compiling vary from machine to machine) SIGKILL it then.  Returns whether it finished,
    and for a finished run the seconds its training took."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(EPOCHS), str(ckdir), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is None:
        out_text, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        return True, float(out_text.split()[-1])
    assert proc.stdout.readline().strip() == "training", proc.stderr.read()[-2000:]
    try:
        proc.wait(timeout=kill_after)
        proc.communicate()
        return True, None  # finished before the kill
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, None


def test_sigkill_during_training_never_loses_the_checkpoint(tmp_path):
    _, seconds = run(tmp_path, tmp_path / "ref", tmp_path / "ref.npz")
    reference = npvae.load(tmp_path / "ref.npz")

    ckdir = tmp_path / "killed"
    rng = np.random.default_rng(1)
    kills = 0
    steps_seen = []
    attempts = 0
    # KILLS kills, KILLS_AFTER_PROGRESS of them after some progress (kills before a run's first
    # checkpoint hold the invariant too, but say little): how many tries that takes depends on
    # the machine
    while (kills < KILLS or len(steps_seen) < KILLS_AFTER_PROGRESS) and attempts < 300:
        attempts += 1
        # a moment drawn over the training (plus a little): most kills land in a step or a write
        finished, _ = run(tmp_path, ckdir, tmp_path / "out.npz", kill_after=float(rng.uniform(0.05, 1.2) * seconds))
        if finished:
            ckdir_files = train.list_checkpoints(ckdir)
            assert ckdir_files
            # start over to get more kills: a finished run proves nothing more
            for f in ckdir.iterdir():
                f.unlink()
            continue
        kills += 1
        ckpts = train.list_checkpoints(ckdir)
        if ckpts:  # a kill before the first checkpoint leaves none, which is fine
            newest = ckpts[-1]
            npvae.load(newest)  # loadable, or this raises
            train.load_training_checkpoint(newest)
            steps_seen.append(int(newest.name[5:15]))
    assert len(steps_seen) >= KILLS_AFTER_PROGRESS, (attempts, steps_seen)
    run(tmp_path, ckdir, tmp_path / "resumed.npz")
    resumed = npvae.load(tmp_path / "resumed.npz")
    for k in reference.params:
        np.testing.assert_array_equal(resumed.params[k], reference.params[k])
    assert not list(ckdir.glob(".ckpt-*.tmp-*"))
