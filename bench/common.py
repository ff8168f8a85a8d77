"""Timing helpers shared by bench/step_breakdown.py and bench/eval_time.py: device choice, a phase clock
that synchronises CUDA before every timestamp, and the printed table."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # as tood.train.train_step


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


def write_json(path: Path | None, figures: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {path}")
