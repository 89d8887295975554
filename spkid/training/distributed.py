"""torch.distributed glue for ``torchrun``: NCCL on GPU, gloo on CPU; no-ops in a single process.

Two ways in: ``torchrun --standalone --nproc_per_node N -m spkid train ...`` (any launcher that sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``...), or ``spkid train --nproc N ...``, which re-runs the same command line
through ``torch.distributed.run`` (``launch``). Every rank loads the data and draws its own crops
(``CropSampler(rank=...)``), DDP averages the gradients, rank 0 validates, logs and checkpoints.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys

import torch
import torch.distributed as tdist

from spkid.errors import SpkidError


def setup(device: torch.device | None = None) -> tuple[int, int]:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``); return ``(rank, world_size)``.

    The backend follows the training device: NCCL for CUDA, gloo for CPU (``SPKID_BACKEND`` overrides).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not tdist.is_initialized():
        cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
        backend = os.environ.get("SPKID_BACKEND") or ("nccl" if cuda else "gloo")
        tdist.init_process_group(backend)
    return tdist.get_rank(), tdist.get_world_size()


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def device_for_rank(device: torch.device, rank: int) -> torch.device:
    """One GPU per rank (``LOCAL_RANK``); CPU stays CPU."""
    if device.type == "cuda" and active():
        local = int(os.environ.get("LOCAL_RANK", rank))
        if local >= torch.cuda.device_count():
            raise SpkidError(f"rank {rank}: LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s); "
                             "use at most one process per GPU")
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` (which must use every parameter in its forward)."""
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


def all_gather(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects); ``[obj]`` in one process.

    A collective: every rank must call it at the same point (used for the per-rank RNG states in checkpoints).
    """
    if not active():
        return [obj]
    out = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def barrier_if(cond: bool) -> None:
    if cond and active():
        tdist.barrier()


def teardown() -> None:
    """Leave the process group. Call it after dropping the ``wrap``-ped module: DistributedDataParallel's reducer
    holds the group, and a gloo group still alive when the interpreter exits aborts the process now and then
    (``terminate called without an active exception``, SIGABRT, after training finished: 12 of 60 two-rank runs
    with the wrapper kept, 0 of 40 with it dropped and collected first).
    """
    if active():
        gc.collect()
        tdist.destroy_process_group()


# -- launching: ``spkid train --nproc N`` ---------------------------------------------------------------------

def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:            # not Linux
        return os.cpu_count() or 1


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` minus ``--nproc N`` / ``--nproc=N`` (and argparse's abbreviations such as ``--np N``).

    The workers must not see it: torchrun's own parser rejects ``--nproc`` as an ambiguous prefix of
    ``--nproc_per_node`` even after the script name.
    """
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name, eq, _ = arg.partition("=")
        if len(name) >= 3 and "--nproc".startswith(name):
            skip = not eq
            continue
        out.append(arg)
    return out


def launch_command(argv: list[str], nproc: int) -> list[str]:
    """The ``torch.distributed.run`` command that runs ``python -m spkid <argv>`` in ``nproc`` local processes.

    ``--standalone`` runs a private rendezvous on a free localhost port, so parallel runs never collide.
    """
    if nproc < 1:
        raise SpkidError(f"--nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "spkid", *without_nproc(argv)]


def launch_env(nproc: int, env: dict | None = None) -> dict:
    """Environment for the workers: ``OMP_NUM_THREADS`` = free cores // nproc and spkid's short OpenMP spin
    (``runtime.openmp_env``) unless the caller set them.

    (torchrun itself would pin every worker to 1 thread; on a CPU this splits the cores that other programs leave
    free between the ranks, and OpenMP threads sleep soon instead of spinning at barriers: ``spkid.runtime``.)
    """
    from spkid.runtime import free_cores, openmp_env
    env = dict(os.environ if env is None else env)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, free_cores() // nproc))
    openmp_env(env)
    return env


def launch(argv: list[str], nproc: int) -> int:
    """Run ``spkid <argv>`` under torchrun with ``nproc`` processes; return its exit status."""
    if "WORLD_SIZE" in os.environ:
        raise SpkidError("--nproc: already running under torchrun (WORLD_SIZE is set); drop --nproc")
    proc = subprocess.Popen(launch_command(argv, nproc), env=launch_env(nproc))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # torchrun got the same Ctrl-C (one process group) and is stopping the ranks, which save a checkpoint.
        # Wait for it: killing it (as subprocess.run would) orphans the ranks, each in its own session.
        proc.wait()
        raise


def check_nproc(nproc: int) -> None:
    """Under another launcher that passed ``--nproc`` on: it must match the processes started on this node."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if nproc != local_world:
        raise SpkidError(f"--nproc {nproc}: this torchrun started {local_world} process(es) per node; "
                         "drop --nproc when launching with torchrun yourself")
