"""torch.distributed glue for ``torchrun``: NCCL on GPU, gloo on CPU; no-ops in a single process."""
from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def setup() -> tuple[int, int]:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``); return ``(rank, world_size)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("SPKID_BACKEND") != "gloo" else "gloo"
        tdist.init_process_group(backend)
    return tdist.get_rank(), tdist.get_world_size()


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def device_for_rank(device: torch.device, rank: int) -> torch.device:
    """One GPU per rank (``LOCAL_RANK``); CPU stays CPU."""
    if device.type == "cuda" and active():
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def broadcast_float(value: float) -> float:
    """Rank 0's value on every rank (keeps the time-based schedule and the stop decision in lockstep)."""
    if not active():
        return value
    dev = "cuda" if tdist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=dev)
    tdist.broadcast(t, 0)
    return float(t)


def barrier_if(cond: bool) -> None:
    if cond and active():
        tdist.barrier()


def teardown() -> None:
    if active():
        tdist.destroy_process_group()
