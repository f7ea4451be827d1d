"""Data parallelism on torch.distributed: one process, `torchrun` DDP, or FSDP2 (`fully_shard`), same command.

    codelm train ...                                   one process
    torchrun --nproc-per-node 2 -m codelm.cli train ...   DDP (gloo on CPU, NCCL on GPU)
    torchrun ... train --parallel fsdp                 FSDP2: parameters, gradients and optimizer state sharded

Nothing here is home-made: torchrun sets RANK/WORLD_SIZE/MASTER_ADDR, `init_process_group` reads them, DDP and
FSDP2 average gradients. Checkpoints always hold full (unsharded) tensors keyed by parameter name, gathered with
`torch.distributed.checkpoint.state_dict`, so a checkpoint written by 8 GPUs loads in one CPU process and back.
Trade-off: gathering full state to rank 0 costs memory at 2.7B+ scale; sharded DCP checkpoints would avoid it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from codelm.errors import ConfigError

PARALLEL_MODES = ("auto", "ddp", "fsdp")
LARGE_PRESETS = ("350m", "1.3b", "2.7b")  # FSDP by default: their optimizer state dwarfs one device's memory


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "none"  # none, ddp, fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_type: str) -> Dist:
    """Join the process group torchrun describes in the environment; a plain launch is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local_rank)


def choose_mode(requested: str, world: int, preset: str) -> str:
    if requested not in PARALLEL_MODES:
        raise ConfigError(f"unknown --parallel {requested!r}; choose {', '.join(PARALLEL_MODES)}")
    if world <= 1:
        return "none"
    if requested == "auto":
        return "fsdp" if preset in LARGE_PRESETS else "ddp"
    return requested


def wrap_model(model: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """The module the training step calls. DDP wraps; FSDP2 shards in place (each block, then the root)."""
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in model.layers:  # one all-gather per block: overlaps communication with the previous block
            fully_shard(block)
        fully_shard(model)
        return model
    return model


def grad_sync(wrapped: torch.nn.Module, mode: str, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step (same result, less
    communication)."""
    if mode == "ddp" and not enabled:
        return wrapped.no_sync()
    if mode == "fsdp":
        wrapped.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights on CPU (a collective under FSDP: every rank must call it)."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state keyed by parameter name (not position), unsharded: portable across world sizes."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict,
                    optimizer_state: dict | None) -> None:
    """Every rank holds the full state (read from the checkpoint); each keeps its own shard."""
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=opts)
    if optimizer is not None and optimizer_state is not None:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=opts)


def all_reduce_mean(values: dict[str, float], world: int) -> dict[str, float]:
    """Average logged scalars over ranks (each rank saw a different slice of the batch)."""
    if world <= 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist())}


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def shutdown(synchronize: bool = False) -> None:
    """Leave the process group. After a run that succeeded everywhere the ranks meet at a barrier first: a rank that
    tears gloo down while its peer still has traffic in flight can abort at exit ("terminate called without an
    active exception", seen about once in 50 two-process runs). Not after a failure: the peer may never arrive."""
    if dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()
