"""The classic VAE on Fashion-MNIST, as in PyTorch's VAE example, trained by npvae.

Model 784-400-20, ReLU, Bernoulli likelihood, dynamic binarisation; Adam at lr 1e-3,
batch 128, 10 epochs.  The test set is binarised once with seed 777; after every epoch the
test ELBO (β = 1, nats per image) is printed.

With ``--log-likelihood K`` (default 5000) it also reports the test ln p(x), importance
sampled with K samples per image, and with ``--iwae k`` it trains a second model on the
importance-weighted bound with k samples and reports it alongside.

Run:  python examples/fashion_mnist.py [--epochs 10] [--data DIR] [--out runs/examples/fashion_mnist]
          [--log-likelihood 5000] [--test-images 10000] [--iwae 5]
      (not run in tests: 10 epochs on 60,000 images and ln p(x) with K = 5000 over 10,000
      take minutes; the tests run it for 1 epoch on a few hundred made-up images)
Needs Fashion-MNIST: apt-get install -y dataset-fashion-mnist (or --data / NPVAE_DATA).
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

import npvae

TEST_BINARIZE_SEED = 777


def test_set(path=None):
    x_test = npvae.data.load_fashion_mnist("test", path)
    return npvae.data.binarize(x_test, np.random.default_rng(TEST_BINARIZE_SEED))


def test_elbo(model, x_test_bin):
    """Mean test ELBO in nats per image: 1 sample of z per image, fixed seed."""
    return float(model.elbo(x_test_bin, rng=np.random.default_rng(0)).mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--out", default="runs/examples/fashion_mnist", help="run directory")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--log-likelihood", type=int, default=5000, metavar="K",
                    help="importance samples for the final test ln p(x) (0: skip)")
    ap.add_argument("--test-images", type=int, default=10000,
                    help="how many test images the ln p(x) estimate uses (the first N)")
    ap.add_argument("--iwae", type=int, default=0, metavar="k",
                    help="also train a model on the IWAE bound with k samples")
    args = ap.parse_args(argv)

    x_train = npvae.data.load_fashion_mnist("train", args.data)
    x_test = test_set(args.data)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    runs = [("elbo", 1)] + ([("iwae", args.iwae)] if args.iwae else [])
    results = {}
    for objective, k in runs:
        name = "vae" if objective == "elbo" else f"iwae{k}"
        model = npvae.VAE(784, 20, hidden=(400,), activation="relu", likelihood="bernoulli",
                          seed=args.seed)
        elbos = []

        def report(record, m):
            elbos.append(test_elbo(m, x_test))
            record["test_elbo"] = elbos[-1]
            print(f"[{name}] epoch {record['epoch']:2d}  train loss {record['loss']:8.3f}  "
                  f"test ELBO {elbos[-1]:8.3f} nats  ({record['time']:.1f} s)", flush=True)

        history = npvae.fit(model, x_train, optimizer=npvae.Adam(lr=1e-3), epochs=args.epochs,
                            batch_size=128, binarize="dynamic", seed=args.seed,
                            checkpoint_dir=out / name / "checkpoints", callbacks=[report],
                            progress=not args.quiet, objective=objective, n_samples=k)
        model.save(out / name / "model.npz")
        history.to_csv(out / name / "history.csv")
        history.to_json(out / name / "history.json")
        res = {"objective": objective, "n_samples": k, "test_elbo": elbos}
        if args.log_likelihood:
            n = min(args.test_images, len(x_test))
            t = time.perf_counter()
            ll, ess = model.log_likelihood(x_test[:n], n_samples=args.log_likelihood,
                                           rng=np.random.default_rng(1), return_ess=True)
            res.update(test_log_px=float(ll.mean()), test_images=n, K=args.log_likelihood,
                       mean_ess=float(ess.mean()),
                       test_elbo_same_images=test_elbo(model, x_test[:n]),
                       log_px_seconds=time.perf_counter() - t)
            print(f"[{name}] test ln p(x) (K={args.log_likelihood}, {n} images) "
                  f"{res['test_log_px']:.3f} nats; test ELBO on the same images "
                  f"{res['test_elbo_same_images']:.3f}; mean ESS {res['mean_ess']:.1f}", flush=True)
        results[name] = res
        print(f"[{name}] final test ELBO {elbos[-1]:.3f} nats; run written to {out / name}")
    (out / "result.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
