"""The MPI primitives of :mod:`npvae.parallel` (which documents them; use them from there).

They live in a module of their own because the model's evaluation (``VAE.elbo``,
:mod:`npvae.estimators`) uses them, so they must sit below :class:`npvae.VAE`, while
:func:`npvae.parallel.train_many` rebuilds models from their configuration
(:mod:`npvae.checkpoint`) and so sits above it.  mpi4py, an optional extra, is imported only
where a communicator is in use.
"""
from __future__ import annotations

import builtins
import os
import sys
import time
import traceback
import warnings
import zlib

import numpy as np

# environment variables that MPI launchers set in the processes they start: MPICH's and
# Intel MPI's Hydra (PMI_*), Open MPI (OMPI_*), PMIx (srun --mpi=pmix), MVAPICH
_LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (or ``NPVAE_MPI=1``)."""
    choice = os.environ.get("NPVAE_MPI", "").strip()
    if choice in ("0", "1"):
        return choice == "1"
    return any(v in os.environ for v in _LAUNCHER_VARIABLES)


def world(comm="auto"):
    """The communicator to split work over, or None for one process.

    ``comm``: an mpi4py communicator (used as given, None when it has one process), None (no
    MPI), or "auto": ``MPI.COMM_WORLD`` when an MPI launcher started this process with more
    than one process and mpi4py is installed.  Under a launcher without mpi4py, "auto" is
    None, with a warning that the processes will each run alone."""
    if comm is None:
        return None
    if isinstance(comm, str):
        if comm != "auto":
            raise ValueError(f"comm must be an mpi4py communicator, None or 'auto', got {comm!r}")
        if not launched_by_mpi():
            return None
        try:
            from mpi4py import MPI  # the optional mpi extra: imported only under an MPI launcher
        except ImportError:
            size = os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or "1"
            if size != "1":
                warnings.warn("started by an MPI launcher, but mpi4py is not installed: each process "
                              "runs alone (pip install 'npvae[mpi]')", RuntimeWarning, stacklevel=3)
            return None
        comm = MPI.COMM_WORLD
    for attr in ("Get_size", "Get_rank", "Allreduce", "Bcast"):
        if not hasattr(comm, attr):
            raise TypeError(f"comm must be an mpi4py communicator, got {type(comm).__name__}")
    if comm.Get_size() == 1:
        return None
    abort_on_uncaught_error()
    return comm


def rank_of(comm) -> int:
    """This process's rank in ``comm`` (0 without MPI)."""
    return 0 if comm is None else comm.Get_rank()


def size_of(comm) -> int:
    """The number of processes in ``comm`` (1 without MPI)."""
    return 1 if comm is None else comm.Get_size()


def shard(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [r0, r1) of n that rank ``rank`` of ``size`` takes: contiguous, sizes differing by
    at most one, in rank order."""
    return rank * n // size, (rank + 1) * n // size


def my_blocks(n_blocks: int, comm) -> range:
    """The blocks (of the n_blocks an evaluation is cut into) that this rank computes."""
    r0, r1 = shard(n_blocks, rank_of(comm), size_of(comm))
    return range(r0, r1)


def block_streams(rng: np.random.Generator, n_blocks: int) -> list:
    """One independent generator per block, spawned from ``rng`` (its SeedSequence): the
    same on every rank, so block j's noise does not depend on which rank computes it."""
    return rng.spawn(n_blocks)


def sum_in_place(comm, array: np.ndarray) -> np.ndarray:
    """``array`` ← the sum of every rank's ``array``: one in-place Allreduce on the buffer
    (no pickling).  ``array`` must be C-contiguous; a no-op without MPI."""
    if comm is not None:
        from mpi4py import MPI  # the optional mpi extra: a communicator means it is installed
        if not array.flags.c_contiguous:
            raise ValueError("sum_in_place needs a C-contiguous array")
        comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)
    return array


def broadcast_in_place(comm, array: np.ndarray, root: int = 0) -> np.ndarray:
    """``array`` ← rank ``root``'s ``array``, by buffer (no pickling); a no-op without MPI."""
    if comm is not None:
        comm.Bcast(array, root=root)
    return array


def broadcast_params(comm, params: dict, root: int = 0) -> None:
    """Every parameter array ← rank ``root``'s, in place."""
    if comm is None:
        return
    for value in params.values():
        buf = value if value.flags.c_contiguous else np.ascontiguousarray(value)
        comm.Bcast(buf, root=root)
        if buf is not value:
            value[...] = buf


def same_everywhere(comm, arrays) -> bool:
    """True when ``arrays`` hold the same bytes on every rank (a CRC of them, compared)."""
    if comm is None:
        return True
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8), crc)
    mine = np.array([crc, -crc], dtype=np.int64)
    from mpi4py import MPI  # the optional mpi extra: a communicator means it is installed
    comm.Allreduce(MPI.IN_PLACE, mine, op=MPI.MAX)  # max of crc and of −crc: min = max ⇔ all equal
    return int(mine[0]) == crc and int(-mine[1]) == crc


def agree(comm, fn, root: int = 0, kinds=()):
    """Run ``fn()`` on rank ``root`` and give its result to every rank; an exception it raises
    is raised on every rank (same type where it is a built-in one or one of ``kinds``, same
    message), so that no rank waits for another that failed.  Without MPI: ``fn()``."""
    if comm is None:
        return fn()
    outcome, mine = None, None
    if comm.Get_rank() == root:
        try:
            outcome = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - handed to every rank below
            outcome, mine = ("error", type(exc).__name__, str(exc)), exc
    outcome = comm.bcast(outcome, root=root)  # small Python values only (a result, a message)
    if outcome[0] == "ok":
        return outcome[1]
    if mine is not None:
        raise mine  # the root's own exception, with its type and traceback
    raise _rebuilt(outcome[1], outcome[2], kinds)


def all_succeed(comm, fn):
    """Run ``fn()`` on every rank; when it raises on any rank, every rank raises (the first
    failing rank's error type and message, named), so that no rank is left waiting."""
    if comm is None:
        return fn()
    error, mine = None, None
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - shared below
        error, mine = (type(exc).__name__, str(exc)), exc
        result = None
    errors = comm.allgather(error)  # small Python values only
    for r, err in enumerate(errors):
        if err is not None:
            if mine is not None:
                raise mine  # this rank's own exception, with its traceback
            raise _rebuilt(err[0], f"rank {r}: {err[1]}")
    return result


def any_rank(comm, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (one small Allreduce)."""
    if comm is None:
        return bool(flag)
    from mpi4py import MPI  # the optional mpi extra: a communicator means it is installed
    buf = np.array([1 if flag else 0], dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.MAX)
    return bool(buf[0])


def _rebuilt(type_name: str, message: str, kinds=()) -> Exception:
    kind = next((k for k in kinds if k.__name__ == type_name), None) or getattr(builtins, type_name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        return kind(message)
    return RuntimeError(f"{type_name}: {message}")


_HOOKED = False


def abort_on_uncaught_error() -> None:
    """Make an exception that no code catches, on any rank, stop the whole MPI job (with
    that rank's message) instead of leaving the other ranks waiting in a collective call.
    Installed by :func:`world` when it returns a communicator; idempotent."""
    global _HOOKED
    if _HOOKED:
        return
    _HOOKED = True
    previous = sys.excepthook

    def hook(kind, value, tb):
        from mpi4py import MPI  # the optional mpi extra: installed only by world() with a communicator
        comm = MPI.COMM_WORLD
        if comm.Get_size() > 1 and not issubclass(kind, (SystemExit, KeyboardInterrupt)):
            # The reason goes in the first line, written whole and flushed before the
            # traceback: another rank failing at the same moment may Abort this one
            # part-way through its traceback.
            reason = "".join(traceback.format_exception_only(kind, value)).strip()
            sys.stderr.write(f"npvae: rank {comm.Get_rank()} of {comm.Get_size()} failed "
                             f"({reason}); stopping every rank\n")
            sys.stderr.flush()
            sys.stderr.write("".join(traceback.format_exception(kind, value, tb)))
            sys.stderr.flush()
            comm.Abort(1)
        previous(kind, value, tb)
    sys.excepthook = hook


ABORT_GRACE = 0.5
"""Seconds a rank waits, its reason written, before it stops the job."""


def abort(comm, code: int = 1) -> None:
    """Stop every rank of ``comm`` (after this rank has said why)."""
    sys.stderr.flush()
    sys.stdout.flush()
    if comm is not None and comm.Get_size() > 1:
        # the launcher forwards each rank's output on its own time, and an Abort kills the ranks
        # with what is not forwarded yet: on a loaded machine the reason was seen lost whole
        time.sleep(ABORT_GRACE)
        comm.Abort(code)


def groups(n_groups: int, comm="auto"):
    """Split the processes into ``n_groups`` groups of consecutive ranks (``MPI.Comm.Split``),
    for many models at once: an ensemble or a hyperparameter grid, one model per group.

    Returns (group, group_comm): this process's group index and a communicator of its group
    (None when the group is one process), to pass to ``fit(..., comm=group_comm)``.  Without
    MPI: (0, None), and the caller runs every group's work itself (see :func:`my_share`)."""
    n_groups = int(n_groups)
    if n_groups < 1:
        raise ValueError(f"n_groups must be at least 1, got {n_groups}")
    comm = world(comm)
    if comm is None:
        return 0, None
    size = comm.Get_size()
    if n_groups > size:
        raise ValueError(f"{n_groups} groups need at least {n_groups} processes; there are {size}")
    group = comm.Get_rank() * n_groups // size
    sub = comm.Split(color=group, key=comm.Get_rank())
    return group, (sub if sub.Get_size() > 1 else None)


def my_share(items, comm="auto", n_groups=None):
    """The items this process's group runs: item i goes to group i mod G (G = ``n_groups``, by
    default the number of processes).  Without MPI: every item."""
    items = list(items)
    comm = world(comm)
    if comm is None:
        return items
    G = comm.Get_size() if n_groups is None else int(n_groups)
    group = comm.Get_rank() * G // comm.Get_size()
    return [it for i, it in enumerate(items) if i % G == group]



__all__ = ["world", "launched_by_mpi", "rank_of", "size_of", "shard", "sum_in_place", "broadcast_in_place",
           "broadcast_params", "same_everywhere", "agree", "all_succeed", "any_rank", "abort_on_uncaught_error", "abort",
           "groups", "my_share", "my_blocks", "block_streams", "ABORT_GRACE"]
