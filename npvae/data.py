"""Data: binarisation, standardisation, splits, and readers for IDX, .npy, .npz and .csv.

Fashion-MNIST is read offline from Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``), from a folder given as ``path``, or from the folder
named by the environment variable ``NPVAE_DATA``.  Nothing is ever downloaded.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .validation import as_float_array, generator, positive_int

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = (
    "Fashion-MNIST is not installed. On Debian or Ubuntu (as root): "
    "apt-get update && apt-get install -y dataset-fashion-mnist "
    "(files land in /usr/share/datasets/fashion-mnist). Or point NPVAE_DATA, or path=, at a "
    "folder holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]."
)


class DataError(ValueError):
    """A data file is missing, malformed or of the wrong shape."""


# ----------------------------------------------------------------------------------------
# Transformations
# ----------------------------------------------------------------------------------------
def binarize(x, rng) -> np.ndarray:
    """A Bernoulli draw per pixel, x_b ~ Bernoulli(x), x in [0, 1]; keeps the dtype.

    Static binarisation calls this once with a fixed seed; dynamic binarisation calls it
    on every minibatch with the trainer's generator."""
    x = np.asarray(x)
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError("binarize needs values in [0, 1]")
    return (generator(rng).random(x.shape) < x).astype(x.dtype)


class Standardizer:
    """x ↦ (x − mean) / std per feature, with the statistics stored for later use.

    Features with std below ``min_std`` are only centred (their std is taken as 1)."""

    def __init__(self, mean=None, std=None):
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)

    def fit(self, x, min_std: float = 1e-8) -> "Standardizer":
        x = as_float_array(x, "x", dtype=np.float64, ndim=2)
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.std = np.where(std < min_std, 1.0, std)
        return self

    def _check(self, x):
        if self.mean is None:
            raise ValueError("Standardizer is not fitted: call fit(x) first")
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.mean.size:
            raise ValueError(f"x must have shape (any, {self.mean.size}), got {x.shape}")
        return x

    def transform(self, x):
        x = self._check(x)
        return ((x - self.mean) / self.std).astype(x.dtype if x.dtype.kind == "f" else np.float64)

    def inverse(self, x):
        x = self._check(x)
        return (x * self.std + self.mean).astype(x.dtype if x.dtype.kind == "f" else np.float64)

    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def save(self, path):
        from .checkpoint import atomic_savez
        atomic_savez(path, self.state())

    @classmethod
    def load(cls, path) -> "Standardizer":
        with np.load(path, allow_pickle=False) as f:
            return cls(f["mean"], f["std"])


def train_val_split(x, val_fraction: float = 0.1, seed: int = 0, *arrays):
    """A seeded random split: returns (x_train, x_val) (and the same split of ``arrays``)."""
    n = len(x)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if n_val < 1 or n_val >= n:
        raise ValueError(f"cannot split {n} examples with val_fraction={val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    val, train = perm[:n_val], perm[n_val:]
    out = [x[train], x[val]]
    for a in arrays:
        out += [a[train], a[val]]
    return tuple(out)


# ----------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), raw or gzipped, checking its header and size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"IDX file {path} cannot be read: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file: bad magic number {raw[:4].hex()}")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise DataError(f"{path}: unknown IDX element type 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{path}: IDX file with 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_fashion_mnist(path=None) -> Path:
    candidates = []
    if path is not None:
        candidates.append(Path(path))
    if os.environ.get("NPVAE_DATA"):
        env = Path(os.environ["NPVAE_DATA"])
        candidates += [env / "fashion-mnist", env]
    candidates.append(DEBIAN_FASHION_MNIST)
    for c in candidates:
        for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"):
            if (c / name).exists():
                return c
    where = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{INSTALL_HINT} (looked in: {where})")


def load_fashion_mnist(split: str = "train", path=None, *, dtype=np.float32, labels=False):
    """Fashion-MNIST images as (n, 784) arrays scaled to [0, 1] (and the labels).

    ``split`` is "train" (60000) or "test" (10000).  Searches ``path``, then ``$NPVAE_DATA``
    (and its ``fashion-mnist`` subfolder), then ``/usr/share/datasets/fashion-mnist``."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = _find_fashion_mnist(path)

    def pick(stem):
        for name in (f"{stem}.gz", stem):
            if (folder / name).exists():
                return folder / name
        raise DataError(f"{folder} has no {stem}[.gz]")

    images = read_idx(pick(f"{prefix}-images-idx3-ubyte"))
    if images.ndim != 3:
        raise DataError(f"{folder}: images must have 3 dimensions, got shape {images.shape}")
    x = (images.reshape(len(images), -1).astype(dtype) / dtype(255)).astype(dtype)
    if not labels:
        return x
    y = read_idx(pick(f"{prefix}-labels-idx1-ubyte"))
    if y.shape != (len(x),):
        raise DataError(f"{folder}: {len(y)} labels for {len(x)} images")
    return x, y.astype(np.int64)


def load_array(path, *, key=None, dtype=np.float32) -> np.ndarray:
    """A 2-D float array from .npy, .npz (``key``, or the only array) or .csv (numbers only;
    a header line is skipped when it is not numeric)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                if key is None:
                    if len(f.files) != 1:
                        raise DataError(f"{path} holds arrays {f.files}: pass key= to choose one")
                    key = f.files[0]
                if key not in f.files:
                    raise DataError(f"{path} has no array {key!r} (it has {f.files})")
                arr = f[key]
        elif suffix == ".csv":
            arr = _read_csv(path)
        else:
            raise DataError(f"{path}: unsupported data format {suffix!r} (use .npy, .npz or .csv)")
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} cannot be read: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise DataError(f"{path}: data must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        arr = arr.reshape(len(arr), -1)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path} holds no data (shape {arr.shape})")
    with np.errstate(over="ignore"):  # values beyond the dtype's range become inf: refused below
        arr = arr.astype(dtype)
    if not np.isfinite(arr).all():
        raise DataError(f"{path} contains NaN or infinite values (or values beyond {np.dtype(dtype).name}'s range)")
    return arr


def _read_csv(path) -> np.ndarray:
    with open(path, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    if not lines:
        raise DataError(f"{path} is empty")

    def numeric(line):
        try:
            [float(v) for v in line.split(",")]
            return True
        except ValueError:
            return False

    if not numeric(lines[0]):
        lines = lines[1:]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append([float(v) for v in line.split(",")])
        except ValueError:
            raise DataError(f"{path}: line {i + 1} is not numeric: {line[:60]!r}") from None
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise DataError(f"{path}: rows have different numbers of columns {sorted(widths)}")
    return np.array(rows, dtype=np.float64)
