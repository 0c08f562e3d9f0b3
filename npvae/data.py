"""Data: binarisation, standardisation, splits, and readers for IDX, .npy, .npz and .csv.

Fashion-MNIST is read offline from Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``), from a folder given as ``path``, or from the folder
named by the environment variable ``NPVAE_DATA``.  Nothing is ever downloaded.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from . import files
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
        """Write mean and std to ``path`` (.npz, atomic); returns the path."""
        return files.atomic_savez(path, self.state())

    @classmethod
    def load(cls, path) -> "Standardizer":
        """Read a saved Standardizer; DataError unless it holds a finite ``mean`` and a
        positive finite ``std`` of one shape (n_features,)."""
        try:
            with files.NpzReader(path, what="standardizer") as f:
                if "mean" not in f or "std" not in f:
                    raise DataError(f"{path} is not a saved Standardizer (no 'mean' and 'std')")
                mean, std = f.read("mean", max_bytes=1 << 30), f.read("std", max_bytes=1 << 30)
        except files.FileFormatError as exc:
            raise DataError(str(exc)) from None
        ok = (mean.ndim == 1 and mean.shape == std.shape and mean.dtype.kind == "f" and std.dtype.kind == "f"
              and np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all())
        if not ok:
            raise DataError(f"{path}: mean and std must be finite 1-D arrays of one shape with std > 0")
        return cls(mean, std)


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


MAX_IDX_BYTES = 1 << 32  # 4 GiB of pixels: far beyond any MNIST-format data set


def _read_at_most(f, n: int, chunk: int = 1 << 24) -> bytes:
    parts, got = [], 0
    while got < n:
        part = f.read(min(chunk, n - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def read_idx(path, *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (the MNIST format), raw or gzipped, told apart by their first bytes.

    The header (magic, element type, dimensions) is read and checked first; the data size it
    declares must be below ``max_bytes`` and is the most that is ever read or inflated, and
    the file must hold exactly that much."""
    try:
        path = files.regular_file(path, "IDX file")
        opener = gzip.open if files.sniff(path) == "gzip" else open
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DataError(f"{path} is not an IDX file: bad magic number {head.hex()}")
            code, ndim = head[2], head[3]
            if code not in _IDX_TYPES:
                raise DataError(f"{path}: unknown IDX element type 0x{code:02x}")
            if ndim == 0:
                raise DataError(f"{path}: IDX file with 0 dimensions")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_IDX_TYPES[code])
            expected = math.prod(shape) * dtype.itemsize
            if expected > max_bytes:
                raise DataError(f"{path}: IDX header declares shape {shape} ({expected:.3g} bytes), "
                                f"more than npvae reads ({max_bytes:.3g})")
            raw = _read_at_most(f, expected)  # chunks: memory follows the data, not the header
            extra = f.read(1)
    except files.FileFormatError as exc:
        raise DataError(str(exc)) from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"IDX file {path} cannot be read: {exc}") from None
    if len(raw) != expected or extra:
        held = f"{len(raw)}" if not extra else f"more than {expected}"
        raise DataError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds "
            f"{held} bytes of data")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


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


MAX_CSV_BYTES = 1 << 30


def load_array(path, *, key=None, dtype=np.float32, mmap=False) -> np.ndarray:
    """A 2-D float array (rows are examples) from .npy, .npz (``key``, or the only array) or
    .csv (numbers only, comma-separated; a first line that is not numeric is taken as a
    header; a UTF-8 byte-order mark is allowed).  A 1-D array is one feature per row.

    The format is told by the file's first bytes, and every size is checked before memory is
    allocated (:mod:`npvae.files`); anything wrong raises :class:`DataError`.

    ``mmap=True`` (an .npy file only): the array memory-mapped read-only, in the file's own
    dtype and not yet read, so that each process reads only the rows it uses (``fit`` under
    MPI: a rank's shards; its values are checked there, each rank its share of the rows)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".csv"):
        raise DataError(f"{path}: unsupported data format {suffix!r} (use .npy, .npz or .csv)")
    if mmap:
        if suffix != ".npy":
            raise DataError(f"{path}: only an .npy file can be memory-mapped (mmap=True)")
        try:
            arr = files.map_npy(path, what="data file")
        except files.FileFormatError as exc:
            raise DataError(str(exc)) from None
        if arr.dtype.kind not in "fiub" or arr.ndim != 2 or arr.size == 0:
            raise DataError(f"{path}: a memory-mapped data file must hold a non-empty 2-D numeric array "
                            f"(rows are examples); it holds {arr.dtype} of shape {arr.shape}")
        return arr
    try:
        files.regular_file(path, "data file")
        if suffix == ".npy":
            arr = files.load_npy(path, what="data file")
        elif suffix == ".npz":
            with files.NpzReader(path, what="data file") as f:
                if key is None:
                    if len(f.names) != 1:
                        raise DataError(f"{path} holds arrays {f.names}: pass key= to choose one")
                    key = f.names[0]
                if key not in f:
                    raise DataError(f"{path} has no array {key!r} (it has {f.names})")
                arr = f[key]
        else:
            arr = _read_csv(path)
    except files.FileFormatError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise DataError(f"{path}: data must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise DataError(f"{path} holds a single number (a 0-d array), not rows of examples")
    if arr.size == 0:
        raise DataError(f"{path} holds no data (shape {arr.shape})")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        arr = arr.reshape(len(arr), -1)
    with np.errstate(over="ignore"):  # values beyond the dtype's range become inf: refused below
        arr = arr.astype(dtype)
    if not np.isfinite(arr).all():
        raise DataError(f"{path} contains NaN or infinite values (or values beyond {np.dtype(dtype).name}'s range)")
    return arr


def _read_csv(path) -> np.ndarray:
    """Line numbers in messages are the file's own (1 = the first line, blank lines counted).
    The file is read line by line into a float64 array that doubles as it fills, so memory is
    about twice the values' own size, not that of Python objects per value."""
    if os.path.getsize(path) > MAX_CSV_BYTES:
        raise DataError(f"{path} is larger than {MAX_CSV_BYTES} bytes: use .npy for data this large")

    def is_number(field):
        try:
            float(field)
        except ValueError:
            return False
        return True

    out, n, width, first = None, 0, None, None
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, raw in enumerate(f, start=1):
                line = raw.strip()
                if not line:
                    continue
                if "\x00" in line:
                    raise DataError(f"{path} contains NUL bytes: a binary file, not comma-separated text")
                fields = line.split(",")
                if first is None and not any(is_number(v) for v in fields):
                    first = 0  # a header names every column: a line with any number in it is data
                    continue
                try:
                    row = [float(v) for v in fields]
                except ValueError:
                    raise DataError(f"{path}: line {lineno} is not comma-separated numbers: {line[:60]!r}") from None
                if width is None:
                    width, first = len(row), lineno
                    out = np.empty((1024, width))
                elif len(row) != width:
                    raise DataError(f"{path}: line {lineno} has {len(row)} columns, the first data line "
                                    f"{first} has {width}")
                if n == len(out):
                    out = np.concatenate([out, np.empty_like(out)])
                out[n] = row
                n += 1
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from None
    if out is None:
        raise DataError(f"{path} has a header line and no data" if first == 0 else f"{path} is empty")
    return out[:n].copy()
