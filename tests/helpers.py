"""Helpers shared by the tests: an independent plain-NumPy forward of the VAE, used as an
oracle and to keep the finite-difference tests away from the kinks of relu / leaky_relu / elu;
and the check that stands in for a documented ``pip install`` of this project."""
import importlib.metadata as metadata
import importlib.util
import re
import shlex

import numpy as np

KINKED = {"relu", "leaky_relu", "elu"}


def _act(name, a):
    return {
        "identity": lambda a: a,
        "relu": lambda a: np.maximum(a, 0),
        "leaky_relu": lambda a: np.where(a > 0, a, 0.01 * a),
        "elu": lambda a: np.where(a > 0, a, np.exp(np.minimum(a, 0)) - 1),
        "tanh": np.tanh,
        "sigmoid": lambda a: 1 / (1 + np.exp(-a)),
        "softplus": lambda a: np.logaddexp(0, a),
    }[name](a)


def _chain(model, P, prefix, n_layers, h, margin=None):
    for i in range(n_layers):
        W, b = P[f"{prefix}.{i}.W"], P[f"{prefix}.{i}.b"]
        a = h @ W + b
        if margin is not None:
            b += _clear_shift(a, margin)
            a = h @ W + b
        h = _act(model.activation, a)
    return h


def _clear_shift(a, margin):
    """A per-unit bias shift that moves every pre-activation at least ``margin`` from 0."""
    shift = np.zeros(a.shape[1])
    for j in range(a.shape[1]):
        for k in range(0, 4 * a.shape[0] + 4):
            d = (k + 1) // 2 * margin * (1 if k % 2 else -1)
            if np.all(np.abs(a[:, j] + d) >= margin):
                shift[j] = d
                break
    return shift


def reference_forward(model, x, eps, beta=1.0, clear_kinks=None):
    """(loss, rec, kl) computed without npvae's own code.  With ``clear_kinks`` a margin,
    hidden biases are first shifted in place so no pre-activation is near a kink."""
    P = model.params
    L = len(model.hidden)
    margin = clear_kinks if model.activation in KINKED else None
    h = _chain(model, P, "encoder", L, x, margin)
    mu = h @ P["encoder.mu.W"] + P["encoder.mu.b"]
    lv = h @ P["encoder.logvar.W"] + P["encoder.logvar.b"]
    z = mu + np.exp(0.5 * lv) * eps
    h = _chain(model, P, "decoder", L, z, margin)
    out = h @ P["decoder.out.W"] + P["decoder.out.b"]
    lik = model.likelihood_name
    if lik == "bernoulli":
        rec = np.sum(np.logaddexp(0, out) - x * out, axis=1)
    elif lik == "continuous_bernoulli":
        lam = 1 / (1 + np.exp(-out))
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(np.abs(out) < 1e-3, 2.0 + out**2 / 6,
                         2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
        rec = -np.sum(x * np.log(lam) + (1 - x) * np.log1p(-lam) + np.log(c), axis=1)
    else:
        sigma = model.likelihood.sigma
        if sigma == "learned":
            s = P["likelihood.logvar"]
        elif sigma == "per_example":
            s = h @ P["decoder.out_logvar.W"] + P["decoder.out_logvar.b"]
        else:
            s = np.full_like(out, 2 * np.log(sigma))
        s = np.broadcast_to(s, out.shape)
        rec = np.sum(0.5 * (x - out) ** 2 / np.exp(s) + 0.5 * s + 0.5 * np.log(2 * np.pi), axis=1)
    kl = -0.5 * np.sum(1 + lv - mu**2 - np.exp(lv), axis=1)
    return np.mean(rec + beta * kl), rec, kl


def check_pip_install(command):
    """A documented ``pip install [options] .[extras]``, checked instead of run: the project
    is installed already (editable, from this checkout), and installing it again would take
    minutes, need the network and change the environment under the running tests.  Checks
    that the command installs this project ("." is the checkout the docs are read from) with
    extras the project declares, and that every requirement of those extras is installed at a
    version it allows, with its Python modules importable.  Returns what was checked; raises
    AssertionError naming what is wrong."""
    from packaging.requirements import Requirement

    words = shlex.split(command, comments=True)
    assert words[:2] == ["pip", "install"], f"{command!r} is not a pip install"
    targets = [w for w in words[2:] if not w.startswith("-")]
    assert targets, f"{command!r}: installs nothing"
    declared = set(metadata.metadata("npvae").get_all("Provides-Extra") or ())
    requirements = [Requirement(r) for r in metadata.requires("npvae") or ()]
    checked = []
    for target in targets:
        m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
        assert m, f"{command!r}: {target!r} is not this project ('.' or '.[extras]')"
        for extra in filter(None, (m.group(1) or "").split(",")):
            assert extra in declared, f"{command!r}: the project has no extra {extra!r} ({sorted(declared)})"
            for req in requirements:
                if req.marker is None or not req.marker.evaluate({"extra": extra}):
                    continue
                try:
                    version = metadata.version(req.name)
                except metadata.PackageNotFoundError:
                    raise AssertionError(f"{command!r}: {req.name} (extra {extra!r}) is not installed") from None
                assert req.specifier.contains(version, prereleases=True), \
                    f"{command!r}: {req.name} {version} is installed, the extra {extra!r} asks for {req}"
                for module in (metadata.distribution(req.name).read_text("top_level.txt") or "").split():
                    if module.isidentifier():
                        assert importlib.util.find_spec(module) is not None, \
                            f"{command!r}: {req.name}'s module {module} cannot be imported"
                checked.append(f"{req.name} {version}")
    return (f"not run (the project is installed already); checked instead: npvae installed, and "
            f"{', '.join(checked) or 'no extras'}")


# A kernel against its NumPy reference: norm-wise relative agreement per output array.
TOL = {np.float64: 1e-12, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]


def rel_err(a, b):
    """max|a − b| / max|b|; when every element of b is zero or below 1e6 × the smallest
    normal number of its dtype (subnormals, which one side may flush to zero), the
    absolute difference instead."""
    floor = float(np.finfo(np.asarray(b).dtype if np.asarray(b).dtype.kind == "f" else np.float64).tiny) * 1e6
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return float(np.max(np.abs(a - b), initial=0.0)) / (scale if scale > floor else 1.0)


def agree(dtype, *pairs):
    for got, want in pairs:
        assert np.asarray(got).dtype == np.asarray(want).dtype == dtype or np.ndim(got) == 0
        assert rel_err(got, want) <= TOL[dtype], (rel_err(got, want), TOL[dtype])


def agree_sum(dtype, got, want, terms):
    """Per-example sums (nll, KL) are compared relative to the sum of their terms' magnitudes,
    Σ_j |term_ij|: the natural scale of a sum whose terms may cancel (a float32 reference
    cannot be more accurate than that)."""
    scale = float(np.max(np.sum([np.abs(np.asarray(t, np.float64)) for t in terms], axis=0).sum(axis=-1)))
    err = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))
    assert err <= TOL[dtype] * max(scale, 1e-300), (err, scale, TOL[dtype])


def agree_elementwise(dtype, got, want, terms):
    """|got − want| ≤ TOL · Σ_t |term_t| element by element: for values that are sums of
    terms which may cancel (then no relative error to the tiny result is meaningful)."""
    assert np.asarray(got).dtype == np.asarray(want).dtype == dtype
    scale = np.sum([np.abs(np.asarray(t, np.float64)) for t in terms], axis=0)
    err = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    tiny = float(np.finfo(dtype).tiny) * 1e6
    assert np.all(err <= TOL[dtype] * np.maximum(scale, tiny)), float(np.max(err / np.maximum(scale, tiny)))


