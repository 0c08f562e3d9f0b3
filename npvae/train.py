"""The trainer: seeded, resumable bit for bit, and never loses the last good checkpoint.

``fit`` owns the only random generator of a run, ``np.random.default_rng(seed)``: it draws
each epoch's permutation, every ε and every dynamic binarisation, in that order.  A training
checkpoint stores that generator's state together with the parameters, the optimizer state,
the position in the epoch and the history, so that a run stopped after any step and resumed
in a new process gives the same parameters, bit for bit, as a run that never stopped.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path

import filelock
import numpy as np

from . import checkpoint as ckpt
from . import data as data_mod
from . import diagnostics as diag_mod
from . import compiled as compiled_mod
from . import engine, parallel, threads
from .kernels import arrays
from .kernels.sums import sum_squares
from .model import IMPORTANCE_WEIGHTED, check_objective, importance_weighted
from .optim import Adam, Optimizer, flat_like
from .schedules import ConstantBeta, as_beta_schedule
from .validation import as_float_array, finite_float, positive_int

CHECKPOINT_GLOB = "ckpt-*.npz"


class DivergenceError(FloatingPointError):
    """Training produced a NaN or inf; names the epoch, the step and the culprit."""

    def __init__(self, epoch: int, step: int, step_in_epoch: int, what: str, hint: str = ""):
        self.epoch, self.step, self.step_in_epoch, self.what = epoch, step, step_in_epoch, what
        super().__init__(
            f"training diverged in epoch {epoch}, at step {step} (step {step_in_epoch} of the "
            f"epoch): {what}. The last good checkpoint, if any, is untouched.{hint}")


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def format_seconds(t: float) -> str:
    """A duration as people read it: 31 ms, 4.2 s, 3.5 min."""
    return f"{t * 1000:.0f} ms" if t < 1 else f"{t:.1f} s" if t < 120 else f"{t / 60:.1f} min"


class History:
    """One record (a dict) per epoch; ``history["loss"]`` is that column as a list."""

    COLUMNS = ("epoch", "loss", "reconstruction", "kl", "beta", "lr", "grad_norm", "val_elbo",
               "time")

    def __init__(self, records=None):
        self.records: list[dict] = [dict(r) for r in (records or [])]
        self.interrupted = False
        self.stopped_early = False
        self.best_epoch: int | None = None

    def append(self, record: dict) -> None:
        self.records.append(dict(record))

    def __len__(self):
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, key):
        if isinstance(key, str):
            return [r.get(key) for r in self.records]
        return self.records[key]

    @property
    def columns(self) -> list[str]:
        cols = list(self.COLUMNS)
        for r in self.records:
            cols += [k for k in r if k not in cols]
        return cols

    def to_json(self, path=None) -> str:
        """The records as strict JSON (written atomically to ``path`` when given).  A NaN or
        infinite value is kept visible as the string "NaN", "Infinity" or "-Infinity"."""
        text = json.dumps(_json_safe({"records": self.records, "interrupted": self.interrupted,
                                      "stopped_early": self.stopped_early,
                                      "best_epoch": self.best_epoch}),
                          indent=1, allow_nan=False)
        if path is not None:
            ckpt.atomic_write_text(path, text + "\n")
        return text

    def to_csv(self, path=None) -> str:
        """One row per epoch; nested values (the diagnostics) are left to ``to_json``."""
        cols = [c for c in self.columns
                if not any(isinstance(r.get(c), (dict, list)) for r in self.records)]
        lines = [",".join(cols)]
        for r in self.records:
            lines.append(",".join("" if r.get(c) is None else repr(r[c]) for c in cols))
        text = "\n".join(lines) + "\n"
        if path is not None:
            ckpt.atomic_write_text(path, text)
        return text

    def __repr__(self):
        last = self.records[-1] if self.records else {}
        return f"History(epochs={len(self)}, last={last})"


# ----------------------------------------------------------------------------------------
# Checkpoints of a training run
# ----------------------------------------------------------------------------------------
def _checkpoint_path(directory: Path, global_step: int) -> Path:
    return directory / f"ckpt-{global_step:010d}.npz"


def list_checkpoints(directory) -> list[Path]:
    """The training checkpoints in ``directory``, oldest first."""
    return sorted(Path(directory).glob(CHECKPOINT_GLOB))


FINGERPRINT_ROWS = 1 << 14  # rows per block of the data's fingerprint


def _fingerprint(x: np.ndarray, comm=None) -> str:
    """Shape and a CRC of the data (in its training dtype): the CRC of the CRCs of blocks of
    FINGERPRINT_ROWS rows, so that under MPI each rank reads only its share of the blocks, and
    the value is the same for any number of ranks."""
    n = x.shape[0]
    n_blocks = -(-n // FINGERPRINT_ROWS)
    crcs = np.zeros(n_blocks, dtype=np.int64)
    for j in parallel.my_blocks(n_blocks, comm):
        block = x[j * FINGERPRINT_ROWS:(j + 1) * FINGERPRINT_ROWS]
        crcs[j] = zlib.crc32(np.ascontiguousarray(block).view(np.uint8))
    parallel.sum_in_place(comm, crcs)
    return f"{n}x{x.shape[1]}:b{zlib.crc32(crcs.astype('<i8').tobytes()):08x}"


def _legacy_fingerprint(x: np.ndarray) -> str:
    # checkpoints written before 2026-12-01 hold the CRC of the whole array
    return f"{x.shape[0]}x{x.shape[1]}:{zlib.crc32(np.ascontiguousarray(x).view(np.uint8)):08x}"


def _check_mapped_rows(x, model, binarize, rows=FINGERPRINT_ROWS, comm=None) -> None:
    """The checks of in-memory training data, on a memory-mapped array: its dtype and
    shape, then this rank's share of the rows, a block at a time (finite, in [0, 1] for
    binarisation, valid targets of the likelihood)."""
    if x.dtype.kind != "f":
        raise TypeError(f"x_train must be a floating-point array, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != model.n_inputs or x.shape[0] == 0:
        raise ValueError(f"x_train must have shape (any, {model.n_inputs}), got {x.shape}")
    n_blocks = -(-x.shape[0] // rows)
    for j in parallel.my_blocks(n_blocks, comm):
        a, b = j * rows, min(x.shape[0], (j + 1) * rows)
        block = as_float_array(x[a:b], f"x_train rows {a}:{b}", dtype=model.dtype, shape=(None, model.n_inputs))
        if binarize is not None and (block.min() < 0 or block.max() > 1):
            raise ValueError(f"binarize needs x_train in [0, 1] (rows {a}:{b} are not)")
        model.likelihood.check_targets(block, f"x_train rows {a}:{b}")


def _save_training(directory: Path, model, opt_state, run: dict, rng, perm, best_params,
                   keep: int) -> Path:
    arrays = ckpt.model_arrays(model, kind="training")
    for k, v in opt_state.items():
        arrays[f"optim/{k}"] = v
    meta = dict(run)
    meta["rng_state"] = rng.bit_generator.state
    arrays["meta"] = np.array(json.dumps(meta))
    arrays["perm"] = perm
    if best_params is not None:
        for k, v in best_params.items():
            arrays[f"best/{k}"] = v
    path = ckpt.atomic_savez(_checkpoint_path(directory, run["global_step"]), arrays)
    for old in list_checkpoints(directory)[:-keep]:
        if old != path:
            old.unlink(missing_ok=True)
    return path


def load_training_checkpoint(path, layers=()):
    """(model, meta, optimizer-state, perm, best-params) from a training checkpoint;
    ``layers``: the classes of a user's own layers that its model names."""
    arrays = ckpt.read(path)
    if str(arrays["__kind__"]) != "training":
        raise ckpt.CheckpointError(f"{path} is a model checkpoint, not a training checkpoint")
    model = ckpt.model_from_arrays(arrays, path, layers)
    meta = ckpt.json_field(arrays, "meta", path)
    opt_state = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    best = {k[len("best/"):]: v for k, v in arrays.items() if k.startswith("best/")} or None
    if "perm" not in arrays:
        raise ckpt.CheckpointError(f"checkpoint {path} lacks the field 'perm'")
    return model, meta, opt_state, arrays["perm"], best


_META_TYPES = {"epoch": int, "step_in_epoch": int, "global_step": int, "bad_epochs": int,
               "sums": dict, "history": list, "rng_state": dict, "epoch_time": (int, float)}


def check_training_state(path, loaded, n: int, steps_per_epoch: int, opt_state: dict) -> None:
    """Raise CheckpointError unless a training checkpoint's state can continue this run: meta
    of the right types and ranges (no negative epoch, a step inside the epoch, a history per
    epoch), ``perm`` a permutation of the n examples, finite optimizer moments of the
    optimizer's shapes."""
    model, meta, saved_opt, perm, best = loaded
    bad = lambda why: ckpt.CheckpointError(f"checkpoint {path}: {why}")
    if not isinstance(meta, dict):
        raise bad("its meta is not a JSON object")
    for key, kind in _META_TYPES.items():
        v = meta.get(key)
        if not isinstance(v, kind) or isinstance(v, bool):
            raise bad(f"meta field {key!r} is {v!r:.80}, not a {getattr(kind, '__name__', 'number')}")
    epoch, step = meta["epoch"], meta["step_in_epoch"]
    if epoch < 0 or not 0 <= step < steps_per_epoch or meta["bad_epochs"] < 0:
        raise bad(f"epoch {epoch}, step {step} of {steps_per_epoch}: not a position in a run")
    if meta["global_step"] != epoch * steps_per_epoch + step:
        raise bad(f"global step {meta['global_step']} is not epoch {epoch} × {steps_per_epoch} "
                  f"+ step {step}")
    if len(meta["history"]) != epoch or not all(isinstance(r, dict) for r in meta["history"]):
        raise bad(f"its history holds {len(meta['history'])} records for {epoch} epochs")
    if step > 0 and set(meta["sums"]) != {"loss", "reconstruction", "kl", "beta", "grad_norm", "lr"}:
        raise bad(f"its running sums {sorted(meta['sums'])} are not the epoch's")
    for v in list(meta["sums"].values()) + [meta["epoch_time"]]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f"a running sum is {v!r:.40}, not a finite number")
    best_val, best_epoch = meta.get("best_val"), meta.get("best_epoch")
    if best_val is not None and (not isinstance(best_val, (int, float)) or not math.isfinite(best_val)):
        raise bad(f"best_val is {best_val!r:.40}")
    if best_epoch is not None and (not isinstance(best_epoch, int) or not 1 <= best_epoch <= epoch):
        raise bad(f"best_epoch is {best_epoch!r:.40}")
    perm = np.asarray(perm)
    if perm.dtype.kind not in "iu" or perm.shape != (n,) or \
            not np.array_equal(np.sort(perm), np.arange(n)):
        raise bad(f"perm is not a permutation of the {n} training examples")
    if set(saved_opt) != set(opt_state) or any(saved_opt[k].shape != opt_state[k].shape for k in opt_state):
        raise bad("its optimizer state does not fit the optimizer")
    for k, v in saved_opt.items():
        if v.dtype.kind == "f" and not arrays.all_finite(np.ascontiguousarray(v)):
            raise bad(f"optimizer state {k!r} holds NaN or inf")
    for k, v in (best or {}).items():
        if k not in model.params or v.shape != model.params[k].shape or v.dtype != model.dtype \
                or not arrays.all_finite(np.ascontiguousarray(v)):
            raise bad(f"best parameters {k!r} do not fit the model or hold NaN or inf")
    try:
        np.random.default_rng().bit_generator.state = meta["rng_state"]
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise bad(f"its random-generator state cannot be restored ({exc})") from None


def _newest_loadable(directory: Path, check=None, layers=()):
    """The newest checkpoint that loads (and passes ``check``); each one skipped says why."""
    for path in reversed(list_checkpoints(directory)):
        try:
            loaded = load_training_checkpoint(path, layers)
            if check is not None:
                check(path, loaded)
            return path, loaded
        except ckpt.CheckpointError as exc:
            warnings.warn(f"skipping unreadable checkpoint: {exc}", RuntimeWarning, stacklevel=3)
    return None, None


class RunLockedError(RuntimeError):
    """Another process is training into the same checkpoint folder."""


def lock_folder(directory: Path):
    """An exclusive lock on ``.<name>.lock`` beside ``directory`` (filelock), held while one
    process writes into it: a second writer is refused at once (RunLockedError) instead of
    racing the first.  The lock file lives beside the folder, not in it, and is never
    deleted: a lock file unlinked while another process waits on it would let a third one
    lock a new file of the same name.  Returns the held lock; ``release()`` it."""
    path = Path(directory).parent / f".{Path(directory).name}.lock"
    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunLockedError(f"another process is writing into {directory} (it holds {path}); wait for "
                             "it, or use another folder") from None
    return lock


def _remove_stale_temporaries(directory: Path) -> None:
    """Delete the temporary files of checkpoint writers that were killed mid-write, and only
    those: a temporary file is named for its writer's process id, and a live writer's stays."""
    for tmp in directory.glob(".ckpt-*.npz.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and _process_alive(pid):
            continue
        tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


# ----------------------------------------------------------------------------------------
# Ctrl-C or SIGTERM: finish the current step, then save and return
# ----------------------------------------------------------------------------------------
class InterruptFlag:
    """Within ``with InterruptFlag() as f``, a first SIGINT or SIGTERM only sets ``f.set``
    (the work in hand finishes, then the caller stops cleanly); a second raises
    KeyboardInterrupt at once. The previous handlers come back on exit; a flag entered
    inside another that is already set starts set. Outside the main thread, where Python
    cannot install handlers, it does nothing."""

    def __init__(self, notice=None):
        self.set = False
        self._old = None
        self.notice = notice  # printed to stderr on the first signal

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame):
                if self.set:  # a second Ctrl-C stops at once
                    raise KeyboardInterrupt
                self.set = True
                if self.notice:
                    print(self.notice, file=sys.stderr, flush=True)
            handler.interrupt_flag = self
            # nested in another flag (the command line's) that a signal has already set:
            # this one starts set, so the work it guards stops at its first safe point
            outer = getattr(signal.getsignal(signal.SIGINT), "interrupt_flag", None)
            if outer is not None and outer.set:
                self.set = True
            # SIGTERM is what batch schedulers (Slurm, PBS) send before killing a job
            self._old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            for sig, old in self._old.items():
                signal.signal(sig, old)
            self._old = None
        return False


# ----------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------
def _progress_bar(total, epoch, epochs, enabled, initial=0):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm  # only when a bar is drawn: its 15 ms (asyncio) kept off `import npvae`
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    # disable=None: a bar on a terminal only, nothing in a log file or a pipe
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}/{epochs}", leave=False,
                dynamic_ncols=True, disable=None)


def fit(model, x_train, *, x_val=None, optimizer: Optimizer = Adam(lr=1e-3), epochs=10,
        batch_size=128, beta=1.0, seed=0, binarize=None, checkpoint_dir=None, resume=False,
        callbacks=(), progress=True, free_bits=0.0, early_stopping=None, restore_best=True,
        keep_checkpoints=2, objective="elbo", n_samples=1, diagnostics=None, compiled="auto",
        comm="auto") -> History:
    """Train ``model`` in place on ``x_train`` (n, D) and return the History.

    * ``optimizer``: an :class:`npvae.SGD`, :class:`npvae.Adam` or :class:`npvae.AdamW`.
    * ``beta``: a float or a β schedule (:mod:`npvae.schedules`); ``free_bits``: the floor
      λ in nats per latent dimension (0 = off).
    * ``binarize``: None, "static" (x ~ Bernoulli(x) once, seeded) or "dynamic" (a fresh
      draw for every minibatch).  Validation data is binarised once, with a fixed seed.
    * ``checkpoint_dir``: a training checkpoint at the end of every epoch (the newest
      ``keep_checkpoints`` are kept); ``resume=True`` continues from the newest one, up to
      ``epochs`` in total.  A model of your own layers then needs their ``config()``: its
      absence is a TypeError before anything is trained or written.
    * ``early_stopping``: stop when the validation ELBO has not improved for that many
      epochs; with ``restore_best`` the best parameters are put back.
    * ``callbacks``: ``cb(record, model)`` after every epoch; returning True stops training.
    * ``diagnostics``: an array of inputs (a few hundred rows) on which every epoch records
      active units, KL per dimension, activation statistics, per-layer gradient norms and
      update-to-weight ratios of the epoch's last step (``record["diagnostics"]``, and
      ``record["active_units"]``); a posterior collapse at the end warns.
    * ``objective="iwae"`` with ``n_samples=K`` trains on the importance-weighted bound
      (Burda et al. 2015) instead of the ELBO; it takes β = 1 and no free bits.
      ``"iwae-dreg"`` and ``"iwae-stl"``: the same bound, the encoder's gradient estimated
      by DReG or STL (:func:`npvae.engine.iwae_step`).
    * ``compiled``: "auto" (default) runs the steps through :mod:`npvae.compiled` (one
      numba call per chunk of steps) when the model and settings allow it, and through the
      engine step by step otherwise; True insists (a ValueError says why it cannot), False
      takes the engine path.  The two agree to rounding, not bit for bit, so a resumed run
      keeps the path it began with.
    * ``comm``: data parallelism over MPI (:mod:`npvae.parallel`).  "auto" (default) uses
      ``MPI.COMM_WORLD`` when the process was started by ``mpiexec``/``srun`` with more than
      one process; an mpi4py communicator is used as given; None: this process alone.  Each
      global batch of ``batch_size`` rows is split across the ranks, the gradients are added
      by one Allreduce, and every rank takes the same step: the result equals one process's
      to rounding.  Every rank passes the same arguments (the same data); rank 0 alone writes
      checkpoints and prints.  Runs on the engine path; free bits are not split (refused).
    * Ctrl-C finishes the current step (the current chunk of compiled steps), saves a
      checkpoint (with ``checkpoint_dir``) and returns the history with
      ``history.interrupted = True``.

    Each record holds: epoch, loss, reconstruction, kl (training means), beta (the mean over
    the epoch's steps), lr (of the epoch's last step), grad_norm (mean, before clipping),
    val_elbo (mean ELBO per example at β = 1, when ``x_val`` is given) and time (seconds).
    Same seed and data give a bit-identical history, apart from ``time``.
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an npvae optimizer (npvae.Adam, npvae.SGD), got {optimizer!r}")
    epochs = positive_int(epochs, "epochs")
    batch_size = positive_int(batch_size, "batch_size")
    seed = positive_int(seed, "seed", allow_zero=True)
    free_bits = finite_float(free_bits, "free_bits", min_value=0.0)
    keep_checkpoints = positive_int(keep_checkpoints, "keep_checkpoints")
    if binarize not in (None, "static", "dynamic"):
        raise ValueError(f"binarize must be None, 'static' or 'dynamic', got {binarize!r}")
    if early_stopping is not None:
        early_stopping = positive_int(early_stopping, "early_stopping")
        if x_val is None:
            raise ValueError("early_stopping needs validation data: pass x_val")
    beta_schedule = as_beta_schedule(beta)
    if importance_weighted(objective) and beta_schedule != ConstantBeta(1.0):
        raise ValueError("objective='iwae' takes beta=1 (it is a bound on ln p(x), not annealed)")
    objective, n_samples = _check_fit_objective(objective, n_samples, free_bits)
    callbacks = tuple(callbacks)
    if not all(callable(cb) for cb in callbacks):
        raise TypeError("callbacks must be callables cb(record, model)")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    if checkpoint_dir is not None:
        model.config()  # a model that cannot be saved (a layer without config()) fails here, before any work
    if compiled not in ("auto", True, False):
        raise ValueError(f"compiled must be 'auto', True or False, got {compiled!r}")
    why_not = compiled_mod.unsupported(model, objective=objective, free_bits=free_bits, optimizer=optimizer)
    comm = parallel.world(comm)
    ranks = parallel.size_of(comm)
    if comm is not None:
        why_not = (f"with MPI ({ranks} processes) every step's gradient is summed across the ranks "
                   "between the gradient and the update, which the engine path does step by step")
        if free_bits:
            raise ValueError("free bits floor the batch's mean KL per dimension, which is not split across "
                             f"MPI ranks: train with free_bits=0 or in one process ({ranks} processes here)")
        if batch_size < ranks:
            raise ValueError(f"batch_size {batch_size} is smaller than the {ranks} MPI processes: each "
                             "needs at least one row of every batch")
    if compiled is True and why_not is not None:
        raise ValueError(f"compiled=True, but the compiled path cannot train this run: {why_not}")

    if isinstance(x_train, np.memmap):
        # memory-mapped: each rank checks its share of the rows, and reads only the rows of its
        # shards while training
        if binarize == "static":
            raise ValueError("static binarisation draws over the whole data set at once: binarise the "
                             "memory-mapped file beforehand, or use binarize='dynamic'")
        x = x_train
        parallel.all_succeed(comm, lambda: _check_mapped_rows(x, model, binarize, comm=comm))
        # the compiled step reads the rows of each batch straight from the mapping (the pages
        # of those rows alone; a read-only or other-dtype array compiles a variant of its own)
    else:
        x = as_float_array(x_train, "x_train", dtype=model.dtype, shape=(None, model.n_inputs))
        if binarize is not None:
            if x.min() < 0 or x.max() > 1:
                raise ValueError("binarize needs x_train in [0, 1]")
            if binarize == "static":
                x = data_mod.binarize(x, np.random.default_rng([seed, 2]))
        model.likelihood.check_targets(x, "x_train")
    if diagnostics is not None:
        diagnostics = as_float_array(diagnostics, "diagnostics", dtype=model.dtype,
                                     shape=(None, model.n_inputs))
    if x_val is not None:
        x_val = as_float_array(x_val, "x_val", dtype=model.dtype, shape=(None, model.n_inputs))
        if binarize is not None:
            x_val = data_mod.binarize(x_val, np.random.default_rng([seed, 3]))
        model.likelihood.check_targets(x_val, "x_val")

    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    directory = None if checkpoint_dir is None else Path(checkpoint_dir)
    lock = None
    writer = parallel.rank_of(comm) == 0  # the one process that writes checkpoints and prints
    progress = progress and writer

    held_lock = []

    def prepare_folder():
        directory.mkdir(parents=True, exist_ok=True)
        held = lock_folder(directory)
        try:
            if not resume and list_checkpoints(directory):
                raise ValueError(f"{directory} holds checkpoints of an earlier run: pass resume=True "
                                 "to continue it, or give an empty or new checkpoint_dir")
            _remove_stale_temporaries(directory)
        except BaseException:
            held.release()
            raise
        held_lock.append(held)
    if directory is not None:
        # rank 0 alone locks and checks the folder; an error there is raised on every rank
        parallel.agree(comm, prepare_folder, kinds=(RunLockedError,))
        lock = held_lock[0] if held_lock else None

    try:
        run = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "sums": {}, "epoch_time": 0.0,
               "best_val": None, "best_epoch": None, "bad_epochs": 0, "history": [],
               "seed": seed, "batch_size": batch_size, "binarize": binarize, "free_bits": free_bits,
               "data": _fingerprint(x, comm), "optimizer": optimizer.config(),
               "objective": objective, "n_samples": n_samples,
               "beta_schedule": beta_schedule.config(),
               "step_path": "compiled" if compiled is not False and why_not is None else "engine"}
        rng = np.random.default_rng(seed)
        opt_state = optimizer.init(model.params)
        perm = np.arange(n)
        best_params = None

        if resume:
            def same_run_and_sound(path, loaded):
                # a checkpoint of another run is the caller's mistake (an error); a damaged one
                # is skipped for an older one (CheckpointError)
                saved_model, meta, saved_opt = loaded[0], loaded[1], loaded[2]
                as_json = lambda cfg: json.loads(json.dumps(cfg))  # a tuple in a config reads back as a list
                if as_json(saved_model.config()) != as_json(model.config()):
                    raise ValueError(f"cannot resume from {path}: it was made for {saved_model.config()}, "
                                     f"not {model.config()}")
                for key in ("seed", "batch_size", "binarize", "data", "free_bits", "objective", "n_samples"):
                    now = run[key]
                    if key == "data" and isinstance(meta, dict) and ":b" not in str(meta.get(key)):
                        now = _legacy_fingerprint(x)  # a checkpoint written before the blockwise one
                    if isinstance(meta, dict) and meta.get(key) != now:
                        raise ValueError(f"cannot resume from {path}: {key} was {meta.get(key)!r}, "
                                         f"now {run[key]!r}")
                if set(saved_opt) != set(opt_state) or any(saved_opt[k].shape != opt_state[k].shape
                                                           for k in opt_state if k in saved_opt):
                    raise ValueError(f"cannot resume from {path}: its optimizer state does not fit "
                                     f"{type(optimizer).__name__} (the run used {meta.get('optimizer')!r:.80})")
                check_training_state(path, loaded, n, steps_per_epoch, opt_state)

            own_layers = {type(l) for l in model.encoder_layers + model.decoder_layers}

            def choose():
                path, loaded = _newest_loadable(directory, same_run_and_sound, own_layers)
                if loaded is None and list_checkpoints(directory):
                    # never start afresh over a run's checkpoints: that would prune them
                    raise ValueError(f"resume=True, but none of the {len(list_checkpoints(directory))} checkpoints "
                                     f"in {directory} can continue this run (the warnings above say why); move "
                                     "them away to start a new run there")
                return path, loaded
            # rank 0 chooses the checkpoint; the others read that same file
            chosen = []

            def choose_path():
                chosen[:] = choose()
                return None if chosen[0] is None else str(chosen[0])
            path = parallel.agree(comm, choose_path)
            loaded = None if path is None else (chosen[1] if writer else
                                                load_training_checkpoint(path, own_layers))
            if loaded is not None:
                saved_model, meta, saved_opt, perm, best_params = loaded
                for k in model.params:
                    model.params[k][...] = saved_model.params[k]
                opt_state = {k: np.array(v) for k, v in saved_opt.items()}
                rng.bit_generator.state = meta.pop("rng_state")
                run.update({k: meta[k] for k in ("epoch", "step_in_epoch", "global_step", "sums",
                                                 "epoch_time", "best_val", "best_epoch",
                                                 "bad_epochs", "history")})
                perm = np.array(perm)
                # the path the run began on (checkpoints before there was a choice: the engine)
                began = meta.get("step_path", "engine")
                if began != run["step_path"] and compiled == "auto" and began in ("compiled", "engine") \
                        and (began == "engine" or why_not is None):
                    run["step_path"] = began

        # rank 0's parameters on every rank (a model built from another seed would differ)
        parallel.broadcast_params(comm, model.params)
        history = History(run["history"])
        history.best_epoch = run["best_epoch"]
        val_rng_seed = [seed, 4]

        def save():
            if comm is not None and not parallel.same_everywhere(comm, model.params.values()):
                raise RuntimeError("the MPI ranks' parameters have drifted apart (their Allreduce gave "
                                   "different sums on different ranks); nothing was saved")
            if directory is not None and writer:
                # the state itself is checked, not only the loss: a checkpoint never holds NaN
                for name, arr in [*model.params.items(), *opt_state.items()]:
                    if isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and not arrays.all_finite(arr):
                        raise DivergenceError(run["epoch"], run["global_step"], run["step_in_epoch"],
                                              f"{name!r} holds NaN or inf", "")
                run["history"] = history.records
                _save_training(directory, model, opt_state, run, rng, perm, best_params,
                               keep_checkpoints)

        step = TrainStep(model, dynamic_binarize=binarize == "dynamic", free_bits=free_bits,
                         objective=objective, n_samples=n_samples, comm=comm)
        chunks = None
        if run["step_path"] == "compiled":
            chunks = compiled_mod.OptimizerSteps(model, optimizer, opt_state, step.grads,
                                                 dynamic_binarize=binarize == "dynamic", objective=objective,
                                                 n_samples=n_samples, free_bits=free_bits)
            full_steps = n // batch_size  # steps with a whole batch; a last, smaller one runs alone
            # the row blocks of the run's batch size for every step, the last, smaller one
            # too: one compiled kernel (a cold start compiles the one- or the many-block one)
            chunks.blocks = chunks.blocks_for(batch_size)
        stop = False
        # Overflow in a step is reported once, as a DivergenceError naming it, not as warnings.
        limits = chunks.thread_settings(batch_size) if chunks is not None else {}
        with InterruptFlag() as interrupt, threads.limited(**limits), \
                np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            while run["epoch"] < epochs and not stop:
                epoch = run["epoch"] + 1
                if run["step_in_epoch"] == 0:
                    perm = rng.permutation(n)
                    run["sums"] = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0, "beta": 0.0,
                                   "grad_norm": 0.0, "lr": 0.0}
                    run["epoch_time"] = 0.0
                sums = run["sums"]
                t0 = time.perf_counter()
                bar = _progress_bar(steps_per_epoch, epoch, epochs, progress, run["step_in_epoch"])
                try:
                    while run["step_in_epoch"] < steps_per_epoch:
                        i = run["step_in_epoch"]
                        if diagnostics is not None and i == steps_per_epoch - 1:
                            before = {k: v.copy() for k, v in model.params.items()}
                        if chunks is None:
                            idx = perm[i * batch_size:(i + 1) * batch_size]
                            b = beta_schedule(run["global_step"], steps_per_epoch)
                            step.stop_requested = interrupt.set
                            loss, parts, bad = step(x, idx, rng, b)
                            if bad is not None:
                                raise DivergenceError(epoch, run["global_step"] + 1, i + 1, bad,
                                                      _divergence_hint(x, optimizer))
                            lr = optimizer.learning_rate(opt_state)
                            optimizer.update(model.params, step.grads, opt_state, grad_norm=step.grad_norm)
                            done = [(len(idx), float(loss), float(parts["reconstruction"]), float(parts["kl"]),
                                     b, float(opt_state["grad_norm"]), lr)]
                        else:
                            done = _compiled_chunk(chunks, step, x, rng, perm, i, steps_per_epoch, full_steps,
                                                   batch_size, run, beta_schedule, optimizer, opt_state,
                                                   diagnostics is not None, epoch)
                        for rows, loss_s, rec_s, kl_s, b, gnorm, lr in done:
                            w = rows / n
                            sums["loss"] += loss_s * w
                            sums["reconstruction"] += rec_s * w
                            sums["kl"] += kl_s * w
                            sums["beta"] += b
                            sums["grad_norm"] += gnorm
                            sums["lr"] = lr
                            run["step_in_epoch"] += 1
                            run["global_step"] += 1
                        if bar is not None:
                            bar.update(len(done))
                            if i % 10 < len(done) or run["step_in_epoch"] == steps_per_epoch:
                                bar.set_postfix(loss=f"{loss_s:.3f}", kl=f"{kl_s:.3f}", beta=f"{b:.3f}",
                                                refresh=False)
                        if step.stop_everywhere if comm is not None else interrupt.set:
                            break
                finally:
                    if bar is not None:
                        bar.close()
                    run["epoch_time"] += time.perf_counter() - t0
                if (step.stop_everywhere if comm is not None else interrupt.set) and \
                        run["step_in_epoch"] < steps_per_epoch:
                    history.interrupted = True
                    save()
                    break

                record = {"epoch": epoch}
                record.update({k: sums[k] for k in ("loss", "reconstruction", "kl", "lr")})
                record["beta"] = sums["beta"] / steps_per_epoch
                record["grad_norm"] = sums["grad_norm"] / steps_per_epoch
                # the epoch's evaluation is the engine's work: under its thread settings, not
                # the compiled steps' (numba's threads beside OpenBLAS's took it 2x as long)
                with threads.limited(**threads.engine_limits()):
                    if x_val is not None:
                        val = float(model.elbo(x_val, rng=np.random.default_rng(val_rng_seed),
                                               comm=comm).mean())
                        record["val_elbo"] = val
                        if run["best_val"] is None or val > run["best_val"]:
                            run["best_val"], run["best_epoch"], run["bad_epochs"] = val, epoch, 0
                            if early_stopping is not None:
                                best_params = {k: v.copy() for k, v in model.params.items()}
                        else:
                            run["bad_epochs"] += 1
                        history.best_epoch = run["best_epoch"]
                    if diagnostics is not None:
                        diag = diag_mod.summary(model, diagnostics, grads=step.grads, before=before)
                        record["active_units"] = diag["active_units"]
                        record["diagnostics"] = diag
                record["time"] = run["epoch_time"]
                history.append(record)
                run["epoch"], run["step_in_epoch"] = epoch, 0
                if progress:
                    val_txt = f"  val ELBO {record['val_elbo']:.3f}" if "val_elbo" in record else ""
                    print(f"epoch {epoch}/{epochs}  loss {record['loss']:.4f}  KL {record['kl']:.4f}  "
                          f"beta {record['beta']:.3f}{val_txt}  ({format_seconds(record['time'])})", flush=True)
                if early_stopping is not None and run["bad_epochs"] >= early_stopping:
                    history.stopped_early = True
                    stop = True
                for cb in callbacks:
                    if cb(record, model) is True:
                        stop = True
                save()
                if parallel.any_rank(comm, interrupt.set):
                    history.interrupted = True
                    break

        if history.stopped_early and restore_best and best_params is not None:
            for k in model.params:
                model.params[k][...] = best_params[k]
        if diagnostics is not None and len(history) and not history.interrupted:
            with threads.limited(**threads.engine_limits()):
                diag_mod.check_posterior_collapse(model, diagnostics)
        return history
    finally:
        if lock is not None:
            lock.release()


def _compiled_chunk(chunks, step, x, rng, perm, i, steps_per_epoch, full_steps, batch_size, run, beta_schedule,
                    optimizer, opt_state, last_alone, epoch):
    """Run the next chunk of compiled steps from step i of the epoch; returns one tuple per
    step (rows, loss, reconstruction, kl, β, gradient norm, learning rate), or raises the
    DivergenceError of the first non-finite step.  A chunk ends before the epoch's smaller
    last batch, and before the epoch's last step when that one must run alone (its
    diagnostics compare the parameters before and after it)."""
    end = min(steps_per_epoch, i + compiled_mod.CHUNK)
    if i < full_steps:
        end = min(end, full_steps)
    if last_alone and i < steps_per_epoch - 1:
        end = min(end, steps_per_epoch - 1)
    S = end - i
    rows = min(batch_size, len(perm) - i * batch_size)
    idx = perm[i * batch_size:i * batch_size + S * rows].reshape(S, rows)
    g0 = run["global_step"]
    betas = [beta_schedule(g0 + s, steps_per_epoch) for s in range(S)]
    t0 = int(opt_state["step"])
    lrs = [optimizer.lr(t0 + s) for s in range(S)]
    n_done, losses, recs, kls, norms = chunks.run(x, idx, rng, np.asarray(betas))
    if n_done < S:
        loss = float(losses[n_done])
        if not math.isfinite(loss):
            bad = f"the loss is {loss}"
        else:
            bad = next((f"the gradient of parameter {name!r} holds NaN or inf" for name, g in step.grads.items()
                        if not arrays.all_finite(g)), "the gradient norm overflows")
        raise DivergenceError(epoch, g0 + n_done + 1, i + n_done + 1, bad, _divergence_hint(x, optimizer))
    return [(rows, float(losses[s]), float(recs[s]), float(kls[s]), betas[s], float(norms[s]), lrs[s])
            for s in range(S)]


def _divergence_hint(x, optimizer) -> str:
    """A likely cause, when one is visible from the data or the optimizer."""
    scale = float(np.max(np.abs(x)))
    if scale > 100:
        return (f" The data reaches |x| = {scale:.3g}: standardise it first "
                f"(npvae.data.Standardizer), so the encoder's log-variance cannot overflow.")
    if optimizer.clip_norm is None:
        return " Gradient clipping (clip_norm=...) or a smaller learning rate may help."
    return ""


def _check_fit_objective(objective, n_samples, free_bits):
    return check_objective(objective, n_samples, 1.0, free_bits)


class TrainStep:
    """The loss and gradient of one minibatch, with every large buffer reused.

    ``step(x, idx, rng, beta) -> (loss, parts, bad)`` gathers the rows ``idx`` of x,
    binarises them (dynamic binarisation), draws ε, and writes the gradients into
    ``step.grads`` (views of one flat buffer, so the optimizer's fused path applies).
    ``bad`` names the first non-finite quantity (the loss or a parameter's gradient), or is
    None; ``step.grad_norm`` is the global gradient norm (for the optimizer's clipping).
    The draws from ``rng`` are, in order: the binarisation uniforms, then ε.  The data is
    trusted: ``fit`` checks it (shape, finiteness, support) once, before training.
    """

    def __init__(self, model, *, dynamic_binarize=False, free_bits=0.0, objective="elbo", n_samples=1, comm=None):
        self.model, self.dynamic, self.free_bits = model, dynamic_binarize, free_bits
        self.comm = comm
        self.stop_requested = False   # this rank's wish to stop (a signal), sent with the step's sums
        self.stop_everywhere = False  # some rank's wish, known to every rank after the step
        self.objective, self.n_samples = _check_fit_objective(objective, n_samples, free_bits)
        self.grads = flat_like(model.params)
        self._flat = next(iter(self.grads.values())).base
        self._buffers: dict[int, tuple] = {}

    def _buffers_for(self, B, rows=None):
        """(x rows, uniforms, ε) for a batch of B rows, of which this process takes ``rows``
        (all by default): the noise is drawn for the whole batch."""
        rows = B if rows is None else rows
        bufs = self._buffers.get((B, rows))
        if bufs is None:
            m = self.model
            if len(self._buffers) >= 2:
                self._buffers.pop(next(iter(self._buffers)))
            eps_shape = (B, m.n_latent) if self.objective == "elbo" else (self.n_samples, B, m.n_latent)
            bufs = (np.empty((rows, m.n_inputs), m.dtype), np.empty((B, m.n_inputs), m.dtype),
                    np.empty(eps_shape, m.dtype))
            if rows != B and importance_weighted(self.objective):
                bufs += (np.empty((self.n_samples, rows, m.n_latent), m.dtype),)
            self._buffers[(B, rows)] = bufs
        return bufs

    def __call__(self, x, idx, rng, beta):
        if self.comm is not None:
            return self._shard_step(x, idx, rng, beta)
        model = self.model
        xb, u, eps = self._buffers_for(len(idx))
        _gather(x, idx, xb)
        if self.dynamic:
            rng.random(out=u, dtype=model.dtype)
            arrays.binarize_(xb, u)
        arrays.standard_normal_(rng, eps)
        loss, parts = self._loss_and_grad(xb, eps, beta)
        return loss, parts, self._check(loss)

    def _loss_and_grad(self, xb, eps, beta):
        model, grads = self.model, self.grads
        if importance_weighted(self.objective):
            loss, parts = engine.iwae_step(model.plan, model.params, grads, xb, eps, model.workspaces(len(xb)),
                                           model.workspaces(self.n_samples * len(xb)),
                                           estimator=IMPORTANCE_WEIGHTED[self.objective])
        else:
            loss, parts = engine.elbo_step(model.plan, model.params, grads, xb, eps, model.workspaces(len(xb)),
                                           beta=float(beta), free_bits=self.free_bits)
        return loss, parts

    def _shard_step(self, x, idx, rng, beta):
        """The step over this rank's rows of the batch: the whole batch's noise is drawn (so
        that each example's noise does not depend on the number of ranks), the shard's
        gradient is weighted by its share of the batch, and one Allreduce adds the shards."""
        model, comm = self.model, self.comm
        B = len(idx)
        r0, r1 = parallel.shard(B, comm.Get_rank(), comm.Get_size())
        bufs = self._buffers_for(B, r1 - r0)
        xb, u, eps = bufs[:3]
        _gather(x, idx[r0:r1], xb)
        if self.dynamic:
            rng.random(out=u, dtype=model.dtype)
            if r1 > r0:
                arrays.binarize_(xb, u[r0:r1])
        arrays.standard_normal_(rng, eps)
        if importance_weighted(self.objective):
            mine = bufs[3] if len(bufs) > 3 else eps
            if mine is not eps:
                np.copyto(mine, eps[:, r0:r1])
        else:
            mine = eps[r0:r1]
        sums = np.zeros(4)  # the shard's share of: loss, reconstruction, KL; a stop request
        if r1 > r0:
            loss, parts = self._loss_and_grad(xb, mine, beta)
            share = (r1 - r0) / B
            if share != 1.0:
                self._flat *= model.dtype.type(share)
            sums[:3] = float(loss) * share, float(parts["reconstruction"]) * share, float(parts["kl"]) * share
        else:
            self._flat[...] = 0
        sums[3] = 1.0 if self.stop_requested else 0.0
        parallel.sum_in_place(comm, self._flat)  # the one Allreduce of the gradient buffer
        parallel.sum_in_place(comm, sums)
        self.stop_everywhere = sums[3] > 0
        loss = sums[0]
        return loss, {"reconstruction": sums[1], "kl": sums[2]}, self._check(loss)

    def _check(self, loss):
        grads = self.grads
        bad = None
        # Σ g² (float64) is finite exactly when every gradient is: one pass checks them all
        self.grad_norm = math.sqrt(sum_squares(self._flat))
        if not math.isfinite(float(loss)):
            bad = f"the loss is {float(loss)}"
        elif not math.isfinite(self.grad_norm):
            for name, g in grads.items():
                if not arrays.all_finite(g):
                    bad = f"the gradient of parameter {name!r} holds NaN or inf"
                    break
            else:
                bad = "the gradient norm overflows"
        return bad


def _gather(x, rows, out) -> None:
    """out ← x[rows]: in place for an in-memory array of out's dtype; from a memory-mapped
    file (or another dtype), by reading just those rows and converting them."""
    if x.dtype == out.dtype and not isinstance(x, np.memmap):
        np.take(x, rows, axis=0, out=out, mode="clip")  # mode="raise" buffers out: a copy
    else:
        out[...] = x[rows]
