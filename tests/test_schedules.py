import math

import pytest

import npvae
from npvae import schedules


def test_learning_rate_schedules_at_known_points():
    assert npvae.Constant(0.1)(0) == 0.1 and npvae.Constant(0.1)(10**6) == 0.1
    s = npvae.StepDecay(1.0, every=10, gamma=0.1)
    assert [s(0), s(9), s(10), s(25)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    c = npvae.Cosine(1.0, total=100, min_lr=0.1)
    assert c(0) == pytest.approx(1.0) and c(50) == pytest.approx(0.55) and c(100) == pytest.approx(0.1)
    assert c(1000) == pytest.approx(0.1)
    w = npvae.Warmup(0.5, steps=4)
    assert [w(0), w(1), w(3), w(100)] == pytest.approx([0.125, 0.25, 0.5, 0.5])
    wc = npvae.Warmup(npvae.Cosine(1.0, total=10), steps=2)
    assert wc(0) == pytest.approx(0.5 * npvae.Cosine(1.0, total=10)(0))


def test_linear_beta_warm_up_in_epochs_and_steps():
    b = npvae.LinearBeta(4)  # over 4 epochs
    assert b(0, 10) == 0.0
    assert b(10, 10) == pytest.approx(0.25)
    assert b(20, 10) == pytest.approx(0.5)
    assert b(40, 10) == 1.0 and b(400, 10) == 1.0
    s = npvae.LinearBeta(100, unit="step")
    assert s(50, 7) == pytest.approx(0.5)


def test_cyclical_beta_fu_et_al():
    b = npvae.CyclicalBeta(total=8, cycles=4, ratio=0.5)  # cycles of 2 epochs, rising for 1
    pts = [b(step, 10) for step in (0, 5, 10, 15, 20, 25, 30, 79, 80, 200)]
    assert pts == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0])


def test_constant_beta_and_conversions():
    assert schedules.as_beta_schedule(0.3)(123, 4) == 0.3
    with pytest.raises(ValueError, match="beta must be >= 0"):
        schedules.as_beta_schedule(-1.0)
    with pytest.raises(TypeError, match="npvae.schedules object"):
        schedules.as_beta_schedule(lambda s, n: 1.0)


@pytest.mark.parametrize("sched", [npvae.LinearBeta(3, unit="step", start=0.1, stop=0.9),
                                   npvae.CyclicalBeta(10, 2, 0.3), npvae.ConstantBeta(0.2),
                                   npvae.Warmup(npvae.StepDecay(1.0, 5), 3), npvae.Cosine(1, 9)])
def test_schedules_round_trip_through_config(sched):
    again = schedules.from_config(sched.config())
    assert again == sched
    assert all(again(t, 3) == sched(t, 3) for t in range(20)) if isinstance(
        sched, (npvae.LinearBeta, npvae.CyclicalBeta, npvae.ConstantBeta)) else all(
        again(t) == sched(t) for t in range(20))


@pytest.mark.parametrize("make", [lambda: npvae.LinearBeta(0), lambda: npvae.CyclicalBeta(5, ratio=0),
                                  lambda: npvae.CyclicalBeta(5, unit="minute"),
                                  lambda: npvae.StepDecay(1.0, every=0), lambda: npvae.Cosine(math.nan, 3)])
def test_bad_schedule_arguments(make):
    with pytest.raises(ValueError):
        make()
