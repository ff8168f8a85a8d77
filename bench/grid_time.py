"""Wall time of the default grid: runs `dvc repro` and times the whole run and every stage.

Each stage's time is the gap between DVC's "Running stage" lines (the last one ends when dvc exits), so it
includes DVC's own hashing and lock writing. Stages DVC skips as unchanged take ~0 s; pass --force to time
a from-scratch run of every stage. The run is the real pipeline: it rewrites dvc.lock and reports/.

    .venv/bin/python -m bench.grid_time [--force] [--json PATH]       (repo root; nothing else CPU-heavy)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def run_repro(force: bool) -> tuple[float, list[tuple[str, float]]]:
    """(total seconds, [(stage, seconds), ...] in run order); raises if dvc fails."""
    cmd = [sys.executable, "-m", "dvc", "repro", *(["--force"] if force else [])]
    # dvc.yaml's commands say `python`: make it this interpreter's environment (the project's .venv) even
    # when the script was started as .venv/bin/python without activating it.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            match = STAGE_LINE.search(line)
            if match:
                marks.append((match.group(1), time.perf_counter()))
                print(f"[{marks[-1][1] - start:7.1f} s] {match.group(1)}", flush=True)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dvc repro failed (exit {proc.returncode}):\n{''.join(tail)}")
    ends = [t for _, t in marks[1:]] + [start + total]
    return total, [(name, end - begin) for (name, begin), end in zip(marks, ends)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="re-run every stage (dvc repro --force)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    total, stages = run_repro(args.force)
    for name, seconds in stages:
        print(f"{name:28s} {seconds:8.1f} s")
    train = sum(s for n, s in stages if n.startswith("train"))
    evaluate = sum(s for n, s in stages if n.startswith("evaluate"))
    print(
        f"{'total':28s} {total:8.1f} s  ({total / 60:.1f} min; train {train:.0f} s, evaluate {evaluate:.0f} s)"
    )
    if args.json:
        args.json.write_text(json.dumps({"total_s": total, "stages": dict(stages)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
