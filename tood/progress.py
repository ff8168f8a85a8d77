"""Progress with an ETA for every long loop (pretrain steps, training steps, evaluation batches).

On a terminal it is a tqdm bar. In a log (DVC's output piped to a file, CI, nohup) tqdm's bar is a
carriage-return redraw every 0.1 s, which a log shows as one endless line or not at all, so there it is
one plain line every LOG_INTERVAL_S seconds and one at the end:

    pretrain: 240/1152 steps (21%), 0.92 s/step, elapsed 3m41s, ETA 13m59s, loss 1.32

Issue 18: `pretrain` printed nothing for 17.5 minutes on a CPU without native bf16.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0  # seconds between two log lines when the stream is not a terminal


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    file: TextIO | None = None,
) -> tqdm | LogProgress:
    """A tqdm bar on a terminal, else a LogProgress; both iterate, `update(n)`, `set_postfix` and `close`.

    `total` counts the whole job and `initial` what was done before (a resumed run, or earlier epochs of
    one run), so the ETA is for the job, not the current pass.
    """
    file = file if file is not None else sys.stderr
    if total is None and iterable is not None:
        total = len(iterable)  # type: ignore[arg-type]
    if _is_terminal(file):
        return tqdm(
            iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, file=file,
            dynamic_ncols=True,
        )  # fmt: skip
    return LogProgress(
        iterable, total=total or 0, desc=desc, unit=unit, initial=initial, disable=disable, file=file
    )


def _is_terminal(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False


class LogProgress:
    """tqdm's small interface, writing a whole line every LOG_INTERVAL_S seconds and when closed."""

    def __init__(
        self,
        iterable: Iterable | None,
        *,
        total: int,
        desc: str,
        unit: str,
        initial: int,
        disable: bool,
        file: TextIO,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self.start_n, self.disable, self.file, self.clock = initial, initial, disable, file, clock
        self.postfix = ""
        self.start = self.last_line = clock()
        self.last_line_n = initial  # the count the last line reported

    def __iter__(self) -> Iterator:
        assert self.iterable is not None
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last_line >= LOG_INTERVAL_S:
            self._line()

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in {**(values or {}), **kwargs}.items())

    def close(self) -> None:
        if not self.disable and self.n > self.start_n and self.n != self.last_line_n:
            self._line(final=True)
        self.disable = True  # a second close (iteration's `finally`, then the caller's) writes nothing

    def _line(self, final: bool = False) -> None:
        if self.disable:
            return
        now = self.clock()
        self.last_line, self.last_line_n = now, self.n
        elapsed = now - self.start
        per_item = elapsed / max(self.n - self.start_n, 1)  # this pass's rate: a resume starts afresh
        units = self.unit + ("es" if self.unit.endswith(("s", "ch", "sh", "x")) else "s")
        parts = [f"{self.desc}: {self.n}/{self.total} {units}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        rate = (
            f"{per_item:.2f} s/{self.unit}"
            if per_item >= 1
            else f"{1 / max(per_item, 1e-9):.1f} {self.unit}s/s"
        )
        parts += [rate, f"elapsed {_duration(elapsed)}"]
        if not final or self.n < self.total:
            parts.append(f"ETA {_duration(per_item * max(self.total - self.n, 0))}")
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=self.file, flush=True)


def _duration(seconds: float) -> str:
    """3h02m, 13m59s or 41s."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
