"""Data-parallel training across processes started by ``torchrun`` (one process per GPU, or CPU ranks).

Gradients are averaged with one flat all-reduce per optimizer step, as StyleGAN3's training loop
does, instead of wrapping the nets in ``DistributedDataParallel``: DDP's reducer does not support
the double backward of the R1 and path-length penalties, nor a net used in several phases per step.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import nn

from stylexlib.core.run import pick_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank, number of processes, local GPU index."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes files, logs and progress bars."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE = DistInfo()


def init_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK).

    Without them (or with WORLD_SIZE=1) this is a single process on ``pick_device(device_name)``.
    CUDA ranks use NCCL and GPU ``LOCAL_RANK``; CPU ranks use Gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world_size <= 1:
        return SINGLE, device
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    log.info("rank %d of %d on %s", info.rank, info.world_size, device)
    return info, device


def shutdown_distributed(failed: bool = False) -> None:
    """Leave the process group (no-op when none was joined). On a clean exit every rank first waits for the others, so
    that none tears the group down while a slower one may still talk to it. After an error (``failed``) the group is
    left as it is: a peer may never reach a collective (tearing down would hang), and torchrun ends the other ranks once
    this one exits non-zero."""
    if not dist.is_initialized() or failed:
        return
    dist.barrier()
    dist.destroy_process_group()


def broadcast_modules(modules: Iterable[nn.Module], info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not info.enabled:
        return
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_gradients(module: nn.Module, info: DistInfo) -> None:
    """Average the gradients of ``module`` across ranks in place (one flat all-reduce)."""
    if not info.enabled:
        return
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= info.world_size
    for param, grad in zip(params, flat.split([p.numel() for p in params])):
        param.grad.copy_(grad.view_as(param.grad))


def mean_across_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The element-wise mean of a tensor over all ranks (the tensor itself in a single process)."""
    if not info.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / info.world_size


def any_rank(flag: bool, device: torch.device, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    return any_ranks([flag], device, info)[0]


def any_ranks(flags: list[bool], device: torch.device, info: DistInfo) -> list[bool]:
    """Each flag True on every rank when it is true on at least one: one all-reduce (one host sync) for them all."""
    if not info.enabled:
        return [bool(flag) for flag in flags]
    value = torch.tensor([float(flag) for flag in flags], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return [bool(v) for v in value.tolist()]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(info: DistInfo) -> None:
    """Wait for every rank."""
    if info.enabled:
        dist.barrier()
