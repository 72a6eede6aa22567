"""torchrun: which process this is, the process group, and numbers summed across processes.

Read this when you run train.py under torchrun and wonder how the processes share one batch, one
learning rate and one decision to stop. Run plainly, train.py is rank 0 of 1 and all of this is
a no-op.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from support.devices import pick_device
from support.settings import UserError


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the ones torchrun started (rank 0 of 1 when run plainly)."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Processes()


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when run plainly); readable before anything starts."""
    return int(os.environ.get("RANK", "0"))


def start_processes(device_name: str) -> tuple[Processes, torch.device]:
    """Join torchrun's process group if there is one (it sets RANK, LOCAL_RANK, WORLD_SIZE) and pick
    this process's device: its own GPU under torchrun, else the requested one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        device = pick_device(device_name)
    except ValueError as e:
        raise UserError(str(e)) from None
    if world_size <= 1:
        return SINGLE, device
    procs = Processes(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"multi-process training supports cpu and cuda, not {device.type} — pass --device cpu")
    torch_dist.init_process_group(backend=backend)
    return procs, device


def end_processes() -> None:
    """Leave the process group, if this process joined one."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def all_reduce_sum(values: list[float], procs: Processes, device: torch.device) -> list[float]:
    """Sum each value over all processes (identity for one process)."""
    if not procs.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(t)
    return t.tolist()


def barrier(procs: Processes) -> None:
    """Wait until every process gets here."""
    if procs.distributed:
        torch_dist.barrier()


def gather(obj, procs: Processes) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process ([obj] for one process)."""
    if not procs.distributed:
        return [obj]
    gathered = [None] * procs.world_size
    torch_dist.all_gather_object(gathered, obj)
    return gathered


def model_for_training(model: torch.nn.Module, procs: Processes, device: torch.device):
    """The module the training step calls: the model itself, or under torchrun the model wrapped in
    DistributedDataParallel, which averages the gradients across processes during backward."""
    if not procs.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def gradient_sync(train_model, procs: Processes, last_micro_step: bool):
    """Context for one micro-step's forward and backward. DDP exchanges gradients during every
    backward; between micro-steps of one step that exchange is wasted, so only the last syncs."""
    if procs.distributed and not last_micro_step:
        return train_model.no_sync()
    return contextlib.nullcontext()
