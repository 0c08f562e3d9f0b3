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
mass.  Events are generated in chunks (``Pythia.nextBatch``, an awkward array per chunk),
each with its own seed, and cached on disk.  The features of a chunk are computed for all
its events at once with FastJet's multi-event interface (``event_features``); the per-event
functions (``jet_features``, ``n_subjettiness``, ``trimmed_mass``) are the readable
definition, and the tests check that both give the same numbers on the same events.

One thread (``Pythia``) is exactly reproducible; ``threads`` > 1 uses ``PythiaParallel``
(about 2× faster generation on 2 cores), whose events depend on thread timing.
"""
from __future__ import annotations

import math
import os
import warnings
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


# ----------------------------------------------------------------------------------------
# The same features for a whole batch of events at once (awkward arrays, FastJet's
# multi-event interface): what the generator uses.  tests/test_hep.py checks them against
# the per-event functions above on the same events.
# ----------------------------------------------------------------------------------------
INVISIBLE_IDS = (12, 14, 16)  # neutrinos: the only invisible final states of these samples


def _rap_phi(px, py, pz, e):
    """FastJet's rapidity y = ∓½ ln((pT² + max(m², 0)) / (E + |pz|)²) (sign of pz) and
    φ ∈ [0, 2π), elementwise on NumPy or awkward arrays."""
    pt2 = px * px + py * py
    m2 = np.maximum(e * e - pt2 - pz * pz, 0.0)
    half_log = 0.5 * np.log((pt2 + m2) / (e + np.abs(pz)) ** 2)
    rap = half_log * (1 - 2 * (pz >= 0))  # −half_log where pz ≥ 0: the same code for both array kinds
    phi = np.arctan2(py, px)
    phi = phi + 2 * math.pi * (phi < 0)
    return rap, phi


def _visible(events):
    """Final-state (status > 0), visible particles with |η| < 4, as Momentum4D records."""
    import awkward as ak

    prt = events.prt
    p = prt.p
    pt = np.hypot(p.px, p.py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(p.pz / pt)
    aid = abs(prt.id)
    keep = (prt.status > 0) & (abs(eta) < 4.0)
    for i in INVISIBLE_IDS:
        keep = keep & (aid != i)
    return ak.zip({"px": p.px[keep], "py": p.py[keep], "pz": p.pz[keep], "E": p.e[keep]},
                  with_name="Momentum4D")


def _batch_taus(fastjet, cons, pt, n_cons, n_max=3, r0=1.0):
    """τ_1..τ_n_max of every jet (rows of cons), exclusive-kt axes; 0 where a jet has no more
    than N constituents (as n_subjettiness)."""
    import awkward as ak

    rap, phi = _rap_phi(cons.px, cons.py, cons.pz, cons.E)
    taus = np.zeros((len(n_cons), n_max))
    kt = fastjet.JetDefinition(fastjet.kt_algorithm, 10.0)
    for n in range(1, n_max + 1):
        rows = np.flatnonzero(n_cons > n)
        if not len(rows):
            continue
        sub = cons[rows]
        with warnings.catch_warnings():
            # fastjet 3.5.2's multi-event check compares the JetDefinition with the algorithm
            # enum, so it warns about "jet-finders other than kt" for kt itself
            warnings.filterwarnings("ignore", message="dcut and exclusive jets")
            axes = fastjet.ClusterSequence(sub, kt).exclusive_jets(n_jets=n)
        a_rap, a_phi = (ak.to_numpy(ak.to_regular(v)) for v in
                        _rap_phi(axes.px, axes.py, axes.pz, axes.E))
        best = None
        for a in range(n):
            dphi = abs(phi[rows] - a_phi[:, a])
            dphi = ak.where(dphi > math.pi, 2 * math.pi - dphi, dphi)
            dr2 = (rap[rows] - a_rap[:, a]) ** 2 + dphi ** 2
            best = dr2 if best is None else np.minimum(best, dr2)
        taus[rows, n - 1] = ak.to_numpy(ak.sum(pt[rows] * np.sqrt(best), axis=1)) / (
            ak.to_numpy(ak.sum(pt[rows], axis=1)) * r0)
    return taus


def _batch_trimmed_mass(fastjet, cons, jet_pt, r_sub=0.2, f_cut=0.05):
    import awkward as ak

    sub = fastjet.ClusterSequence(cons, fastjet.JetDefinition(fastjet.kt_algorithm, r_sub)).inclusive_jets()
    sub = sub[np.hypot(sub.px, sub.py) > f_cut * jet_pt]
    e, px, py, pz = (ak.to_numpy(ak.sum(getattr(sub, f), axis=1)) for f in ("E", "px", "py", "pz"))
    return np.sqrt(np.maximum(e * e - px * px - py * py - pz * pz, 0.0))


def event_features(events):
    """FEATURES (n, 19) of a batch of Pythia events (``Pythia.nextBatch``'s awkward array);
    events with fewer than two anti-kt R = 1.0 jets of pT > 200 GeV are dropped."""
    import awkward as ak
    import fastjet

    n_feat = len(FEATURES)
    if len(events) == 0:
        return np.zeros((0, n_feat))
    cs = fastjet.ClusterSequence(_visible(events), fastjet.JetDefinition(fastjet.antikt_algorithm, 1.0))
    jets, cons = cs.inclusive_jets(min_pt=200.0), cs.constituents(min_pt=200.0)
    order = ak.argsort(jets.px ** 2 + jets.py ** 2, axis=1, ascending=False)
    jets, cons = jets[order], cons[order]
    two = ak.num(jets) >= 2
    if not ak.any(two):
        return np.zeros((0, n_feat))
    jets, cons = jets[two][:, :2], cons[two][:, :2]
    jf, cf = ak.flatten(jets), ak.flatten(cons, axis=1)  # rows: j1, j2 of event 0, then event 1, …
    e, px, py, pz = (ak.to_numpy(getattr(jf, f)) for f in ("E", "px", "py", "pz"))
    pt = np.hypot(px, py)
    m2 = e * e - px * px - py * py - pz * pz
    mass = np.sign(m2) * np.sqrt(np.abs(m2))  # FastJet's m(): −√(−m²) when m² < 0
    n_cons = ak.to_numpy(ak.num(cf))
    taus = _batch_taus(fastjet, cf, np.hypot(cf.px, cf.py), n_cons)
    t1, t2, t3 = taus.T
    with np.errstate(divide="ignore", invalid="ignore"):
        t21 = np.where(t1 > 0, t2 / t1, 0.0)
        t32 = np.where(t2 > 0, t3 / t2, 0.0)
    per_jet = np.column_stack([pt, mass, _batch_trimmed_mass(fastjet, cf, pt), n_cons.astype(np.float64),
                               t1, t2, t3, t21, t32])
    j1, j2 = per_jet[0::2], per_jet[1::2]
    es, pxs, pys, pzs = (v[0::2] + v[1::2] for v in (e, px, py, pz))
    mjj = np.sqrt(np.maximum(es * es - pxs * pxs - pys * pys - pzs * pzs, 0.0))
    return np.column_stack([j1, j2, mjj])


def reference_event_features(events):
    """The same features, event by event through PseudoJets and the readable functions above
    (slow: the oracle the tests compare event_features with)."""
    import fastjet

    jetdef = fastjet.JetDefinition(fastjet.antikt_algorithm, 1.0)
    rows = []
    for ev in _visible(events):
        parts = [fastjet.PseudoJet(float(q.px), float(q.py), float(q.pz), float(q.E)) for q in ev]
        cs = fastjet.ClusterSequence(parts, jetdef)
        jets = fastjet.sorted_by_pt(cs.inclusive_jets(200.0))
        if len(jets) < 2:
            continue
        j1, j2 = jets[0], jets[1]
        mjj2 = (j1.e() + j2.e()) ** 2 - sum((getattr(j1, f)() + getattr(j2, f)()) ** 2 for f in ("px", "py", "pz"))
        rows.append(jet_features(fastjet, j1) + jet_features(fastjet, j2) + [math.sqrt(max(mjj2, 0.0))])
    return np.array(rows, dtype=np.float64).reshape(-1, len(FEATURES))


def make_pythia(sample, seed, realistic=False, threads=1):
    """An initialised Pythia for ``sample``: ``Pythia`` for threads = 1 (exactly reproducible),
    ``PythiaParallel`` with that many threads otherwise (faster; which thread generates which
    event depends on timing, so the events are not reproducible)."""
    import pythia8mc

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    pythia = pythia8mc.Pythia("", False) if threads == 1 else pythia8mc.PythiaParallel("", False)
    settings = ["Beams:eCM = 13000.", "Print:quiet = on", "Next:numberCount = 0", "Random:setSeed = on",
                f"Random:seed = {seed}", f"PartonLevel:MPI = {'on' if realistic else 'off'}"]
    if threads > 1:
        settings.append(f"Parallelism:numThreads = {threads}")
    for s in settings + SETTINGS[sample]:
        if not pythia.readString(s):
            raise RuntimeError(f"Pythia rejected the setting {s!r}")
    if not pythia.init():
        raise RuntimeError(f"Pythia failed to initialise the {sample} sample")
    return pythia


def generate_chunk(sample, n_events, seed, realistic=False, threads=1):
    """Features (n, len(FEATURES)) of events with two jets of pT > 200 GeV (others dropped)."""
    return event_features(make_pythia(sample, seed, realistic, threads).nextBatch(n_events))


def cache_dir() -> Path:
    root = os.environ.get("NPVAE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "npvae") / "hep"


def load(sample, n_events, seed=0, realistic=False, threads=1, verbose=False):
    """Features of ``n_events`` generated events of ``sample`` (chunks of CHUNK, cached).
    ``threads`` > 1 generates with PythiaParallel (faster, not reproducible event by event);
    its chunks are cached apart from the exact one-thread chunks."""
    if sample not in SETTINGS:
        raise ValueError(f"sample must be one of {sorted(SETTINGS)}, got {sample!r}")
    out = []
    n_chunks = math.ceil(n_events / CHUNK)
    for c in range(n_chunks):
        n = min(CHUNK, n_events - c * CHUNK)
        name = f"{sample}-{'mpi' if realistic else 'nompi'}-s{seed}-c{c}-n{n}" + (f"-t{threads}" if threads > 1 else "")
        path = cache_dir() / f"{name}.npy"
        if path.exists():
            out.append(np.load(path, allow_pickle=False))
            continue
        chunk_seed = 1 + (seed * 1000 + c) * 3 + list(SETTINGS).index(sample)
        feats = generate_chunk(sample, n, chunk_seed % 900_000_000, realistic, threads)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, feats)
        os.replace(tmp, path)
        if verbose:
            print(f"  {sample}: chunk {c + 1}/{n_chunks} ({len(feats)} events)", flush=True)
        out.append(feats)
    return np.concatenate(out)
