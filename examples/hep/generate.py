"""Simulated LHC jets for anomaly detection: Pythia 8 events, anti-kt R = 1.0 jets, jet
substructure features.  Needs the optional ``hep`` extra (pythia8mc, fastjet: GPL code, so
it stays an example and never an import of npvae):

    pip install --only-binary=:all: ".[hep]"

Samples (√s = 13 TeV, MPI off unless ``realistic``):
* ``qcd``: QCD dijets, HardQCD:all, pT̂ > 500 GeV (the background);
* ``wprime``: W′ (m = 2 TeV) → W Z → 4 quarks;
* ``ttbar``: boosted all-hadronic tt̄ (pT̂ > 500 GeV, W → quarks).

Clustering: visible final-state particles with |η| < 4, anti-kt R = 1.0, jets with
pT > 200 GeV.  Features of the two leading jets: pT, mass, trimmed mass (kt subjets of
R = 0.2 with pT > 5 % of the jet's kept), constituent count, N-subjettiness τ1, τ2, τ3
(exclusive-kt axes, β = 1, R0 = 1.0; written by hand below), τ21 and τ32; plus the dijet
mass.  Events are generated in chunks, each with its own seed, and cached on disk.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

JET_FEATURES = ("pt", "mass", "trimmed_mass", "n_constituents", "tau1", "tau2", "tau3", "tau21", "tau32")
FEATURES = tuple(f"j{i}_{f}" for i in (1, 2) for f in JET_FEATURES) + ("mjj",)
CHUNK = 500

SETTINGS = {
    "qcd": ["HardQCD:all = on", "PhaseSpace:pTHatMin = 500."],
    "wprime": ["NewGaugeBoson:ffbar2Wprime = on", "34:m0 = 2000.", "Wprime:coup2WZ = 1.",
               "34:onMode = off", "34:onIfAll = 23 24",
               "24:onMode = off", "24:onIfAny = 1 2 3 4 5", "23:onMode = off", "23:onIfAny = 1 2 3 4 5"],
    "ttbar": ["Top:gg2ttbar = on", "Top:qqbar2ttbar = on", "PhaseSpace:pTHatMin = 500.",
              "24:onMode = off", "24:onIfAny = 1 2 3 4 5"],
}


def _delta_r2(rap1, phi1, rap2, phi2):
    dphi = np.abs(phi1 - phi2)
    dphi = np.where(dphi > math.pi, 2 * math.pi - dphi, dphi)
    return (rap1 - rap2) ** 2 + dphi ** 2


def n_subjettiness(fastjet, constituents, n_max=3, r0=1.0):
    """τ_N = Σ_k pT_k min_a ΔR(k, a) / Σ_k pT_k R0, axes a the N exclusive-kt subjets."""
    pt = np.array([c.pt() for c in constituents])
    rap = np.array([c.rap() for c in constituents])
    phi = np.array([c.phi() for c in constituents])
    cs = fastjet.ClusterSequence(constituents, fastjet.JetDefinition(fastjet.kt_algorithm, 10.0))
    d0 = pt.sum() * r0
    taus = []
    for n in range(1, n_max + 1):
        if len(constituents) <= n:
            taus.append(0.0)
            continue
        axes = cs.exclusive_jets(n)
        dr = np.min([_delta_r2(rap, phi, a.rap(), a.phi()) for a in axes], axis=0) ** 0.5
        taus.append(float((pt * dr).sum() / d0))
    return taus


def trimmed_mass(fastjet, constituents, jet_pt, r_sub=0.2, f_cut=0.05):
    cs = fastjet.ClusterSequence(constituents, fastjet.JetDefinition(fastjet.kt_algorithm, r_sub))
    kept = [s for s in cs.inclusive_jets() if s.pt() > f_cut * jet_pt]
    if not kept:
        return 0.0
    px, py, pz, e = (sum(getattr(s, f)() for s in kept) for f in ("px", "py", "pz", "e"))
    return math.sqrt(max(e * e - px * px - py * py - pz * pz, 0.0))


def jet_features(fastjet, jet):
    cons = list(jet.constituents())
    t1, t2, t3 = n_subjettiness(fastjet, cons)
    return [jet.pt(), jet.m(), trimmed_mass(fastjet, cons, jet.pt()), float(len(cons)), t1, t2, t3,
            t2 / t1 if t1 > 0 else 0.0, t3 / t2 if t2 > 0 else 0.0]


def generate_chunk(sample, n_events, seed, realistic=False):
    """Features (n, len(FEATURES)) of events with two jets of pT > 200 GeV (others dropped)."""
    import fastjet
    import pythia8mc

    pythia = pythia8mc.Pythia("", False)
    for s in ["Beams:eCM = 13000.", "Print:quiet = on", "Next:numberCount = 0", "Random:setSeed = on",
              f"Random:seed = {seed}", f"PartonLevel:MPI = {'on' if realistic else 'off'}"] + SETTINGS[sample]:
        if not pythia.readString(s):
            raise RuntimeError(f"Pythia rejected the setting {s!r}")
    if not pythia.init():
        raise RuntimeError(f"Pythia failed to initialise the {sample} sample")
    jetdef = fastjet.JetDefinition(fastjet.antikt_algorithm, 1.0)
    rows = []
    for _ in range(n_events):
        if not pythia.next():
            continue
        ev = pythia.event
        parts = [fastjet.PseudoJet(q.px(), q.py(), q.pz(), q.e()) for q in
                 (ev[k] for k in range(ev.size())) if q.isFinal() and q.isVisible() and abs(q.eta()) < 4.0]
        cs = fastjet.ClusterSequence(parts, jetdef)
        jets = fastjet.sorted_by_pt(cs.inclusive_jets(200.0))
        if len(jets) < 2:
            continue
        j1, j2 = jets[0], jets[1]
        mjj2 = (j1.e() + j2.e()) ** 2 - sum((getattr(j1, f)() + getattr(j2, f)()) ** 2 for f in ("px", "py", "pz"))
        rows.append(jet_features(fastjet, j1) + jet_features(fastjet, j2) + [math.sqrt(max(mjj2, 0.0))])
    return np.array(rows, dtype=np.float64).reshape(-1, len(FEATURES))


def cache_dir() -> Path:
    root = os.environ.get("NPVAE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "npvae") / "hep"


def load(sample, n_events, seed=0, realistic=False, verbose=False):
    """Features of ``n_events`` generated events of ``sample`` (chunks of CHUNK, cached)."""
    if sample not in SETTINGS:
        raise ValueError(f"sample must be one of {sorted(SETTINGS)}, got {sample!r}")
    out = []
    n_chunks = math.ceil(n_events / CHUNK)
    for c in range(n_chunks):
        n = min(CHUNK, n_events - c * CHUNK)
        path = cache_dir() / f"{sample}-{'mpi' if realistic else 'nompi'}-s{seed}-c{c}-n{n}.npy"
        if path.exists():
            out.append(np.load(path, allow_pickle=False))
            continue
        chunk_seed = 1 + (seed * 1000 + c) * 3 + list(SETTINGS).index(sample)
        feats = generate_chunk(sample, n, chunk_seed % 900_000_000, realistic)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, feats)
        os.replace(tmp, path)
        if verbose:
            print(f"  {sample}: chunk {c + 1}/{n_chunks} ({len(feats)} events)", flush=True)
        out.append(feats)
    return np.concatenate(out)
