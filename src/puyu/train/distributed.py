"""Process groups, model wrapping and full state dicts for `torchrun` training.

The same entry points run as one plain process or under `torchrun --nproc_per_node=N`:
- `setup()` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; with more than one process it starts a
  process group (nccl on CUDA, gloo on CPU unless the recipe names a backend) and pins each process to
  its GPU (`cuda:LOCAL_RANK`).
- `wrap()` applies DDP (replicated weights, averaged gradients) or FSDP (`fully_shard` on every decoder
  layer and on the root: parameters, gradients and optimizer state sharded across processes).
- `get_full_state` / `set_full_state` move model and optimizer state as full, unsharded dicts keyed by
  parameter name (torch.distributed.checkpoint.state_dict), so checkpoints do not depend on the
  number of processes or the strategy.

Loss normalisation across processes is done by the training loop (see `pretrain.train`): every process
divides its summed token loss by the global count of loss tokens and multiplies by the world size, so
DDP's gradient average equals the gradient of the global mean, whatever the split.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from puyu.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None, backend: str | None = None) -> DistInfo:
    """Start the process group when launched by torchrun with several processes; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but CUDA is not available")
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local, dev, backend)


@contextlib.contextmanager
def session(device: str | None = None, backend: str | None = None) -> Iterator[DistInfo]:
    """`setup`, then `cleanup` with ok=True when the body finished and ok=False when it raised."""
    info = setup(device, backend)
    ok = False
    try:
        yield info
        ok = True
    finally:
        cleanup(info, ok)


def cleanup(info: DistInfo, ok: bool = True) -> None:
    """End the process group. On success every rank first meets at a barrier, so no rank tears down its
    gloo/nccl threads while a peer still talks to it (a rank that exited early was seen to abort with
    "terminate called without an active exception" under load); after a failure the group is aborted
    without a collective (a barrier would hang on the peers still inside one) and torchrun reaps the rest."""
    if not (info.distributed and dist.is_initialized()):
        return
    if ok:
        dist.barrier()
        dist.destroy_process_group()
        return
    pg = dist.distributed_c10d._get_default_group()
    if hasattr(pg, "abort"):
        try:
            pg.abort()
        except Exception:  # abort is best effort; the failure that brought us here is what the user sees
            pass
    else:
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo, strategy: str) -> nn.Module:
    """DDP or FSDP around `model` (already on `info.device`); the model itself for one process."""
    if not info.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for layer in model.lm.model.layers:  # model is the LossModel around the causal LM
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ConfigError(f"unknown dist.strategy {strategy!r}; use ddp or fsdp")


def unwrap(model: nn.Module) -> nn.Module:
    """The InternLM2ForCausalLM inside a DDP wrapper (FSDP2 shards in place, so no wrapper there)."""
    return model.module if hasattr(model, "module") else model


def all_reduce_sum(x: torch.Tensor, info: DistInfo | None) -> torch.Tensor:
    """`x` summed over processes, in place (unchanged with one process or `info` None)."""
    if info is not None and info.distributed:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's `obj` on every process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def get_full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state dicts on CPU, keyed by parameter name.
    Under several processes only rank 0 receives them (the others get empty dicts)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=opts)


def set_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict,
                   optim_state: dict | None) -> None:
    """Load full state dicts (as written by `get_full_state`) into a plain, DDP or FSDP model."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=opts)
    if optimizer is not None and optim_state is not None:
        set_optimizer_state_dict(model, optimizer, optim_state, options=opts)


def full_model_state(model: nn.Module) -> dict:
    """Full model state dict on CPU (rank 0 only under several processes), for saving HF weights."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
