"""Where and how computation runs: the device, mixed precision, denormal flushing, CPU threads.

Threads: on a CPU that other programs share, more OpenMP threads than free cores is the worst case. Every
parallel region of a step ends at a barrier that waits for the slowest thread, and a thread the kernel has
descheduled for a busy core holds the barrier for a whole scheduler slice (milliseconds), hundreds of times a
step. Worse, libgomp (torch's OpenMP) lets a waiting thread spin for a while (``GOMP_SPINCOUNT``, milliseconds)
before it sleeps, so idle threads burn the cores that the busy ones and the neighbours need (``docs/scaling.md``:
a ``demo`` step at 2 threads beside two CPU-bound programs took 2.9 s spinning, 0.19 s sleeping). So: importing this
module sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy (libgomp reads it once, when torch loads
it: ``spkid`` imports this module before torch), and ``resolve_threads(0)`` counts the cores that are actually
free (the affinity mask, minus what ``/proc/stat`` and the load average show busy).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")        # before torch loads libgomp; see the module doc

import contextlib  # noqa: E402
import math  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from spkid.errors import SpkidError  # noqa: E402

_lock = threading.Lock()
_depth = 0


@contextlib.contextmanager
def flush_denormal():
    """Flush denormal floats to zero inside the block; nested blocks keep it on until the outermost one ends.

    Tiny gradients and optimizer moments become denormal floats, which x86 CPUs process 20-60x slower (measured:
    0.96 s -> 0.05 s per training step of the demo model); flushing them to zero changes no result that matters.
    """
    global _depth
    with _lock:
        if _depth == 0:
            torch.set_flush_denormal(True)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.set_flush_denormal(False)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` does bfloat16 arithmetic in hardware (Ampere+ GPUs; CPUs with AVX512-BF16 or AMX).

    Elsewhere bf16 autocast is emulated and slower than float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")   # private probes; absent -> False
        return any(getattr(cpu, name, lambda: False)() for name in checks)
    return False


def resolve_amp(amp: str, device: torch.device) -> str:
    """``train.amp`` to what runs: ``auto`` is ``bf16`` where :func:`native_bf16`, else ``none``."""
    if amp == "auto":
        return "bf16" if native_bf16(device) else "none"
    return amp


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a one-line error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpkidError(f"--device {name}: CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise SpkidError(f"unknown device {name!r}; choose auto, cpu or cuda")
    try:
        return torch.device(name)
    except RuntimeError:
        raise SpkidError(f"unknown device {name!r}; choose auto, cpu or cuda[:N]") from None


# -- CPU threads ----------------------------------------------------------------------------------------------

def allowed_cpus() -> list[int]:
    """CPUs this process may run on (the affinity mask, e.g. ``taskset`` or a container's cpuset)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:                                   # not Linux
        return list(range(os.cpu_count() or 1))


def _cpu_times(cpus: list[int]) -> dict[int, tuple[int, int]] | None:
    """``{cpu: (idle jiffies incl. iowait, total jiffies)}`` from ``/proc/stat``; None where unreadable."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    out = {}
    wanted = set(cpus)
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in wanted:
            v = [int(x) for x in fields[:8]]                 # user nice system idle iowait irq softirq steal
            out[int(name[3:])] = (v[3] + v[4], sum(v))
    return out or None


def busy_cores(sample_s: float = 0.25) -> float:
    """Cores of the affinity mask that other work keeps busy: the larger of the utilisation over the next
    ``sample_s`` seconds (``/proc/stat``, this process idle meanwhile) and the 1-minute load average (scaled to
    the mask). The load average lags but remembers bursts; the sample sees a load that has just started."""
    cpus = allowed_cpus()
    now = 0.0
    before = _cpu_times(cpus)
    if before is not None and sample_s > 0:
        time.sleep(sample_s)
        after = _cpu_times(cpus) or {}
        for c, (idle0, total0) in before.items():
            idle1, total1 = after.get(c, (idle0, total0))
            if total1 > total0:
                now += 1.0 - (idle1 - idle0) / (total1 - total0)
    try:
        load = os.getloadavg()[0] * len(cpus) / (os.cpu_count() or len(cpus))
    except (OSError, AttributeError):                        # not available (Windows)
        load = 0.0
    return min(float(len(cpus)), max(now, load))


def free_cores(sample_s: float = 0.25) -> int:
    """Whole cores nobody else is using (at least 1): the affinity mask minus :func:`busy_cores`, rounded."""
    return max(1, math.floor(len(allowed_cpus()) - busy_cores(sample_s) + 0.5))


def resolve_threads(threads: int = 0) -> int:
    """``threads > 0``: itself. ``0`` (auto): ``OMP_NUM_THREADS`` when set (a launcher or the user chose),
    else :func:`free_cores`."""
    if threads < 0:
        raise SpkidError(f"threads must be >= 0 (0 = auto), got {threads}")
    if threads > 0:
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return free_cores()


def use_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads to :func:`resolve_threads` ``(threads)``; returns the number set."""
    n = resolve_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
