"""Where a run executes: device and rank, the precision `train.amp` resolves to, seeding, and the stage
timing lines that bench/grid_time.py reads."""

from __future__ import annotations

import json
import os
import platform
import random
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def dist_info() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """e.g. "cpu (AVX512, native bf16: yes)" or "cuda:0 (NVIDIA H200)": what the precision choice read."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    native = "yes" if cpu_has_native_bf16() else "no"
    return f"{device.type} ({torch.backends.cpu.get_cpu_capability()}, native bf16: {native})"


def device_name(device: torch.device) -> str:
    """The hardware a result was measured on, e.g. "Intel(R) Xeon(R) Platinum 8480+" (the CPU's model name
    from /proc/cpuinfo, as lscpu prints it) or "NVIDIA H200"; issue 16: precision and CPU are part of
    the result (bf16 with and fp32 without native support move AP by ~1)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


# autocast dtype of each resolved `train.amp` (None: no autocast)
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware: AVX512-BF16 (AMD Zen 4+, Intel Cooper Lake) or AMX
    (Intel Sapphire Rapids+), with oneDNN to use it.

    Without it oneDNN emulates bf16 through fp32 conversions: a 2-core Xeon with AVX-512 but no bf16 ran
    the default step 2.9x slower in bf16 than in fp32 (issue 13), while an AMD EPYC with avx512_bf16 ran it
    faster (bench/RESULTS.md §5). torch.backends.cpu.get_cpu_capability() says "AVX512" on both.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the getattr
    native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return native and torch.backends.mkldnn.is_available()


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision `train.amp` means on `device`: "auto" is bf16 on CUDA (where supported) and on CPUs
    with native bf16 (cpu_has_native_bf16), else fp32; the other values are themselves.

    Decided by capability, never by a start-up timing, so one machine always makes the same choice and
    its runs stay bit-reproducible; `python -m bench.ab --amp-check` measures that the choice is faster.
    """
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def run_precision(amp: str, device: torch.device, ckpt: dict | None) -> str:
    """resolve_amp, except that a resumed run keeps the precision its checkpoint was trained in: the same
    `auto` resolves differently on another machine, and a run must not switch precision half-way."""
    resolved = resolve_amp(amp, device)
    if ckpt is None or ckpt.get("amp", resolved) == resolved:
        return resolved
    warnings.warn(
        f"train.amp: {amp} resolves to {resolved} on this machine, but the checkpoint being resumed was "
        f"trained in {ckpt['amp']}; continuing in {ckpt['amp']}"
    )
    return ckpt["amp"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def setup_determinism(seed: int, num_threads: int) -> None:
    """Seed every RNG. CPU kernels are deterministic at a fixed thread count, so a CPU run (and its resume)
    is bit-reproducible without torch.use_deterministic_algorithms, a process-wide switch we leave to
    the caller; on GPU, cuDNN/atomics make runs close but not bit-identical."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    seed_everything(seed)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc: start time in clock ticks after boot); None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()  # fields 3.. of proc(5)
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        return uptime_s - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


def print_timing(**seconds: float | None) -> None:
    """One `timing: {json}` stdout line of stage-level seconds: bench/grid_time.py splits each DVC stage's
    wall time into start-up, compute and the rest with them. *_cpu_s: this process's CPU time (all threads)
    so far, the steadier figure on a shared machine, where wall time is mostly waiting for a core."""
    print("timing: " + json.dumps({k: round(v, 3) for k, v in seconds.items() if v is not None}), flush=True)
