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
                        "--quiet", "--threads", "1"])
    for sig in ("wprime", "ttbar"):
        assert {"-ELBO", "reconstruction error", "KL", "PCA (3) reconstruction error"} <= set(res["signals"][sig])
        assert all(0 <= r["auc"] <= 1 for r in res["signals"][sig].values())
    assert (tmp_path / "run" / "result.json").exists()
    assert list((tmp_path / "cache" / "hep").glob("qcd-*.npy"))
