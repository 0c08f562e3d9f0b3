"""The HEP example: the PCA baseline always; the Pythia/FastJet pipeline when the hep extra is
there.  (ROC AUC and rejection are tested in test_metrics.py.)"""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

HEP = Path(__file__).resolve().parents[1] / "examples" / "hep"
sys.path.insert(0, str(HEP))
import anomaly  # noqa: E402
import generate  # noqa: E402

HAVE_HEP = all(importlib.util.find_spec(m) is not None for m in ("pythia8mc", "fastjet"))
needs_hep = pytest.mark.skipif(not HAVE_HEP, reason="the hep extra (pythia8mc, fastjet) is not installed: "
                               "pip install --only-binary=pythia8mc,fastjet '.[hep]' (.ci/run installs it)")


def test_pca_baseline_is_zero_on_its_own_subspace():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 6))
    (err,) = anomaly.pca_scores(x, x, k=3)
    assert np.max(err) < 1e-20 * np.sum(x ** 2)


def test_best_single_feature_looks_both_ways():
    """A signal below the background (like τ21 for two-prong jets) is a cut too: the baseline
    must find it, with AUC 1 − AUC(x), not only features where the signal sits higher."""
    rng = np.random.default_rng(0)
    bkg, sig = rng.normal(size=(2000, 3)), rng.normal(size=(1000, 3))
    sig[:, 1] -= 2.0
    sig[:, 2] += 0.5
    i, sgn, auc = anomaly.best_single_feature(bkg, sig)
    assert (i, sgn) == (1, -1)
    assert auc == anomaly.roc_auc(-bkg[:, 1], -sig[:, 1]) == 1 - anomaly.roc_auc(bkg[:, 1], sig[:, 1])
    assert auc > 0.9


def test_bootstrap_aucs_are_paired():
    """The same resampled events for every score: identical scores give identical AUCs in
    every resample, and the spread matches the textbook √(AUC(1 − AUC)/n)-size error."""
    rng = np.random.default_rng(4)
    b, s = rng.normal(size=800), rng.normal(1.0, 1.0, size=600)
    boot = anomaly.bootstrap_aucs({"a": b, "same": b.copy()}, {"a": s, "same": s.copy()}, n_boot=100)
    np.testing.assert_array_equal(boot["a"], boot["same"])
    auc = anomaly.roc_auc(b, s)
    assert abs(np.mean(boot["a"]) - auc) < 0.01 and 0.005 < np.std(boot["a"]) < 0.02


def test_bad_ensemble_size_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPVAE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit):
        anomaly.main(["--ensemble", "0", "--out", str(tmp_path / "run")])
    assert "--ensemble must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_mixture_log_likelihood():
    """ln (1/M) Σ_k p_k(x): M copies of one model give that model's ln p(x); two different
    models give the log of the mean of their densities."""
    import npvae
    x = np.random.default_rng(5).normal(size=(30, 4))
    a = npvae.VAE(4, 2, hidden=(8,), likelihood="gaussian", sigma="learned", seed=1, dtype=np.float64)
    b = npvae.VAE(4, 2, hidden=(8,), likelihood="gaussian", sigma="learned", seed=2, dtype=np.float64)
    la = a.log_likelihood(x, n_samples=20, rng=np.random.default_rng(1))
    lb = b.log_likelihood(x, n_samples=20, rng=np.random.default_rng(1))
    np.testing.assert_allclose(anomaly.mixture_log_likelihood([a, a, a], x, n_samples=20), la, rtol=1e-12)
    np.testing.assert_allclose(anomaly.mixture_log_likelihood([a, b], x, n_samples=20),
                               np.log((np.exp(la) + np.exp(lb)) / 2), rtol=1e-10)


def test_preprocess_log_coordinates():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.01, 500, size=(50, len(generate.FEATURES)))
    x[0, anomaly.TAU_FEATURES[0]] = 0.0  # τ = 0: floored, not -inf
    u = anomaly.preprocess(x)
    assert np.all(np.isfinite(u))
    np.testing.assert_allclose(u[:, anomaly.LOG_FEATURES], np.log1p(x[:, anomaly.LOG_FEATURES]))
    np.testing.assert_allclose(u[1:, anomaly.TAU_FEATURES], np.log(x[1:, anomaly.TAU_FEATURES]))
    assert u[0, anomaly.TAU_FEATURES[0]] == np.log(anomaly.TAU_FLOOR)
    lin = anomaly.preprocess(x, "linear")
    np.testing.assert_array_equal(lin[:, anomaly.TAU_FEATURES], x[:, anomaly.TAU_FEATURES])
    with pytest.raises(ValueError, match="tau_coords"):
        anomaly.preprocess(x, "sqrt")


@pytest.mark.parametrize("tau_coords", ["log", "linear"])
def test_log_jacobian_matches_finite_differences(tau_coords):
    """ln |det ∂z/∂x| of the (diagonal) preprocessing + standardisation, against central
    differences of z(x) column by column, on the VAE's columns."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0.02, 300, size=(20, len(generate.FEATURES)))
    cols = anomaly.vae_columns("independent")
    mean, std = rng.normal(size=len(cols)), rng.uniform(0.2, 3, size=len(cols))

    def z(a):
        return (anomaly.preprocess(a, tau_coords)[:, cols] - mean) / std

    logged = np.isin(cols, anomaly.LOG_FEATURES + (anomaly.TAU_FEATURES if tau_coords == "log" else []))
    got = anomaly.log_jacobian(anomaly.preprocess(x, tau_coords)[:, cols], std, logged)
    want = np.zeros(len(x))
    for k, c in enumerate(cols):
        h = 1e-6 * x[:, c]
        up, down = x.copy(), x.copy()
        up[:, c] += h
        down[:, c] -= h
        want += np.log(np.abs((z(up)[:, k] - z(down)[:, k]) / (2 * h)))
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7)


def test_feature_unit_density_of_a_lognormal():
    """If ln x ~ N(m, s²), the standard-normal density of z = (ln x − m)/s plus the log-Jacobian
    is the log-normal density of x: the score in the features' own units is a true density."""
    m, s = 0.3, 0.7
    x = np.random.default_rng(2).lognormal(m, s, size=(100, 1))
    u = np.log(x)
    log_pz = -0.5 * ((u[:, 0] - m) / s) ** 2 - 0.5 * np.log(2 * np.pi)
    log_px = log_pz + anomaly.log_jacobian(u, np.array([s]), np.array([True]))
    lognormal = -np.log(x[:, 0] * s * np.sqrt(2 * np.pi)) - (np.log(x[:, 0]) - m) ** 2 / (2 * s ** 2)
    np.testing.assert_allclose(log_px, lognormal, rtol=1e-12)


def test_tail_probability_and_fisher():
    rng = np.random.default_rng(3)
    cal = rng.normal(size=500)
    s = np.concatenate([rng.normal(size=200), [-10.0, 10.0, cal[7]]])
    p = anomaly.tail_probability(cal, s)
    brute = np.array([(1 + np.sum(cal >= v)) / (len(cal) + 1) for v in s])
    np.testing.assert_array_equal(p, brute)
    assert p[-3] == 1.0 and p[-2] == 1 / 501 and np.all(p > 0)
    np.testing.assert_allclose(anomaly.fisher_combination(p, p[::-1]), -np.log(p * p[::-1]))
    # independent uniform p-values: −Σ ln p_k is Gamma(k, 1), mean k
    u = rng.random((2, 100_000))
    assert abs(np.mean(anomaly.fisher_combination(*u)) - 2) < 0.03


@needs_hep
def test_generated_features(tmp_path, monkeypatch):
    feats = generate.generate_chunk("qcd", 150, seed=7)
    assert feats.shape[1] == len(generate.FEATURES) == 19
    assert 100 <= feats.shape[0] <= 150
    f = dict(zip(generate.FEATURES, feats.T))
    assert np.all(f["j1_pt"] > 200) and np.all(f["j1_pt"] >= f["j2_pt"] - 1e-9)
    # with exclusive-kt axes τ_N usually, but not always, falls with N
    taus = np.stack([f["j1_tau1"], f["j1_tau2"], f["j1_tau3"]])
    assert np.all((taus >= 0) & (taus <= 1.5)) and np.median(f["j1_tau21"]) < 1 and np.median(f["j1_tau32"]) < 1
    assert np.all(f["j1_trimmed_mass"] <= f["j1_mass"] + 1e-6)
    again = generate.generate_chunk("qcd", 150, seed=7)
    assert np.array_equal(feats, again)  # one thread, one seed: exact
    w = generate.generate_chunk("wprime", 100, seed=7)
    assert 60 < np.median(w[:, generate.FEATURES.index("j1_mass")]) < 120  # W/Z jets


@needs_hep
def test_batch_features_equal_the_per_event_definition():
    """event_features (awkward, FastJet's multi-event interface) gives the numbers of the
    readable per-event functions on the same events, for every sample."""
    for sample in ("qcd", "wprime", "ttbar"):
        events = generate.make_pythia(sample, seed=11).nextBatch(40)
        fast, ref = generate.event_features(events), generate.reference_event_features(events)
        assert fast.shape == ref.shape and len(ref) >= 30
        np.testing.assert_allclose(fast, ref, rtol=1e-10, atol=1e-12)


@needs_hep
def test_parallel_generation_runs():
    feats = generate.generate_chunk("ttbar", 60, seed=3, threads=2)
    assert feats.shape[1] == 19 and 40 <= len(feats) <= 60 and np.isfinite(feats).all()
    with pytest.raises(ValueError, match="threads"):
        generate.make_pythia("qcd", 1, threads=0)


@needs_hep
def test_anomaly_pipeline_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NPVAE_CACHE", str(tmp_path / "cache"))
    res = anomaly.main(["--qcd", "400", "--signal", "150", "--epochs", "3", "--out", str(tmp_path / "run"),
                        "--quiet", "--threads", "1", "--ensemble", "2"])
    for sig in ("wprime", "ttbar"):
        assert {"-ELBO", "reconstruction error", "KL", "PCA (3) reconstruction error", anomaly.COMBINED,
                *anomaly.LIKELIHOOD_SCORES} <= set(res["signals"][sig])
        assert isinstance(res["target_met"][sig], bool)
        assert len(res["margin"][sig]) == 2 and all(m["std"] > 0 for m in res["margin"][sig].values())
        assert all(0 <= r["auc"] <= 1 for r in res["signals"][sig].values())
    assert res["ensemble"]["members"] == 2 and np.isfinite(res["ensemble"]["qcd_val_log_px"])
    assert (tmp_path / "run" / "result.json").exists()
    assert list((tmp_path / "cache" / "hep").glob("qcd-*.npy"))


@needs_hep
@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="needs mpi4py: pip install '.[mpi]'")
def test_anomaly_pipeline_under_mpiexec_gives_one_process_result(tmp_path):
    import json
    import os
    import shutil
    import subprocess

    from npvae.kernels import jit
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if mpiexec is None:
        pytest.skip("needs mpiexec: pip install '.[mpi]'")
    env = dict(os.environ, NPVAE_CACHE=str(tmp_path / "cache"))  # the events: generated once, then shared
    if jit.KERNEL_CACHE is not None:
        env["NUMBA_CACHE_DIR"] = str(jit.KERNEL_CACHE)  # the compiled kernels: the usual cache
    args = [str(HEP / "anomaly.py"), "--qcd", "400", "--signal", "150", "--epochs", "3", "--quiet",
            "--threads", "1", "--ensemble", "3"]
    results = {}
    for n in (0, 3):
        out = tmp_path / f"run{n}"
        cmd = ([mpiexec, "-n", str(n)] if n else []) + [sys.executable, *args, "--out", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        results[n] = json.loads((out / "result.json").read_text())
        results[n].pop("generation_seconds")
    one, many = results[0], results[3]
    # the grid: six models, two per rank, each trained alone: the same numbers
    assert many["grid"] == one["grid"] and many["chosen"] == one["chosen"]
    # the ensemble's two extra members: trained data-parallel by a group of two ranks: rounding
    assert many["ensemble"]["qcd_val_log_px"] == pytest.approx(one["ensemble"]["qcd_val_log_px"], rel=1e-7)
    for sig in ("wprime", "ttbar"):
        for name, r in one["signals"][sig].items():
            assert many["signals"][sig][name]["auc"] == pytest.approx(r["auc"], abs=1e-6), name
