"""Optimizer updates against small cases worked out by hand."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npvae
from npvae import optim
from npvae.testing import strategies as nst

from helpers import DTYPES, agree, agree_elementwise


def run(opt, p0, grads):
    params = {"w": np.array(p0, dtype=np.float64)}
    state = opt.init(params)
    trace = []
    for g in grads:
        opt.update(params, {"w": np.array(g, dtype=np.float64)}, state)
        trace.append(params["w"].copy())
    return trace, state


def test_plain_sgd():
    trace, state = run(npvae.SGD(lr=0.1), [1.0, -2.0], [[0.5, 1.0], [0.5, 1.0]])
    np.testing.assert_allclose(trace[0], [0.95, -2.1])
    np.testing.assert_allclose(trace[1], [0.90, -2.2])
    assert int(state["step"]) == 2


def test_sgd_momentum_by_hand():
    # b1 = g1 = 1, p = 1 - 0.1*1 = 0.9;  b2 = 0.9*1 + 2 = 2.9, p = 0.9 - 0.29 = 0.61
    trace, state = run(npvae.SGD(lr=0.1, momentum=0.9), [1.0], [[1.0], [2.0]])
    np.testing.assert_allclose([t[0] for t in trace], [0.9, 0.61])
    np.testing.assert_allclose(state["momentum.w"], [2.9])


def test_sgd_nesterov_by_hand():
    # step1: b = 1, step = g + 0.9 b = 1.9, p = 1 - 0.19 = 0.81
    # step2: b = 0.9 + 2 = 2.9, step = 2 + 0.9*2.9 = 4.61, p = 0.81 - 0.461 = 0.349
    trace, _ = run(npvae.SGD(lr=0.1, momentum=0.9, nesterov=True), [1.0], [[1.0], [2.0]])
    np.testing.assert_allclose([t[0] for t in trace], [0.81, 0.349])


def test_adam_bias_correction_by_hand():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    g1, g2 = 0.5, -1.0
    trace, state = run(npvae.Adam(lr=lr, betas=(b1, b2), eps=eps), [1.0], [[g1], [g2]])
    # step 1: m̂ = g1, v̂ = g1² exactly, so the step is lr·g1/(|g1| + eps)
    p1 = 1.0 - lr * g1 / (abs(g1) + eps)
    m2 = b1 * (1 - b1) * g1 + (1 - b1) * g2
    v2 = b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2
    p2 = p1 - lr * (m2 / (1 - b1**2)) / (math.sqrt(v2 / (1 - b2**2)) + eps)
    np.testing.assert_allclose([t[0] for t in trace], [p1, p2], rtol=1e-12)
    np.testing.assert_allclose(state["m.w"], [m2], rtol=1e-12)
    np.testing.assert_allclose(state["v.w"], [v2], rtol=1e-12)


def test_adam_l2_versus_adamw_decoupled():
    lr, wd = 0.1, 0.5
    # L2: g' = g + wd p = 0 + 0.5 * 2 = 1, first step moves by lr·sign = 0.1
    (l2,), _ = run(npvae.Adam(lr=lr, weight_decay=wd), [2.0], [[0.0]])
    assert l2[0] == pytest.approx(2.0 - lr, rel=1e-6)
    # AdamW: p ← p(1 − lr wd) = 1.9, and g = 0 gives no Adam step
    (dw,), _ = run(npvae.AdamW(lr=lr, weight_decay=wd), [2.0], [[0.0]])
    assert dw[0] == pytest.approx(2.0 * (1 - lr * wd), rel=1e-12)


def test_clip_grad_norm():
    grads = {"a": np.array([3.0]), "b": np.array([[4.0]])}
    _, norm = optim.clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(grads["a"], [0.6])
    np.testing.assert_allclose(grads["b"], [[0.8]])
    small = {"a": np.array([0.3])}
    optim.clip_grad_norm(small, 1.0)
    assert small["a"][0] == 0.3


def test_clipping_inside_the_optimizer():
    trace, state = run(npvae.SGD(lr=1.0, clip_norm=1.0), [0.0, 0.0], [[30.0, 40.0]])
    np.testing.assert_allclose(trace[0], [-0.6, -0.8])
    assert float(state["grad_norm"]) == pytest.approx(50.0)


def test_learning_rate_schedule_drives_the_step():
    sched = npvae.StepDecay(1.0, every=1, gamma=0.5)
    trace, _ = run(npvae.SGD(lr=sched), [0.0], [[1.0]] * 3)
    np.testing.assert_allclose([t[0] for t in trace], [-1.0, -1.5, -1.75])


@pytest.mark.parametrize("opt", [npvae.SGD(lr=0.1, momentum=0.5, nesterov=True, clip_norm=2.0),
                                 npvae.Adam(lr=npvae.Warmup(npvae.Cosine(1e-3, 100), 10)),
                                 npvae.AdamW(lr=3e-4, weight_decay=0.1)])
def test_state_saves_and_config_round_trips(opt, tmp_path):
    params = {"a.W": np.ones((2, 3), np.float32), "a.b": np.zeros(3, np.float32)}
    state = opt.init(params)
    opt.update(params, {k: np.full_like(v, 0.1) for k, v in params.items()}, state)
    np.savez(tmp_path / "s.npz", **state)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        for k in state:
            assert np.array_equal(f[k], state[k])
    again = optim.from_config(opt.config())
    assert again.config() == opt.config()


def test_new_gradient_arrays_every_step_update_as_one_buffer_does():
    """A user's loop that gets new gradient arrays each step (views of a new buffer, as
    loss_and_grad hands out) updates bit for bit as one reused buffer; when one group of
    arrays stops being one buffer (here the first moments), the update notices and goes
    array by array, with the same numbers."""
    rng = np.random.default_rng(0)
    shapes = {"a": (3, 4), "b": (4,), "c": (2, 5)}

    def params():
        return optim.flat_like({k: np.zeros(s) for k, s in shapes.items()})
    steps = [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(6)]
    p1, p2 = params(), params()
    opt1, opt2 = npvae.Adam(lr=0.1), npvae.Adam(lr=0.1)
    s1, s2 = opt1.init(p1), opt2.init(p2)
    reused = optim.flat_like(p1)
    for i, g in enumerate(steps):
        for k in g:
            reused[k][...] = g[k]
        fresh = optim.flat_like(p2)
        for k in g:
            fresh[k][...] = g[k]
        if i == 3:  # the first moments become separate arrays
            for k in shapes:
                s2[f"m.{k}"] = s2[f"m.{k}"].copy()
        opt1.update(p1, reused, s1)
        opt2.update(p2, fresh, s2)
        for k in shapes:
            np.testing.assert_array_equal(p1[k], p2[k])
            np.testing.assert_array_equal(s1[f"m.{k}"], s2[f"m.{k}"])
        assert s1["grad_norm"] == s2["grad_norm"]
    assert optim.flat_base(s2[f"m.{k}"] for k in shapes) is None


def test_float32_parameters_stay_float32():
    params = {"w": np.ones(4, np.float32)}
    for opt in (npvae.SGD(momentum=0.9), npvae.Adam(), npvae.AdamW()):
        state = opt.init(params)
        opt.update(params, {"w": np.full(4, 0.1, np.float32)}, state)
        assert params["w"].dtype == np.float32
        assert all(v.dtype == np.float32 for k, v in state.items() if k.startswith(("m.", "v.", "momentum.")))


@pytest.mark.parametrize("make,match", [
    (lambda: npvae.SGD(lr=-1), "lr must be >= 0"),
    (lambda: npvae.SGD(momentum=1.0), "momentum must lie in"),
    (lambda: npvae.SGD(nesterov=True), "nesterov=True needs momentum"),
    (lambda: npvae.Adam(betas=(0.9, 1.0)), "betas must lie in"),
    (lambda: npvae.Adam(clip_norm=0), "clip_norm must be > 0"),
    (lambda: npvae.Adam(lr=lambda t: 0.1), "must be an npvae.schedules object"),
])
def test_bad_optimizer_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# ----------------------------------------------------------------------------------------
# The kernels that run (adam_update_, sgd_update_) against the references, directly
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.01, False), (0.01, True)])
@given(data=st.data(), step=st.integers(1, 10_000), lr=st.floats(1e-5, 0.1))
def test_adam_kernel_matches_its_reference(dtype, wd, decoupled, data, step, lr):
    n = data.draw(st.integers(1, 300))
    p, g = (data.draw(nst.arrays((n,), low=-3, high=3)).astype(dtype) for _ in range(2))
    m = data.draw(nst.arrays((n,), low=-1, high=1)).astype(dtype)
    v = data.draw(nst.arrays((n,), low=0, high=2)).astype(dtype)
    ref = [a.copy() for a in (p, g, m, v)]
    optim.adam_update(*ref, step, lr, 0.9, 0.999, 1e-8, wd, decoupled)
    c = np.array(optim.adam_constants(step, lr, 0.9, 0.999, 1e-8, wd, decoupled), dtype=dtype)
    optim.adam_update_(p, g, m, v, c)
    agree(dtype, (m, ref[2]), (v, ref[3]))
    agree_elementwise(dtype, p, ref[0], [ref[0], lr * np.ones_like(p) * 10])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.01)])
@given(data=st.data(), lr=st.floats(1e-5, 0.1))
def test_sgd_kernel_matches_its_reference(dtype, momentum, nesterov, wd, data, lr):
    n = data.draw(st.integers(1, 300))
    p, g, buf = (data.draw(nst.arrays((n,), low=-3, high=3)).astype(dtype) for _ in range(3))
    ref = [p.copy(), g.copy(), buf.copy() if momentum else None]
    optim.sgd_update(*ref, lr, momentum, nesterov, wd)
    t = p.dtype.type
    optim.sgd_update_(p, g, buf if momentum else p[:0], t(lr), t(momentum), nesterov, t(wd))
    agree_elementwise(dtype, p, ref[0], [ref[0], lr * (np.abs(g) + np.abs(buf) + np.abs(p))])
    if momentum:
        agree_elementwise(dtype, buf, ref[2], [np.abs(ref[2]) + np.abs(g)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_kernel_keeps_an_inf_weight_out_of_the_moments_without_l2(dtype):
    """0 · p is never added when λ = 0: an inf weight leaves m and v finite, as the
    reference (which never adds the term) does."""
    p = np.array([np.inf, 1.0], dtype)
    g, m, v = np.ones(2, dtype), np.zeros(2, dtype), np.zeros(2, dtype)
    optim.adam_update_(p, g, m, v, np.array(optim.adam_constants(1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False), dtype))
    assert np.isfinite(m).all() and np.isfinite(v).all()
