"""Where and how computation runs: the device, mixed precision, denormal flushing, CPU threads.

Threads: on a CPU that other programs share, more OpenMP threads than free cores is the worst case. Every
parallel region of a step ends at a barrier that waits for the slowest thread, and a thread the kernel has
descheduled for a busy core holds the barrier for a whole scheduler slice (milliseconds), hundreds of times a
step. Worse, libgomp (torch's OpenMP) lets a waiting thread spin for a while (``GOMP_SPINCOUNT``, by default
300,000 rounds, milliseconds) before it sleeps, so idle threads burn the cores that the busy ones and the
neighbours need (``docs/scaling.md``: a ``demo`` step at 2 threads beside two CPU-bound programs took 2.9 s
spinning). Not spinning at all (``OMP_WAIT_POLICY=PASSIVE``) fixed that but made every parallel region wake its
threads from sleep: alone, a ``demo`` step took 0.080 s instead of 0.046 s and diarization ran at 88x real time
instead of 113x. A short spin, ``SPIN_COUNT`` rounds (about 0.2 ms), keeps the threads awake between the regions
of one step and lets them sleep once a neighbour holds the core: faster than both, alone and beside two
CPU-bound programs (``docs/scaling.md``). So importing this module sets ``GOMP_SPINCOUNT`` unless the user chose
a wait policy or a spin count (libgomp reads them once, when torch loads it: ``spkid`` imports this module before
torch), and ``resolve_threads(0)`` counts the cores that are actually free (the affinity mask, minus what
``/proc/stat`` and the load average show busy).
"""
from __future__ import annotations

import os

SPIN_COUNT = "20000"      # rounds an OpenMP thread spins at a barrier before it sleeps (libgomp: ~100,000 per ms)


def openmp_env(env) -> None:
    """Set ``GOMP_SPINCOUNT`` in ``env`` (a mapping) unless a wait policy or spin count is already chosen there."""
    if "OMP_WAIT_POLICY" not in env:
        env.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


openmp_env(os.environ)     # before torch loads libgomp; see the module doc

import contextlib  # noqa: E402
import math  # noqa: E402
import numbers  # noqa: E402
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


def _busy_jiffies(cpus: list[int]) -> tuple[int, int] | None:
    """``(busy, total)`` jiffies summed over ``cpus`` since boot; None where ``/proc/stat`` is unreadable."""
    times = _cpu_times(cpus)
    if times is None:
        return None
    return sum(t - i for i, t in times.values()), sum(t for _, t in times.values())


class BusyMeter:
    """Cores that OTHER programs keep busy between two readings: the machine's busy time over the interval minus
    this process's own CPU time (all its threads), so a run never counts itself. ``read()`` returns the cores busy
    since the previous reading (None on the first, or where ``/proc/stat`` is unreadable)."""

    def __init__(self):
        self.cpus = allowed_cpus()
        self._last = self._now()

    def _now(self):
        j = _busy_jiffies(self.cpus)
        return None if j is None else (j, time.process_time(), time.monotonic())

    def read(self) -> float | None:
        now, last = self._now(), self._last
        self._last = now
        if now is None or last is None:
            return None
        (busy1, total1), own1, _ = now
        (busy0, total0), own0, _ = last
        if total1 <= total0:
            return None
        wall_cores = (total1 - total0) / len(self.cpus)            # jiffies of one core over the interval
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        others = (busy1 - busy0) - (own1 - own0) * hz
        return min(float(len(self.cpus)), max(0.0, others / wall_cores))


def busy_cores(sample_s: float = 0.5) -> float:
    """Cores of the affinity mask that other work keeps busy NOW: the utilisation over the next ``sample_s``
    seconds (``/proc/stat``, minus this process's own CPU time). Not the load average: it remembers the last
    minute, so the run that has just ended would still count (a benchmark's next run would train on one thread of
    two free cores). Where ``/proc/stat`` is unreadable (not Linux), the 1-minute load average is the estimate."""
    cpus = allowed_cpus()
    meter = BusyMeter()
    if sample_s > 0:
        time.sleep(sample_s)
        now = meter.read()
        if now is not None:
            return now
    try:
        load = os.getloadavg()[0] * len(cpus) / (os.cpu_count() or len(cpus))
    except (OSError, AttributeError):                        # not available (Windows)
        load = 0.0
    return min(float(len(cpus)), load)


def free_cores(sample_s: float = 0.5) -> int:
    """Whole cores nobody else is using (at least 1): the affinity mask minus :func:`busy_cores` (``threads_for``)."""
    return threads_for(len(allowed_cpus()), busy_cores(sample_s))


def threads_for(n_cpus: int, others: float) -> int:
    """Threads for ``n_cpus`` cores of which other programs keep ``others`` busy: a core counts as taken once a
    quarter of it is busy. Erring low is cheap, erring high is not: on this 2-core machine a bf16 TDNN step took
    0.25 s on one thread and 4.1 s on two beside one other CPU-bound program (every OpenMP barrier waits for the
    descheduled thread; docs/scaling.md)."""
    return max(1, math.floor(n_cpus - others + 0.25))


def check_threads(threads) -> None:
    """``SpkidError`` unless ``threads`` is a whole number >= 0 (0: auto)."""
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):     # numpy's integers too
        raise SpkidError(f"threads must be a whole number >= 0 (0 = auto), got {threads!r}")
    if threads < 0:
        raise SpkidError(f"threads must be >= 0 (0 = auto), got {threads}")


def resolve_threads(threads: int = 0) -> int:
    """``threads > 0``: itself. ``0`` (auto): ``OMP_NUM_THREADS`` when set (a launcher or the user chose),
    else :func:`free_cores`."""
    check_threads(threads)
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


class ThreadGovernor:
    """A long run's CPU threads, revisited: every ``every_s`` seconds of training, torch's intra-op threads are
    set to the cores other programs left free over that interval (``BusyMeter``), so a run started beside a
    benchmark takes the second core when the benchmark ends, and gives it back when another job starts. Inactive
    (``step()`` does nothing) when the user fixed the threads (``train.threads > 0`` or ``OMP_NUM_THREADS``).
    ``changes`` records ``(elapsed_s, threads)`` for the run's log."""

    def __init__(self, threads: int, every_s: float = 60.0):
        env = os.environ.get("OMP_NUM_THREADS", "")
        self.active = threads == 0 and not (env.isdigit() and int(env) > 0)
        self.every_s = every_s
        self.meter = BusyMeter() if self.active else None
        self._t0 = time.monotonic()
        self.changes: list[tuple[float, int]] = []

    def step(self, elapsed: float) -> int | None:
        """Call once per training step; returns the new thread count when it changed, else None."""
        if not self.active or time.monotonic() - self._t0 < self.every_s:
            return None
        self._t0 = time.monotonic()
        others = self.meter.read()
        if others is None:
            return None
        n = threads_for(len(self.meter.cpus), others)
        if n == torch.get_num_threads():
            return None
        torch.set_num_threads(n)
        self.changes.append((round(elapsed, 1), n))
        return n
