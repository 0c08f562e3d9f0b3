"""The VAE: an MLP encoder to (μ, ln σ²), the reparametrised sample, an MLP decoder and a
likelihood, with the whole loss and its gradient written out by hand.

Per example, with ε ~ N(0, I) and z = μ(x) + exp(v(x)/2) ⊙ ε,

    loss(x) = −ln p(x|z) + β KL(N(μ, diag e^v) || N(0, I))        (correction L2: C = Σ F = −Σ ELBO)

and ``loss_and_grad`` returns the batch mean and its exact gradient for the given ε.  At β = 1
the negative loss is a one-sample estimate of the ELBO (correction L9).
"""
from __future__ import annotations

import numpy as np

from . import distributions, estimators, kernels, likelihoods, ops
from .kernels import ACT_CODES
from .layers import INITIALISERS, MLP, init_dense
from .validation import as_float_array, finite_float, generator, gradient_buffers, positive_int

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_objective(objective, n_samples, beta, free_bits):
    """Validate the training objective: ("elbo", 1) or ("iwae", K)."""
    if objective not in ("elbo", "iwae"):
        raise ValueError(f"objective must be 'elbo' or 'iwae', got {objective!r}")
    n_samples = positive_int(n_samples, "n_samples")
    if objective == "elbo" and n_samples != 1:
        raise ValueError("n_samples > 1 needs objective='iwae' (the ELBO uses one sample)")
    if objective == "iwae" and (beta != 1.0 or free_bits != 0.0):
        raise ValueError("objective='iwae' takes beta=1 and free_bits=0 (it is a bound on ln p(x))")
    return objective, n_samples


MAX_PARAMETERS = 1 << 30  # 4 GiB of float32 weights: larger models are refused, not attempted


def parameter_count(n_inputs: int, n_latent: int, hidden=(), likelihood: str = "bernoulli",
                    sigma=None) -> int:
    """The number of parameters of ``VAE(n_inputs, n_latent, hidden, likelihood=..., sigma=...)``,
    computed without building it: encoder Σ (n_in + 1) n_out, the μ and ln σ² heads, the
    mirrored decoder, the likelihood's output heads and its own parameters."""
    # ints first: a crafted config's "hidden": ["0"] times 5e9 inputs would build a 5 GB string
    n_inputs, n_latent = positive_int(n_inputs, "n_inputs"), positive_int(n_latent, "n_latent")
    if not isinstance(hidden, (tuple, list)):
        raise TypeError(f"hidden must be a tuple or list of layer widths, got {hidden!r:.40}")
    hidden = tuple(positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))
    lik = likelihoods.make(likelihood, sigma=sigma)
    enc = (n_inputs, *hidden)
    dec = (n_latent, *tuple(hidden)[::-1])
    count = sum((a + 1) * b for a, b in zip(enc[:-1], enc[1:])) + 2 * (enc[-1] + 1) * n_latent
    count += sum((a + 1) * b for a, b in zip(dec[:-1], dec[1:]))
    count += len(lik.heads) * (dec[-1] + 1) * n_inputs
    count += sum(v.size for v in lik.init_params(1, np.float32).values()) * n_inputs
    return int(count)


class VAE:
    """A Gaussian VAE with hand-derived gradients.

    Parameters
    ----------
    n_inputs, n_latent : data dimension D and latent dimension J.
    hidden : widths of the encoder's hidden layers; the decoder mirrors them.  ``()`` gives
        a linear encoder and a linear decoder.
    activation : one of :data:`npvae.activations.ACTIVATIONS`.
    likelihood : ``"bernoulli"`` (logits), ``"gaussian"`` or ``"continuous_bernoulli"``.
    dtype : float32 (training default) or float64 (verification).
    seed : seeds the initial weights, and the stream used when ``loss_and_grad`` gets
        neither ``eps`` nor ``rng``.
    sigma : Gaussian only: a fixed σ (default 1.0), ``"learned"`` or ``"per_example"``.
    init : weight initialisation: ``"fan_in"`` (the default: U(±1/√n_in), PyTorch's
        nn.Linear default), ``"glorot"``, ``"he"``, or ``"auto"`` (He for rectifiers,
        Glorot otherwise).  Biases start at 0.  The default was chosen by measurement: on
        the Fashion-MNIST benchmark (784-400-20, 10 epochs) the test ELBO was −243.25
        (auto/He), −242.61 (glorot) and −242.47 (fan_in) nats, means over seeds.

    ``params`` is an ordered dict from dotted names to the live arrays; every layer computes
    ``x @ W + b`` with W of shape (n_in, n_out).
    """

    def __init__(self, n_inputs, n_latent, hidden=(400,), activation="relu",
                 likelihood="bernoulli", dtype=np.float32, seed=0, *, sigma=None, init="fan_in"):
        self.n_inputs = positive_int(n_inputs, "n_inputs")
        self.n_latent = positive_int(n_latent, "n_latent")
        if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
            hidden = (hidden,)
        if not isinstance(hidden, (tuple, list, np.ndarray)):  # not a dict, set, str, generator
            raise TypeError(f"hidden must be a tuple or list of layer widths, got {hidden!r}")
        self.hidden = tuple(positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if self.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.seed = positive_int(seed, "seed", allow_zero=True)
        self.activation = activation
        self.likelihood = likelihoods.make(likelihood, sigma=sigma)
        self.likelihood_name = likelihood
        count = parameter_count(self.n_inputs, self.n_latent, self.hidden, likelihood, sigma)
        if count > MAX_PARAMETERS:
            raise ValueError(f"a VAE of widths {(self.n_inputs, *self.hidden, self.n_latent)} has "
                             f"{count:.3g} parameters, more than npvae builds ({MAX_PARAMETERS:.3g}; "
                             f"{count * self.dtype.itemsize / 2**30:.1f} GiB of weights alone)")
        if init != "auto" and init not in INITIALISERS:
            raise ValueError(f"init must be 'auto' or one of {sorted(INITIALISERS)}, got {init!r}")
        self.init = init

        widths = (self.n_inputs,) + self.hidden
        self.encoder = MLP("encoder", [(str(i), widths[i], widths[i + 1], activation)
                                       for i in range(len(self.hidden))])
        back = (self.n_latent,) + self.hidden[::-1]
        self.decoder = MLP("decoder", [(str(i), back[i], back[i + 1], activation)
                                       for i in range(len(self.hidden))])
        self._h_enc = widths[-1]
        self._h_dec = back[-1]

        rng = np.random.default_rng(self.seed)
        head_init = "glorot" if init == "auto" else init
        params = dict(self.encoder.init(rng, self.dtype, init))
        for head in ("mu", "logvar"):
            W, b = init_dense(rng, self._h_enc, self.n_latent, init=head_init, dtype=self.dtype)
            params[f"encoder.{head}.W"], params[f"encoder.{head}.b"] = W, b
        params.update(self.decoder.init(rng, self.dtype, init))
        for head in self.likelihood.heads:
            W, b = init_dense(rng, self._h_dec, self.n_inputs, init=head_init, dtype=self.dtype)
            params[f"decoder.{head}.W"], params[f"decoder.{head}.b"] = W, b
        for k, v in self.likelihood.init_params(self.n_inputs, self.dtype).items():
            params[f"likelihood.{k}"] = v
        # Every parameter is a view into one flat buffer, so an optimizer can update them
        # all in one fused pass; the dict still holds the live arrays.
        self._flat = np.empty(sum(p.size for p in params.values()), dtype=self.dtype)
        self.params: dict[str, np.ndarray] = {}
        offset = 0
        for name, p in params.items():
            view = self._flat[offset:offset + p.size].reshape(p.shape)
            view[...] = p
            self.params[name] = view
            offset += p.size
        self._ws: dict[int, dict] = {}
        self._layer_plan = None
        self._lik_names = [k for k in self.params if k.startswith("likelihood.")]
        # The stream for loss_and_grad calls that pass neither eps nor rng.
        self._rng = np.random.default_rng([self.seed, 1])

    # ------------------------------------------------------------------------------------
    # Configuration
    # ------------------------------------------------------------------------------------
    def config(self) -> dict:
        """The constructor arguments that rebuild this model (without its weights)."""
        cfg = {"n_inputs": self.n_inputs, "n_latent": self.n_latent, "hidden": list(self.hidden),
               "activation": self.activation, "likelihood": self.likelihood_name,
               "dtype": self.dtype.name, "seed": self.seed, "init": self.init}
        cfg.update(self.likelihood.options())
        return cfg

    def save(self, path):
        """Save configuration and parameters to ``path`` (.npz, atomic, no pickle).
        ``npvae.load(path)`` rebuilds the model."""
        from .checkpoint import save_model
        return save_model(self, path)

    @property
    def n_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.likelihood.options().items())
        return (f"VAE(n_inputs={self.n_inputs}, n_latent={self.n_latent}, hidden={self.hidden}, "
                f"activation={self.activation!r}, likelihood={self.likelihood_name!r}{extra}, "
                f"dtype={self.dtype.name}, params={self.n_params})")

    # ------------------------------------------------------------------------------------
    # Checks
    # ------------------------------------------------------------------------------------
    def _check_x(self, x, name="x", targets=True):
        x = as_float_array(x, name, dtype=self.dtype, shape=(None, self.n_inputs))
        if targets:
            self.likelihood.check_targets(x, name)
        return x

    def _check_z(self, z, name="z"):
        return as_float_array(z, name, dtype=self.dtype, shape=(None, self.n_latent))

    def _noise(self, shape, eps, rng):
        if eps is not None:
            return as_float_array(eps, "eps", dtype=self.dtype, shape=shape)
        rng = self._rng if rng is None else generator(rng)
        return rng.standard_normal(shape, dtype=self.dtype)

    # ------------------------------------------------------------------------------------
    # The engine: forward and backward over reusable workspaces, through npvae.kernels
    # ------------------------------------------------------------------------------------
    def _layers(self):
        """The dense layers in forward order, each (weight key, bias key, activation code),
        as (encoder, decoder, encoder heads μ and v, decoder output heads); the keys are
        built once, not every step."""
        if self._layer_plan is None:
            act = ACT_CODES[self.activation]

            def layer(prefix, a):
                return f"{prefix}.W", f"{prefix}.b", a

            enc = [layer(f"encoder.{i}", act) for i in range(len(self.hidden))]
            dec = [layer(f"decoder.{i}", act) for i in range(len(self.hidden))]
            enc_heads = [layer("encoder.mu", 0), layer("encoder.logvar", 0)]
            dec_heads = [layer(f"decoder.{head}", 0) for head in self.likelihood.heads]
            self._layer_plan = (enc, dec, enc_heads, dec_heads)
        return self._layer_plan

    def _workspace(self, B):
        """Buffers for a batch of B, kept for reuse (a few batch sizes at most)."""
        ws = self._ws.get(B)
        if ws is None:
            if len(self._ws) >= 4:
                self._ws.pop(next(iter(self._ws)))
            dt, J, D = self.dtype, self.n_latent, self.n_inputs
            e = lambda *shape: np.empty(shape, dtype=dt)
            ws = {"enc": [e(B, h) for h in self.hidden], "dec": [e(B, h) for h in self.hidden[::-1]],
                  "enc_d": [e(B, h) for h in self.hidden], "dec_d": [e(B, h) for h in self.hidden[::-1]],
                  "mu": e(B, J), "lv": e(B, J), "z": e(B, J), "std": e(B, J), "kl": e(B),
                  "dmu": e(B, J), "dlv": e(B, J), "dz": e(B, J), "nll": e(B),
                  "w": np.full(B, 1.0 / B, dtype=dt), "wkl": e(B), "mask": np.ones(J, dtype=dt),
                  "out": [e(B, D) for _ in self.likelihood.heads], "tmp_h": e(B, self._h_dec),
                  "tmp_e": e(B, self._h_enc)}
            self._ws[B] = ws
        return ws

    @staticmethod
    def _dense_chain(P, layers, h, bufs):
        """h through dense layers (weight key, bias key, activation code), each output into
        its buffer."""
        for (wk, bk, act), buf in zip(layers, bufs):
            np.matmul(h, P[wk], out=buf)
            kernels.bias_act_(buf, P[bk], act)
            h = buf
        return h

    @staticmethod
    def _dense_heads(P, heads, h, bufs):
        """Identity-activation heads, each from the same input h."""
        for (wk, bk, _), buf in zip(heads, bufs):
            np.matmul(h, P[wk], out=buf)
            kernels.bias_act_(buf, P[bk], 0)

    def _encode_into(self, P, x, ws):
        """μ and v = ln σ² of q(z|x) into ws["mu"], ws["lv"]; hidden outputs into ws["enc"]."""
        enc, _, enc_heads, _ = self._layers()
        h = self._dense_chain(P, enc, x, ws["enc"])
        self._dense_heads(P, enc_heads, h, (ws["mu"], ws["lv"]))
        return h

    def _decode_into(self, P, z, ws):
        """The likelihood's output heads for z into ws["out"]; hidden outputs into ws["dec"]."""
        _, dec, _, dec_heads = self._layers()
        h = self._dense_chain(P, dec, z, ws["dec"])
        self._dense_heads(P, dec_heads, h, ws["out"])
        return h

    def _backward_chain(self, P, G, layers, inputs, outputs, grads_in, d, need_dx_first):
        """Back through dense layers (in reverse): d holds dL/dy of the last layer's output;
        each step turns it into da in place, fills G[W], G[b], and returns dL/d(input)."""
        for k in range(len(layers) - 1, -1, -1):
            wk, bk, act = layers[k]
            kernels.act_backward_bias_grad_(d, outputs[k], act, G[bk])
            np.matmul(inputs[k].T, d, out=G[wk])
            if k > 0 or need_dx_first:
                nxt = grads_in[k]
                np.matmul(d, P[wk].T, out=nxt)
                d = nxt
        return d

    def _new_grads(self):
        from .optim import flat_like  # fresh, flat: the optimizer's fused path applies
        return flat_like(self.params)

    def loss_and_grad(self, x, *, eps=None, rng=None, beta=1.0, free_bits=0.0, out=None,
                      objective="elbo", n_samples=1, trace=False):
        """The batch mean of −ln p(x|z) + β KL, and its gradient for every parameter.

        Shapes: x (B, D); eps (B, J) standard normal noise.  With ``eps`` given the call is
        deterministic; otherwise ε is drawn from ``rng`` (a Generator) or, failing that, from
        the model's own seeded stream.  ``out``: a dict of arrays shaped like ``params`` to
        write the gradients into (the trainer reuses one); by default fresh arrays.

        Backward (per example, weight 1/B):
            d out = ∂(−ln p)/∂out               (likelihood)
            dz    = decoder backward of d out
            dμ    = dz + β μ,   dv = ½ σ ε ⊙ dz + β ½ (e^v − 1)     (corrections L6, L7)

        Free bits (Kingma et al. 2016): with ``free_bits`` = λ > 0 the KL term becomes
        Σ_j max(λ, KL̄_j), KL̄_j the batch-mean KL of latent dimension j, so a dimension whose
        KL is below λ nats feels no pull towards the prior:
            ∂/∂KL_ij = [KL̄_j > λ] / B   (zero gradient below the floor).

        ``objective="iwae"`` with ``n_samples=K`` minimises instead the negative
        importance-weighted bound −ln (1/K) Σ_k w_k (Burda et al. 2015); eps then has shape
        (K, B, J); see :mod:`npvae.estimators` for its gradient.  It takes β = 1 and no
        free bits.

        Returns (loss, grads, parts): loss a scalar of the model dtype; grads with exactly the
        keys of ``params``; parts with the batch means ``reconstruction``, ``kl`` (the true
        KL, whatever the floor) and ``elbo`` (= −reconstruction − kl, the β = 1 bound), and
        ``beta``; with free bits also ``kl_objective``, the floored KL term; with IWAE
        ``iwae`` (the bound) and ``ess``.

        ``trace=True`` returns a fourth element, a :class:`npvae.trace.Trace` of every named
        forward value and backward gradient of the step, computed through the readable
        building blocks (ELBO objective, no free bits); see :mod:`npvae.trace`.
        """
        x = self._check_x(x)
        beta = finite_float(beta, "beta", min_value=0.0)
        free_bits = finite_float(free_bits, "free_bits", min_value=0.0)
        objective, n_samples = check_objective(objective, n_samples, beta, free_bits)
        if out is not None:
            out = gradient_buffers(out, self.params)
        if objective == "iwae":
            shape = (n_samples, x.shape[0], self.n_latent)
            return estimators.iwae_loss_and_grad(self, x, self._noise(shape, eps, rng), out)
        eps = self._noise((x.shape[0], self.n_latent), eps, rng)
        if trace:
            if free_bits or out is not None:
                raise ValueError("trace=True supports the plain ELBO step (no free_bits, no out=)")
            from .trace import traced_loss_and_grad
            return traced_loss_and_grad(self, x, eps, beta)
        return self._loss_and_grad(x, eps, beta, free_bits, out)

    def _loss_and_grad(self, x, eps, beta, free_bits, out):
        """loss_and_grad on arguments already checked (the trainer checks its data once)."""
        B = x.shape[0]
        P = self.params
        G = self._new_grads() if out is None else out
        dt = self.dtype.type
        ws = self._workspace(B)

        # forward
        h_enc = self._encode_into(P, x, ws)
        mu, lv, z, std, kl = ws["mu"], ws["lv"], ws["z"], ws["std"], ws["kl"]
        kernels.reparam_kl_(mu, lv, eps, z, std, kl)
        h_dec = self._decode_into(P, z, ws)
        outs = ws["out"]
        lik_params = self._likelihood_params(P)
        lik_grads = {k: G[f"likelihood.{k}"] for k in lik_params}
        # the likelihood kernel writes d(loss)/d(out) over the outputs, weight 1/B each
        self.likelihood.loss_and_grad_(x, outs, lik_params, ws["w"], ws["nll"], lik_grads)
        rec_mean = dt(ws["nll"].sum() / dt(B))
        kl_mean = dt(kl.sum() / dt(B))
        mask = ws["mask"]
        if free_bits > 0:
            kl_dim_mean = ops.kl_normal_per_dim(mu, lv).mean(axis=0, dtype=self.dtype)
            kl_term = np.maximum(kl_dim_mean, dt(free_bits)).sum(dtype=self.dtype)
            mask = (kl_dim_mean > dt(free_bits)).astype(self.dtype)
        else:
            kl_term = kl_mean
        loss = dt(rec_mean + dt(beta) * kl_term)

        # backward: output heads and decoder, reparametrisation + KL, encoder
        dz = self._decoder_backward(P, G, ws, z, h_dec)
        wkl = ws["wkl"]
        wkl.fill(dt(beta / B))
        kernels.reparam_kl_backward_(dz, eps, std, mu, lv, wkl, mask, ws["dmu"], ws["dlv"])
        self._encoder_backward(P, G, ws, x, h_enc)

        parts = {"reconstruction": dt(rec_mean), "kl": dt(kl_mean),
                 "elbo": dt(-(rec_mean + kl_mean)), "beta": beta}
        if free_bits > 0:
            parts["kl_objective"] = dt(kl_term)
        return loss, G, parts

    def _decoder_backward(self, P, G, ws, z, h_dec):
        """From the likelihood's gradient (written over ws["out"]) back to dL/dz (ws["dz"])."""
        _, dec, _, dec_heads = self._layers()
        dh = None
        for (wk, bk, _), d in zip(dec_heads, ws["out"]):
            kernels.act_backward_bias_grad_(d, d, 0, G[bk])
            np.matmul(h_dec.T, d, out=G[wk])
            if dh is None:
                dh = ws["dec_d"][-1] if self.hidden else ws["dz"]
                np.matmul(d, P[wk].T, out=dh)
            else:
                np.matmul(d, P[wk].T, out=ws["tmp_h"])
                dh += ws["tmp_h"]
        return self._backward_chain(P, G, dec, [z] + ws["dec"][:-1], ws["dec"],
                                    [ws["dz"]] + ws["dec_d"][:-1], dh, True)

    def _encoder_backward(self, P, G, ws, x, h_enc):
        """From dL/dμ, dL/dv (ws["dmu"], ws["dlv"]) back through the encoder."""
        enc, _, enc_heads, _ = self._layers()
        for (wk, bk, _), d in zip(enc_heads, (ws["dmu"], ws["dlv"])):
            kernels.act_backward_bias_grad_(d, d, 0, G[bk])
            np.matmul(h_enc.T, d, out=G[wk])
        if self.hidden:
            dh = ws["enc_d"][-1]
            np.matmul(ws["dmu"], P["encoder.mu.W"].T, out=dh)
            np.matmul(ws["dlv"], P["encoder.logvar.W"].T, out=ws["tmp_e"])
            dh += ws["tmp_e"]
            self._backward_chain(P, G, enc, [x] + ws["enc"][:-1], ws["enc"],
                                 [None] + ws["enc_d"][:-1], dh, False)

    def _likelihood_params(self, P):
        return {k[len("likelihood."):]: P[k] for k in self._lik_names}

    def _outputs(self, z):
        """Fresh copies of the decoder's output heads for z (B, J)."""
        ws = self._workspace(z.shape[0])
        self._decode_into(self.params, z, ws)
        return tuple(o.copy() for o in ws["out"])

    # ------------------------------------------------------------------------------------
    # Inference and generation
    # ------------------------------------------------------------------------------------
    def encode(self, x):
        """The posterior parameters (μ, ln σ²) of q(z|x), each (B, J)."""
        x = self._check_x(x, targets=False)
        ws = self._workspace(x.shape[0])
        self._encode_into(self.params, x, ws)
        return ws["mu"].copy(), ws["lv"].copy()

    def decode(self, z, *, rng=None):
        """The mean of p(x|z), (B, D): probabilities for Bernoulli, E[x] for the others; with
        ``rng``, a draw x ~ p(x|z) instead."""
        z = self._check_z(z)
        outs, lp = self._outputs(z), self._likelihood_params(self.params)
        if rng is None:
            return self.likelihood.mean(outs, lp)
        return self.likelihood.sample(outs, lp, generator(rng))

    def sample(self, n, rng, *, mean=True):
        """n draws z ~ N(0, I) decoded: the mean of p(x|z), or with ``mean=False`` x ~ p(x|z)."""
        n = positive_int(n, "n")
        rng = generator(rng)
        z = rng.standard_normal((n, self.n_latent), dtype=self.dtype)
        outs = self._outputs(z)
        lp = self._likelihood_params(self.params)
        return self.likelihood.mean(outs, lp) if mean else self.likelihood.sample(outs, lp, rng)

    def reconstruct(self, x, rng=None):
        """decode(z) for z = μ(x) (``rng=None``) or z ~ q(z|x) drawn with ``rng``."""
        mu, lv = self.encode(x)
        if rng is None:
            return self.decode(mu)
        z, _ = distributions.reparametrize(mu, lv, generator(rng).standard_normal(mu.shape, dtype=self.dtype))
        return self.decode(z)

    def log_likelihood(self, x, *, n_samples=5000, rng=None, batch_size=None, return_ess=False,
                       progress=False):
        """Importance-sampled ln p(x) per example in nats, shape (B,) (correction L8):
        ln (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x), by log-sum-exp, with memory
        bounded however large K is.  ``return_ess=True`` adds the effective sample size.
        ``rng=None`` uses default_rng(0).  See :func:`npvae.estimators.log_likelihood`."""
        return estimators.log_likelihood(self, x, n_samples=n_samples, rng=rng,
                                         batch_size=batch_size, return_ess=return_ess,
                                         progress=progress)

    def elbo(self, x, *, rng=None, n_samples=1, batch_size=1024):
        """The per-example ELBO at β = 1 in nats, shape (B,):
        (1/S) Σ_s ln p(x|z_s) − KL(q(z|x) || N(0, I)), z_s ~ q(z|x), KL analytic.

        ``rng=None`` uses a fresh ``default_rng(0)``, so repeated evaluations agree.
        Memory is bounded by ``batch_size`` examples at a time.
        """
        x = self._check_x(x)
        n_samples = positive_int(n_samples, "n_samples")
        batch_size = positive_int(batch_size, "batch_size")
        rng = np.random.default_rng(0) if rng is None else generator(rng)
        P, lp = self.params, self._likelihood_params(self.params)
        out = np.empty(x.shape[0], dtype=self.dtype)
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            ws = self._workspace(xb.shape[0])
            self._encode_into(P, xb, ws)
            mu, lv = ws["mu"], ws["lv"]
            rec = np.zeros(xb.shape[0], dtype=self.dtype)
            for _ in range(n_samples):
                eps = rng.standard_normal(mu.shape, dtype=self.dtype)
                z, _ = distributions.reparametrize(mu, lv, eps)
                self._decode_into(P, z, ws)
                rec += self.likelihood.nll(xb, ws["out"], lp)[0]
            kl, _ = distributions.kl_standard_normal(mu, lv)
            out[start:start + batch_size] = -(rec / self.dtype.type(n_samples)) - kl
        return out
