"""Signal-to-noise ratio of the three estimators of the importance-weighted bound's gradient
as K grows (Rainforth et al. 2018: the plain IWAE encoder gradient's SNR falls like 1/√K),
and the bias of STL at K > 1, on Fashion-MNIST.

A 784-200-20 VAE (ReLU, Bernoulli) is trained for --epochs epochs of plain IWAE (K = 5) on
dynamically binarised Fashion-MNIST, then, on one fixed minibatch of --batch images, M = --draws
gradients are drawn per estimator and K (fresh ε each; the estimators share them). For
each parameter, SNR = |mean| / standard deviation over the draws; the table gives the median
over the encoder's parameters and over the decoder's. STL's bias: ‖mean(STL) − mean(IWAE)‖ /
‖mean(IWAE)‖ on the encoder, with its Monte Carlo standard error (paired draws).

Run:  python benchmarks/estimator_snr.py [--draws 400] [--json out.json]
"""
import argparse
import json

import numpy as np

import npvae


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ks", default="1,5,20,50")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    x = npvae.data.load_fashion_mnist("train")[:20000]
    model = npvae.VAE(784, 20, hidden=(200,), dtype=np.float64, seed=0)
    npvae.fit(model, x.astype(np.float64), epochs=args.epochs, batch_size=128, binarize="dynamic",
              objective="iwae", n_samples=5, progress=False)
    xb = npvae.data.binarize(x[:args.batch].astype(np.float64), np.random.default_rng(1))
    enc = [k for k in model.params if k.startswith("encoder.")]
    dec = [k for k in model.params if not k.startswith("encoder.")]
    rows = []
    for K in map(int, args.ks.split(",")):
        draws = np.random.default_rng(K).standard_normal((args.draws, K, args.batch, model.n_latent))
        grads = {}
        for objective in ("iwae", "iwae-dreg", "iwae-stl"):
            g_enc, g_dec = [], []
            for eps in draws:
                _, G, _ = model.loss_and_grad(xb, eps=eps, objective=objective, n_samples=K)
                g_enc.append(np.concatenate([G[k].ravel() for k in enc]))
                g_dec.append(np.concatenate([G[k].ravel() for k in dec]))
            grads[objective] = (np.array(g_enc), np.array(g_dec))
        row = {"K": K}
        for objective, (ge, gd) in grads.items():
            for part, g in (("encoder", ge), ("decoder", gd)):
                sd = g.std(axis=0, ddof=1)
                keep = sd > 0
                row[f"{objective} {part} SNR"] = float(np.median(np.abs(g.mean(axis=0)[keep]) / sd[keep]))
        d = grads["iwae-stl"][0] - grads["iwae"][0]
        ref = np.linalg.norm(grads["iwae"][0].mean(axis=0))
        row["stl bias"] = float(np.linalg.norm(d.mean(axis=0)) / ref)
        # the noise floor of that estimate: the norm a zero-mean d would show, √(Σ var/M)
        row["stl bias noise floor"] = float(np.sqrt((d.var(axis=0, ddof=1) / len(d)).sum()) / ref)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| K | encoder SNR: IWAE | DReG | STL | decoder SNR: IWAE | DReG | STL | STL bias (encoder) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['K']} | {r['iwae encoder SNR']:.3f} | {r['iwae-dreg encoder SNR']:.3f} | "
              f"{r['iwae-stl encoder SNR']:.3f} | {r['iwae decoder SNR']:.3f} | {r['iwae-dreg decoder SNR']:.3f} | "
              f"{r['iwae-stl decoder SNR']:.3f} | {r['stl bias']:.3f} (noise floor {r['stl bias noise floor']:.3f}) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
