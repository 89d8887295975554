"""Where and how computation runs: the device, mixed precision, denormal flushing."""
from __future__ import annotations

import contextlib
import threading

import torch

from spkid.errors import SpkidError

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
