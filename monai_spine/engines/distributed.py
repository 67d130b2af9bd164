"""Distributed training under ``torchrun`` (``bundle/configs/multi_gpu_train.json``): device, process group, rank."""

from __future__ import annotations

import os

import torch

__all__ = ["distributed_device", "init_distributed", "destroy_distributed", "is_secondary_rank"]


def distributed_device() -> torch.device:
    """This process's device under ``torchrun``: ``cuda:LOCAL_RANK`` with GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed() -> None:
    """Join the ``torchrun`` process group (NCCL on GPUs, gloo on the CPU) and sync ignite to it."""
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(distributed_device())
    # ignite sets up its own view of the group lazily, with a collective call: do it here, on every
    # rank at the same point, or a handler present on rank 0 only would deadlock the others
    import ignite.distributed as idist

    idist.sync()


def destroy_distributed() -> None:
    """Leave the process group (no-op outside ``torchrun``)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def is_secondary_rank() -> bool:
    """True in a ``torchrun`` process other than rank 0 (which alone logs, tracks and saves)."""
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_rank() > 0


# --------------------------------------------------------------------------------------------
# crash-safe checkpoints and resumption
# --------------------------------------------------------------------------------------------
