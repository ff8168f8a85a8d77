"""Timing helpers shared by bench/step_breakdown.py and bench/eval_time.py: device choice, a phase clock
that synchronises CUDA before every timestamp, and the printed table."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch


def choose_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so a timestamp measures the work and not its launch (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """Seconds per named phase: `start()`, then `lap(name)` at the end of each phase (adds to `name`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self._last = 0.0

    def start(self) -> None:
        sync(self.device)
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Left-aligned first column, right-aligned figures."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, ["-" * w for w in widths], *rows]:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        print("  ".join(cells))


def setting_line(device: torch.device) -> str:
    threads = torch.get_num_threads()
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return f"device={device.type}{gpu} threads={threads} torch={torch.__version__}"


# /proc/cpuinfo flags that decide CPU precision and kernels: bf16 is native only with avx512_bf16 / amx_bf16
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_summary() -> dict:
    """CPU model, the CPU_FLAGS it has, torch's kernel capability and the `auto` precision rule's input."""
    from tood.engine.runtime import cpu_has_native_bf16

    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {
        "model": model,
        "flags": [f for f in CPU_FLAGS if f in flags],
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
        "logical_cpus": os.cpu_count(),
    }


def write_json(path: Path | None, figures: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {path}")


def verdict(checks: list[tuple[str, bool]]) -> dict:
    """A bench.gpu_check section's result: ok when every (description, passed) check passed."""
    return {"ok": all(ok for _, ok in checks), "checks": [{"what": w, "ok": bool(ok)} for w, ok in checks]}
