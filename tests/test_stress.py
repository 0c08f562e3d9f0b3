"""Numerical stress: aggressive training either stays finite or stops with DivergenceError,
and in both cases the newest checkpoint is intact (loadable, finite)."""
import numpy as np
import pytest

import npvae
from npvae import train


@pytest.mark.parametrize("case", ["bernoulli_logits_1e4", "logvar_50", "gaussian_lr_1e-2", "sgd_lr_10"])
def test_aggressive_training_is_finite_or_stops_cleanly(case, tmp_path):
    rng = np.random.default_rng(0)
    if case == "bernoulli_logits_1e4":
        x = (rng.random((512, 20)) < 0.5).astype(np.float32)
        model = npvae.VAE(20, 2, hidden=(16,))
        model.params["decoder.out.b"][:] = 1e4
        model.params["decoder.out.b"][::2] = -1e4
        opt = npvae.Adam(lr=1e-2, clip_norm=10.0)
    elif case == "logvar_50":
        x = (rng.random((512, 20)) < 0.5).astype(np.float32)
        model = npvae.VAE(20, 2, hidden=(16,))
        model.params["encoder.logvar.b"][:] = [50.0, -50.0]
        opt = npvae.Adam(lr=1e-2, clip_norm=10.0)
    elif case == "gaussian_lr_1e-2":
        x = rng.normal(size=(512, 10)).astype(np.float32) * 3
        model = npvae.VAE(10, 2, hidden=(16,), likelihood="gaussian", sigma="per_example")
        opt = npvae.Adam(lr=1e-2, clip_norm=10.0)
    else:
        x = rng.normal(size=(512, 10)).astype(np.float32) * 100
        model = npvae.VAE(10, 2, hidden=(16,), likelihood="gaussian", sigma=0.01)
        opt = npvae.SGD(lr=10.0)
    try:
        history = npvae.fit(model, x, epochs=25, batch_size=32, optimizer=opt, checkpoint_dir=tmp_path,
                            progress=False)
        diverged = False
    except npvae.DivergenceError as exc:
        diverged = True
        assert exc.epoch >= 1 and exc.step >= 1
    if not diverged:
        assert len(history) == 25 and np.all(np.isfinite(history["loss"]))
        assert all(np.isfinite(p).all() for p in model.params.values())
    ckpts = train.list_checkpoints(tmp_path)
    if ckpts:
        saved = npvae.load(ckpts[-1])  # load refuses NaN or inf parameters
        assert all(np.isfinite(p).all() for p in saved.params.values())
    if case == "sgd_lr_10":
        assert diverged
    if case in ("bernoulli_logits_1e4", "logvar_50"):
        assert not diverged


def test_divergence_on_unstandardised_data_says_what_to_do(tmp_path):
    x = np.random.default_rng(0).normal(size=(256, 10)).astype(np.float32) * 1e4
    model = npvae.VAE(10, 2, hidden=(16,), likelihood="gaussian", sigma="learned")
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(npvae.DivergenceError, match=r"reaches \|x\| = .*standardise it first"):
        npvae.fit(model, x, epochs=3, batch_size=32, optimizer=npvae.Adam(lr=1e-2, clip_norm=10.0),
                  checkpoint_dir=tmp_path, progress=False)
    # nothing was applied and nothing non-finite was written
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())
    assert not list(tmp_path.glob("ckpt-*"))
    z = npvae.data.Standardizer().fit(x).transform(x)
    model = npvae.VAE(10, 2, hidden=(16,), likelihood="gaussian", sigma="learned")
    h = npvae.fit(model, z, epochs=3, batch_size=32, optimizer=npvae.Adam(lr=1e-2, clip_norm=10.0),
                  progress=False)
    assert np.all(np.isfinite(h["loss"]))
