"""The classic VAE on Fashion-MNIST, as in PyTorch's VAE example, trained by npvae.

Model 784-400-20, ReLU, Bernoulli likelihood, dynamic binarisation; Adam at lr 1e-3,
batch 128, 10 epochs.  The test set is binarised once with seed 777; after every epoch the
test ELBO (β = 1, nats per image) is printed.

Run:  python examples/fashion_mnist.py [--epochs 10] [--data DIR] [--out runs/fashion_mnist]
Needs Fashion-MNIST: apt-get install -y dataset-fashion-mnist (or --data / NPVAE_DATA).
"""
import argparse
import json
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
    ap.add_argument("--out", default="runs/fashion_mnist", help="run directory")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    x_train = npvae.data.load_fashion_mnist("train", args.data)
    x_test = test_set(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = npvae.VAE(784, 20, hidden=(400,), activation="relu", likelihood="bernoulli",
                      seed=args.seed)
    elbos = []

    def report(record, m):
        elbos.append(test_elbo(m, x_test))
        record["test_elbo"] = elbos[-1]
        print(f"epoch {record['epoch']:2d}  train loss {record['loss']:8.3f}  "
              f"test ELBO {elbos[-1]:8.3f} nats  ({record['time']:.1f} s)", flush=True)

    history = npvae.fit(model, x_train, optimizer=npvae.Adam(lr=1e-3), epochs=args.epochs,
                        batch_size=128, binarize="dynamic", seed=args.seed,
                        checkpoint_dir=out / "checkpoints", callbacks=[report],
                        progress=not args.quiet)
    model.save(out / "model.npz")
    history.to_csv(out / "history.csv")
    history.to_json(out / "history.json")
    (out / "result.json").write_text(json.dumps({"test_elbo": elbos}, indent=1) + "\n")
    print(f"final test ELBO {elbos[-1]:.3f} nats; run written to {out}")
    return model, elbos


if __name__ == "__main__":
    main()
