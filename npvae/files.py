"""Reading files that have not been checked yet: regular files only, formats told by their
first bytes (not their names), sizes checked against what headers declare before anything is
allocated, ``.npz`` members read one at a time, and never a pickle.

Every reading function raises :class:`FileFormatError` (a ValueError) with the path and the
problem.

Writing: :func:`atomic_write` and its kinds (``.npz``, ``.npy``, text) write a temporary file
in the same folder, flush it to disk and rename it over the target, so a crash mid-write
leaves the previous file as it was.  (They are also :mod:`npvae.checkpoint`'s names.)
"""
from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import numpy as np

MAX_ARRAY_BYTES = 8 << 30   # one array read from a file: 8 GiB
MAX_MAPPED_BYTES = 1 << 44  # one array memory-mapped (nothing allocated): 16 TiB
MAX_MEMBERS = 10_000        # arrays in one .npz
MAX_HEADER_BYTES = 1 << 16  # an .npy header (NumPy writes under 100 bytes; it allows 2**32)
MAGIC = {b"PK\x03\x04": "zip", b"PK\x05\x06": "zip", b"\x93NUMPY": "npy", b"\x1f\x8b": "gzip"}


class FileFormatError(ValueError):
    """A file is missing, not a regular file, of another format, or inconsistent."""


# ----------------------------------------------------------------------------------------
# Writing, atomically
# ----------------------------------------------------------------------------------------
def atomic_write(path, write) -> Path:
    """Create ``path`` by ``write(f)`` on a temporary file in the same folder, flushed to disk
    and renamed over the target: a crash, a signal or a full disk mid-write leaves the
    previous file as it was (and no temporary file behind, where the process survives)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:  # say which file could not be written
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def atomic_savez(path, arrays: dict) -> Path:
    """Write ``arrays`` to ``path`` (.npz, uncompressed), atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_save_npy(path, array) -> Path:
    """Write one array to ``path`` (.npy), atomically."""
    return atomic_write(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))


def atomic_write_text(path, text: str) -> Path:
    """Write UTF-8 text to ``path``, atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def regular_file(path, what: str = "file") -> Path:
    """``path`` after checking that it exists and is a regular file (a FIFO, a device or a
    folder would hang or mislead a reader)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileFormatError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise FileFormatError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise FileFormatError(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise FileFormatError(f"{what} {path} is not a regular file (a pipe, socket or device)")
    return path


def sniff(path) -> str:
    """The format told by the first bytes: "zip" (.npz), "npy", "gzip", "empty" or "other"."""
    with open(path, "rb") as f:
        head = f.read(6)
    if not head:
        return "empty"
    for magic, kind in MAGIC.items():
        if head.startswith(magic):
            return kind
    return "other"


def describe(kind: str) -> str:
    return {"zip": "a zip archive (.npz)", "npy": "a NumPy .npy array", "gzip": "a gzip file",
            "empty": "empty", "other": "not a NumPy file (text, or another format)"}[kind]


def read_npy(f, name, *, available: int | None = None, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """One array from an open ``.npy`` stream, its header checked first: a pickled (object)
    dtype is refused, and the data size the header declares must fit ``max_bytes`` and, when
    ``available`` (the bytes in the stream) is known, match it exactly."""
    shape, fortran, dtype, count, nbytes = _npy_header(f, name, available, max_bytes)
    raw = f.read(nbytes)
    if len(raw) != nbytes:
        raise FileFormatError(f"{name} is truncated: {len(raw)} of {nbytes} bytes of data")
    arr = np.frombuffer(raw, dtype=dtype, count=count)
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    return arr.copy() if not arr.flags.writeable else arr


def map_npy(path, *, what: str = "file", max_bytes: int = MAX_MAPPED_BYTES) -> np.ndarray:
    """The array of an ``.npy`` file, memory-mapped read-only: nothing is read until it is
    indexed, so a process reads only the rows it touches (an MPI rank, its share).  The
    header is checked as :func:`read_npy` checks it, and the data size it declares must equal
    the file's exactly (a truncated file would fault when a missing page is touched)."""
    path = regular_file(path, what)
    kind = sniff(path)
    if kind != "npy":
        raise FileFormatError(f"{what} {path} is {describe(kind)}, not an .npy array")
    with open(path, "rb") as f:
        shape, fortran, dtype, count, nbytes = _npy_header(f, str(path), os.fstat(f.fileno()).st_size, max_bytes)
        offset = f.tell()
    if count == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order="F" if fortran else "C")


def _npy_header(f, name, available, max_bytes):
    """(shape, fortran order, dtype, element count, data bytes) from an open ``.npy`` stream,
    left at the first byte of the data; every check of :func:`read_npy`."""
    # The preamble is read here, so that a header length is checked before it is read (NumPy
    # would first ask the file for that many bytes, up to 4 GiB)
    pre = f.read(8)
    if len(pre) < 8 or pre[:6] != b"\x93NUMPY":
        raise FileFormatError(f"{name}: not a valid .npy array (no NumPy magic)")
    version = (pre[6], pre[7])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise FileFormatError(f"{name}: not a valid .npy array (unknown version {version})")
    size_field = f.read(2 if version == (1, 0) else 4)
    header_len = int.from_bytes(size_field, "little")
    if len(size_field) < (2 if version == (1, 0) else 4) or header_len > MAX_HEADER_BYTES:
        raise FileFormatError(f"{name}: not a valid .npy array (header length {header_len})")
    header = f.read(header_len)
    if len(header) < header_len:
        raise FileFormatError(f"{name} is truncated inside its .npy header")
    try:
        buf = io.BytesIO(pre + size_field + header)
        np.lib.format.read_magic(buf)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = reader(buf, max_header_size=MAX_HEADER_BYTES)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise FileFormatError(f"{name}: not a valid .npy array ({exc})") from None
    if dtype.hasobject:
        raise FileFormatError(f"{name} holds pickled objects (Python objects), which npvae never loads")
    if dtype.itemsize == 0 or dtype.fields is not None or dtype.subdtype is not None:
        raise FileFormatError(f"{name}: dtype {dtype} is not a plain number type")
    if any(int(d) < 0 for d in shape):
        raise FileFormatError(f"{name}: negative dimension in shape {shape}")
    count = 1
    for d in shape:
        count *= int(d)
    nbytes = count * dtype.itemsize
    if nbytes > max_bytes or count > max_bytes:
        raise FileFormatError(f"{name}: its header declares shape {shape} of {dtype} "
                              f"({nbytes:.3g} bytes), more than npvae reads ({max_bytes:.3g})")
    if available is not None:
        header = f.tell()
        if available - header != nbytes:
            raise FileFormatError(f"{name}: its header declares {nbytes} bytes of data (shape "
                                  f"{shape}, {dtype}) but the file holds {available - header}")
    return shape, fortran, dtype, count, nbytes


def load_npy(path, *, max_bytes: int = MAX_ARRAY_BYTES, what: str = "file") -> np.ndarray:
    """The array in an ``.npy`` file, checked as :func:`read_npy` does."""
    path = regular_file(path, what)
    kind = sniff(path)
    if kind != "npy":
        raise FileFormatError(f"{what} {path} is {describe(kind)}, not an .npy array")
    with open(path, "rb") as f:
        return read_npy(f, str(path), available=os.fstat(f.fileno()).st_size, max_bytes=max_bytes)


class NpzReader:
    """The arrays of an ``.npz`` file, read one at a time and only when asked for.

    ``names`` lists them (without the ``.npy`` suffix); ``reader[name]`` reads one, after
    checking the size its zip entry declares.  A compressed member is inflated only up to the
    size its own .npy header declares (zip-bomb safe)."""

    def __init__(self, path, *, what: str = "file", max_bytes: int = MAX_ARRAY_BYTES):
        self.path = regular_file(path, what)
        self.max_bytes = max_bytes
        kind = sniff(self.path)
        if kind != "zip":
            raise FileFormatError(f"{what} {self.path} is {describe(kind)}, not an .npz archive")
        try:
            self._zip = zipfile.ZipFile(self.path)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
            raise FileFormatError(f"{what} {self.path} is corrupt or truncated (not a readable zip "
                                  f"archive: {exc})") from None
        if len(infos) > MAX_MEMBERS:
            self.close()
            raise FileFormatError(f"{what} {self.path} holds {len(infos)} members, more than {MAX_MEMBERS}")
        self._infos = {i.filename[:-4]: i for i in infos if i.filename.endswith(".npy")}
        self.names = list(self._infos)

    def __contains__(self, name):
        return name in self._infos

    def stored_only(self) -> bool:
        """True when no member is compressed (each then holds at most the file's bytes)."""
        return all(i.compress_type == zipfile.ZIP_STORED for i in self._infos.values())

    def __getitem__(self, name) -> np.ndarray:
        return self.read(name)

    def read(self, name, *, max_bytes: int | None = None) -> np.ndarray:
        """One member, at most ``max_bytes`` of data (default: the reader's limit)."""
        info = self._infos.get(name)
        if info is None:
            raise KeyError(name)
        limit = self.max_bytes if max_bytes is None else max_bytes
        label = f"{self.path} [{name}]"
        if info.file_size > limit + MAX_HEADER_BYTES:
            raise FileFormatError(f"{label}: declares {info.file_size:.3g} bytes, more than npvae "
                                  f"reads for it ({limit:.3g})")
        try:
            with self._zip.open(info) as f:
                return read_npy(f, label, available=info.file_size, max_bytes=limit)
        except FileFormatError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError,
                RuntimeError) as exc:  # RuntimeError: a member flagged as encrypted
            raise FileFormatError(f"{label} is corrupt or truncated: {exc}") from None

    def close(self):
        z = getattr(self, "_zip", None)
        if z is not None:
            z.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
