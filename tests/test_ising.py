"""The built-in Ising data: the physics is right, the runs are seeded, the cache works.

Tolerance for Onsager's M(T) at L = 32: below T_c the correlation length is a few lattice
spacings (ξ ≈ 1-2 at T = 2.0), so finite-size corrections to ⟨|m|⟩ are of order e^{−L/ξ},
far below 1e-3; the statistical error of 200 samples, 5 sweeps apart, was measured at
0.0021 (T = 2.0) and 0.0005 (T = 1.5).  0.01 covers both with room (≈ 4.5 standard errors).
"""
import math

import numpy as np
import pytest

from npvae import ising

TEMPS = (0.5, 1.5, 2.0, 5.0, 50.0)


@pytest.fixture(scope="module")
def sample():
    return ising.simulate(L=32, temperatures=TEMPS, n_per_T=200, n_therm=300, n_decorr=5, seed=0)


def by_T(d, T, key):
    return d[key][d["T"] == T]


def test_critical_temperature():
    assert ising.T_CRITICAL == pytest.approx(2.269185314, rel=1e-9)
    assert ising.onsager_magnetisation(3.0) == 0.0
    assert ising.onsager_magnetisation(1.0) == pytest.approx((1 - math.sinh(2.0) ** -4) ** 0.125)


@pytest.mark.parametrize("T", [1.5, 2.0])
def test_magnetisation_below_tc_matches_onsager(sample, T):
    am = np.abs(by_T(sample, T, "m"))
    assert am.mean() == pytest.approx(float(ising.onsager_magnetisation(T)), abs=0.01)


def test_magnetisation_vanishes_well_above_tc(sample):
    # |m| of a disordered 32 × 32 lattice is O(1/L): measured 0.042 at T = 5
    assert np.abs(by_T(sample, 5.0, "m")).mean() < 0.1
    assert np.abs(by_T(sample, 50.0, "m")).mean() < 0.06


def test_energy_limits(sample):
    assert by_T(sample, 0.5, "energy").mean() == pytest.approx(-2.0, abs=1e-3)   # ground state
    e50 = by_T(sample, 50.0, "energy")
    # high T: u = −2 tanh(1/T) + O(T⁻³); the standard error here is ≈ 0.003
    assert e50.mean() == pytest.approx(-2 * math.tanh(1 / 50), abs=0.012)


def test_energy_and_magnetisation_are_consistent(sample):
    s = sample["spins"].astype(np.int64)
    np.testing.assert_allclose(sample["m"], s.reshape(len(s), -1).mean(1))
    e = -(s * (np.roll(s, 1, 1) + np.roll(s, 1, 2))).sum(axis=(1, 2)) / (32 * 32)
    np.testing.assert_allclose(sample["energy"], e)


def test_wolff_cluster_limits():
    L = 8
    spins = np.ones((L, L), dtype=np.int64)
    u = np.full(2 + 4 * L * L, 0.5)
    assert ising.wolff_update(spins, 1e-3, u) == L * L          # p_add → 1: all aligned flip
    assert np.all(spins == -1)
    assert ising.wolff_update(spins, 1e6, u) == 1               # p_add → 0: one site


def test_seeded_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("NPVAE_CACHE", str(tmp_path))
    kw = dict(L=8, temperatures=(1.0, 3.0), n_per_T=5, n_therm=10, n_decorr=2, seed=3)
    a = ising.load(**kw)
    files = list(tmp_path.glob("ising-*.npz"))
    assert len(files) == 1
    b = ising.load(**kw)
    assert np.array_equal(a["spins"], b["spins"])
    c = ising.simulate(**kw)
    assert np.array_equal(a["spins"], c["spins"]) and a["spins"].dtype == np.int8
    d = ising.simulate(**{**kw, "seed": 4})
    assert not np.array_equal(a["spins"], d["spins"])
    files[0].write_bytes(b"damaged")
    assert np.array_equal(ising.load(**kw)["spins"], a["spins"])   # regenerated


def test_bernoulli_view():
    x = ising.as_bernoulli(np.array([[[1, -1], [-1, 1]]], dtype=np.int8))
    assert x.dtype == np.float32 and x.tolist() == [[1.0, 0.0, 0.0, 1.0]]


@pytest.mark.parametrize("kwargs,match", [(dict(L=1), "L must be >= 2"), (dict(temperatures=()), "temperatures"),
                                          (dict(temperatures=(-1.0,)), "temperatures"),
                                          (dict(n_per_T=0), "n_per_T must be >= 1")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ising.simulate(**{"L": 4, "n_per_T": 2, "n_therm": 1, **kwargs})


def test_a_truncated_cache_file_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv("NPVAE_CACHE", str(tmp_path))
    kw = dict(L=4, temperatures=(2.0,), n_per_T=5, n_therm=5, n_decorr=1)
    first = ising.load(**kw)
    cached = next(tmp_path.glob("ising-*.npz"))
    cached.write_bytes(cached.read_bytes()[:40])
    again = ising.load(**kw)
    assert np.array_equal(first["spins"], again["spins"])
