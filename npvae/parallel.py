"""Data parallelism over MPI (mpi4py): one gradient computation split over processes.

Under ``mpiexec -n N`` (or ``srun``), :func:`npvae.fit` splits each global batch of B rows
into N contiguous shards, rank r taking rows ``r·B//N : (r+1)·B//N``.  Every rank draws the
whole batch's noise (the binarisation uniforms, then ε) from the run's one generator, as a
single process would, and uses its shard's rows of it: each example's noise does not
depend on N.  Every rank computes the gradient of its shard's share of the batch loss,

    g = ∂/∂θ (1/B) Σ_{i∈batch} ℓ_i = Σ_r (n_r/B) · ∂/∂θ (1/n_r) Σ_{i∈shard r} ℓ_i,

and one in-place ``Allreduce`` (MPI_SUM, the buffer interface) on the flat gradient buffer
adds the shards.  Every rank then takes the same optimizer step on the same numbers, so the
parameters stay identical on every rank (checked at every checkpoint).  The result equals
one process's to rounding: only the order of the sum over the batch changes.

Evaluation (:func:`npvae.estimators.log_likelihood`, :meth:`npvae.VAE.elbo`) splits the
examples into the blocks one process uses, each block with its own random stream (spawned
from the caller's generator), and ranks take whole blocks: the same numbers for any N.

Without mpi4py, outside an MPI launcher, or with one process, :func:`world` is None and
npvae behaves exactly as it does without MPI.  ``NPVAE_MPI=0`` turns MPI off;
``NPVAE_MPI=1`` uses it even where no launcher is recognised.
"""
from __future__ import annotations

import os
import sys
import time
import traceback

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
            from mpi4py import MPI
        except ImportError:
            size = os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or "1"
            if size != "1":
                import warnings
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
        from mpi4py import MPI
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
    import zlib
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8), crc)
    mine = np.array([crc, -crc], dtype=np.int64)
    from mpi4py import MPI
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
    from mpi4py import MPI
    buf = np.array([1 if flag else 0], dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.MAX)
    return bool(buf[0])


def _rebuilt(type_name: str, message: str, kinds=()) -> Exception:
    import builtins
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
        from mpi4py import MPI
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


def train_many(items, train, *, n_groups=None, comm="auto", layers=()):
    """``[train(item, group_comm) for item in items]``, the items shared out over groups of
    ranks, and every trained model given to every rank: an ensemble or a hyperparameter grid,
    one model per rank or per group of ranks.

    The ranks are split into G = ``n_groups`` groups (default: one per rank, at most one per
    item) with ``MPI.Comm.Split``; group g trains items g, g + G, …, calling
    ``train(item, group_comm)``, which must return an :class:`npvae.VAE` and pass
    ``comm=group_comm`` to ``fit`` (None when the group is one rank).  Each model is then
    broadcast from its group's first rank: its configuration as JSON text, its parameters
    by buffer.  ``layers``: the classes of your own layers that the models use.  Without MPI:
    the plain loop, ``train(item, None)`` for each item."""
    items = list(items)
    comm = world(comm)
    if comm is None:
        return [train(item, None) for item in items]
    import json

    from .checkpoint import model_from_arrays
    size = comm.Get_size()
    G = min(size if n_groups is None else int(n_groups), max(1, len(items)))
    group, sub = groups(G, comm)
    mine = {i: train(item, sub) for i, item in enumerate(items) if i % G == group}
    models = []
    for i in range(len(items)):
        root = -(-(i % G) * size // G)  # the first rank of item i's group
        model = mine.get(i) if comm.Get_rank() == root else None
        layout = None
        if model is not None:
            layout = (json.dumps(model.config()),
                      [(k, v.shape, v.dtype.str) for k, v in model.params.items()])
        layout = comm.bcast(layout, root=root)  # the configuration and the parameters' shapes: small
        if model is None:
            arrays = {"config": np.array(layout[0])}
            arrays.update({f"param/{k}": np.zeros(shape, dtype) for k, shape, dtype in layout[1]})
            model = model_from_arrays(arrays, f"model {i} of rank {root}", layers)
        broadcast_params(comm, model.params, root=root)
        models.append(model)
    return models


__all__ = ["train_many", "world", "launched_by_mpi", "rank_of", "size_of", "shard", "sum_in_place", "broadcast_in_place",
           "broadcast_params", "same_everywhere", "agree", "all_succeed", "any_rank", "abort_on_uncaught_error", "abort",
           "groups", "my_share", "my_blocks", "block_streams"]
