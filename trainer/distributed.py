"""Data-parallel training over processes: torchrun, DistributedDataParallel, gloo.

The same ``corral train`` scales out when torchrun starts it::

    torchrun --nproc-per-node 2 --no-python corral train --out DIR --threads 1 ...

The order of steps, and why:

1. :func:`process_group` (entered by the CLI) joins the group that torchrun
   describes in the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
   ``MASTER_PORT``) on the gloo backend, which runs on CPUs; started any other
   way it does nothing and training runs in one process, unchanged.
2. Every process reads the same data. :func:`check_same` compares the dataset
   versions across processes first, so that a process reading other files fails
   at once instead of training a model on data nobody can name.
3. :func:`trainer.train.train_model` wraps the network in
   ``DistributedDataParallel``. At each step every process draws the same global
   batch (same seed, same generator) and trains on its share (:func:`shard`:
   every ``world``-th sample). DDP averages the gradients, so a step sees the
   same global batch of ``batch_size`` images as a one-process run: the number
   of steps, the learning-rate schedule and the augmentation are the same; only
   batch-norm statistics are taken per share.
4. After training, :func:`sync_buffers` copies rank 0's batch-norm running
   statistics to the others (DDP broadcasts them only before each forward), so
   every process holds the same model and computes the same evaluation.
5. Only the main process (:func:`is_main`) writes the bundle, the report and the
   MLflow run, and prints progress.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer.errors import DistributedError

__all__ = [
    "BACKEND",
    "check_same",
    "is_main",
    "process_group",
    "shard",
    "sum_across",
    "sync_buffers",
    "world",
    "wrap",
]

BACKEND = "gloo"  # CPU collectives; NCCL would need one GPU per process
# A process that died or hangs makes the others wait this long, not gloo's 30 minutes.
_TIMEOUT = timedelta(minutes=10)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """This process's rank and the number of processes; ``(0, 1)`` outside a group."""
    if not _active():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """Whether this process writes outputs: rank 0, or the only process."""
    return world()[0] == 0


@contextmanager
def process_group(backend: str = BACKEND) -> Iterator[tuple[int, int]]:
    """Join the process group torchrun describes, for the duration of the block.

    Does nothing (and yields ``(0, 1)``) when ``WORLD_SIZE`` is unset or 1, or when
    a group is already initialised (the caller owns it then).

    Args:
        backend: the ``torch.distributed`` backend; gloo runs on CPUs.

    Yields:
        ``(rank, world_size)``.

    Raises:
        DistributedError: ``WORLD_SIZE`` says several processes but the group
            cannot be formed (no torch.distributed, a bad address, a peer that
            never came).
    """
    size = int(os.environ.get("WORLD_SIZE", "1") or "1")
    if size <= 1 or _active():
        yield world()
        return
    if not dist.is_available():
        raise DistributedError(
            f"WORLD_SIZE is {size} but this torch has no torch.distributed; "
            "run one process, or install a torch build with distributed support"
        )
    try:
        dist.init_process_group(backend, timeout=_TIMEOUT)
    except (RuntimeError, ValueError) as e:
        raise DistributedError(
            f"cannot join the {size}-process {backend} group described by RANK, WORLD_SIZE, "
            f"MASTER_ADDR and MASTER_PORT ({e}); start the trainer with torchrun"
        ) from e
    try:
        yield world()
    finally:
        dist.destroy_process_group()


def check_same(value: str, what: str) -> None:
    """Check that every process holds the same ``value``.

    Args:
        value: e.g. the dataset version.
        what: its name, for the message.

    Raises:
        DistributedError: the processes disagree; the message lists each rank's value.
    """
    rank, size = world()
    if size == 1:
        return
    values: list[object] = [None] * size
    dist.all_gather_object(values, value)
    if len(set(map(str, values))) > 1:
        shown = ", ".join(f"rank {r}: {str(v)[:16]}" for r, v in enumerate(values))
        raise DistributedError(
            f"the training processes disagree on the {what} ({shown}); every process "
            "must read the same data and settings"
        )


def shard(index: torch.Tensor) -> slice:
    """This process's share of a global batch: every ``world``-th row from its rank.

    Args:
        index: the global batch's rows (only its length matters).

    Returns:
        A slice to apply to the batch.
    """
    rank, size = world()
    return slice(rank, len(index), size)


def sum_across(values: Sequence[float]) -> list[float]:
    """Add each value over all processes (float64); the values themselves outside a group."""
    if world()[1] == 1:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.tolist()]


def wrap(model: nn.Module) -> nn.Module:
    """``DistributedDataParallel(model)`` in a group of several processes, else ``model``."""
    if world()[1] == 1:
        return model
    return DistributedDataParallel(model)


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every process."""
    if world()[1] == 1:
        return
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
