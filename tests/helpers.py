"""An independent plain-NumPy forward of the VAE, used as an oracle and to keep the
finite-difference tests away from the kinks of relu / leaky_relu / elu."""
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
