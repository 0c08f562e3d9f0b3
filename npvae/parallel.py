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

The primitives are defined in :mod:`npvae.mpi` (below the model, whose evaluation uses them);
this module gives them with :func:`train_many`, which rebuilds models through
:mod:`npvae.checkpoint`.
"""
from __future__ import annotations

import json

import numpy as np

from .checkpoint import model_from_arrays
from .mpi import (ABORT_GRACE, abort, abort_on_uncaught_error, agree, all_succeed, any_rank,  # noqa: F401
                  block_streams, broadcast_in_place, broadcast_params, groups, launched_by_mpi, my_blocks,
                  my_share, rank_of, same_everywhere, shard, size_of, sum_in_place, world)


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
    size = comm.Get_size()
    G = min(size if n_groups is None else int(n_groups), max(1, len(items)))
    group, sub = groups(G, comm)
    mine = {i: train(item, sub) for i, item in enumerate(items) if i % G == group}
    models = []
    for i in range(len(items)):
        root = -(-(i % G) * size // G)  # the first rank of item i's group
        model = mine.get(i) if comm.Get_rank() == root else None
        # the configuration and the parameters' shapes (small), from the group's first rank; a
        # model that cannot be described (a layer without config()) raises on every rank
        layout = agree(comm, lambda: (json.dumps(model.config()),
                                      [(k, v.shape, v.dtype.str) for k, v in model.params.items()]), root=root)
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
