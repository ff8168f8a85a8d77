"""Wall time of the default grid: runs `dvc repro` and splits every stage into start-up, compute and the rest.

Each stage's time is the gap between DVC's "Running stage" lines (the last one ends when dvc exits), so it
includes DVC's own hashing and lock writing. Inside it, the stage prints `timing: {json}` lines
(tood.engine.runtime.print_timing):
  train     startup_s      process start -> first training step (imports, MLflow set-up, model, data cache);
                           startup_cpu_s: the process's CPU seconds by then
            train_steps_s  time inside train_step: the training compute
  evaluate  startup_s      process start -> first inference batch
            inference_s    run_inference (forward + post-processing + alignment stats)
            cocoeval_s     pycocotools COCOeval
compute = train_steps_s, or inference_s + cocoeval_s; rest = stage - startup - compute (DVC before and
after the process, checkpoints, MLflow logging, process exit). Under `executor.local` a stage's runs may
overlap: their timing lines are relayed by the stage, compute sums the runs' step time and can then exceed
the stage's wall time (compare wall times; bench/RESULTS.md §7). Stages DVC skips as unchanged take ~0 s;
pass --force to time a from-scratch run. The run is the real pipeline: it rewrites dvc.lock and reports/.

    .venv/bin/python -m bench.grid_time [--force] [--json PATH] [TARGET ...]   (repo root; nothing else running)
    .venv/bin/python -m bench.grid_time --force --single-item train_tood evaluate_tood   # one variant's stages
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

STAGE_LINE = re.compile(r"Running stage '([^']+)'")
TIMING_LINE = re.compile(r"^timing: (\{.*\})\s*$")
SUMMARY_LINE = re.compile(r'^(\{"variant".*"train_time_s".*\})\s*$')  # train_variant's per-seed summary


def run_repro(
    force: bool,
    targets: list[str],
    single_item: bool = False,
    *,
    cwd: Path | None = None,
    env: dict | None = None,
    timeout_s: float | None = None,
) -> tuple[float, list[dict]]:
    """(total seconds, [{"stage", "seconds", timing keys...}, ...] in run order); raises if dvc fails.

    cwd: the repo to run in (default: this one); env: the environment (default: this process's);
    timeout_s: stop dvc and its stage processes (one process group) after that many seconds."""
    flags = [*(["--force"] if force else []), *(["--single-item"] if single_item else [])]
    cmd = [sys.executable, "-m", "dvc", "repro", *flags, *targets]
    # dvc.yaml's commands say `python`: make it this interpreter's environment (the project's .venv) even
    # when the script was started as .venv/bin/python without activating it.
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    start = time.perf_counter()
    stages: list[dict] = []
    tail: list[str] = []
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, "env": env, "cwd": cwd}
    with subprocess.Popen(cmd, **popen, start_new_session=timeout_s is not None) as proc:
        timer = threading.Timer(timeout_s, _kill_group, (proc.pid,)) if timeout_s else None
        if timer is not None:
            timer.start()
        try:
            _read_repro_output(proc, start, stages, tail)
        finally:
            if timer is not None:
                timer.cancel()
    total = time.perf_counter() - start
    if timeout_s is not None and total >= timeout_s and proc.returncode != 0:
        raise SystemExit(f"dvc repro stopped after {timeout_s:.0f} s:\n{''.join(tail)}")
    if proc.returncode != 0:
        raise SystemExit(f"dvc repro failed (exit {proc.returncode}):\n{''.join(tail)}")
    ends = [s["start"] for s in stages[1:]] + [start + total]
    for stage, end in zip(stages, ends):
        stage["seconds"] = end - stage.pop("start")
    return total, stages


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.killpg(pid, signal.SIGKILL)


def _read_repro_output(proc: subprocess.Popen, start: float, stages: list[dict], tail: list[str]) -> None:
    """Follow dvc's output: a new entry in `stages` per stage it runs, its timing lines added to it."""
    for line in proc.stdout:
        tail[:] = (tail + [line])[-40:]
        if match := STAGE_LINE.search(line):
            stages.append({"stage": match.group(1), "start": time.perf_counter()})
            print(f"[{stages[-1]['start'] - start:7.1f} s] {match.group(1)}", flush=True)
        elif (match := TIMING_LINE.match(line)) and stages:
            add_timing(stages[-1], json.loads(match.group(1)))
        elif (match := SUMMARY_LINE.match(line)) and stages:  # code before timing lines: epochs only
            add_timing(stages[-1], {"train_time_s": json.loads(match.group(1))["train_time_s"]})


def add_timing(stage: dict, figures: dict) -> None:
    """Sum a stage's timing lines (one per seed); start-up is the first seed's (the first to start)."""
    for key, value in figures.items():
        if key.startswith("startup"):
            stage.setdefault(key, value)
        else:
            stage[key] = stage.get(key, 0.0) + value


def split(stage: dict) -> tuple[float | None, float | None, float | None]:
    """(startup, compute, rest) seconds of a stage; None where it printed no timing (data, tabulate)."""
    startup = stage.get("startup_s")
    if "train_steps_s" in stage:
        compute = stage["train_steps_s"]
    elif "train_time_s" in stage:  # a rev without timing lines: its epochs' time (steps + per-step logging)
        compute = stage["train_time_s"]
    elif "inference_s" in stage:
        compute = stage["inference_s"] + stage.get("cocoeval_s", 0.0)
    else:
        return None, None, None
    return startup, compute, stage["seconds"] - (startup or 0.0) - compute


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def report(total: float, stages: list[dict]) -> dict:
    """The per-stage table (seconds; `startup cpu`: CPU seconds of the start-up) and the compute share."""
    header = ["stage", "total", "startup", "startup cpu", "compute", "rest", "total - compute"]
    print(f"{header[0]:28s}" + "".join(f"{h:>16s}" for h in header[1:]))
    compute_sum = 0.0
    for s in stages:
        startup, compute, rest = split(s)
        compute_sum += compute or 0.0
        overhead = None if compute is None else s["seconds"] - compute
        cells = [s["seconds"], startup, s.get("startup_cpu_s"), compute, rest, overhead]
        print(f"{s['stage']:28s}" + "".join(f"{fmt(c):>16s}" for c in cells))
    groups = {g: [s for s in stages if s["stage"].startswith(g)] for g in ("train", "evaluate")}
    summary = {g: sum(s["seconds"] for s in group) for g, group in groups.items()}
    print(
        f"{'total':28s} {total:8.1f} s  ({total / 60:.1f} min; train {summary['train']:.0f} s, evaluate "
        f"{summary['evaluate']:.0f} s); training + inference compute {compute_sum:.0f} s = "
        f"{100 * compute_sum / total:.1f}% of the wall time"
    )
    return {
        "total_s": total,
        "compute_s": compute_sum,
        "compute_share": compute_sum / total,
        "stages": stages,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="re-run every stage (dvc repro --force)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--single-item", action="store_true", help="only the targets, not their upstream")
    parser.add_argument("targets", nargs="*", help="dvc repro targets (default: the whole pipeline)")
    args = parser.parse_args(argv)
    total, stages = run_repro(args.force, args.targets, args.single_item)
    figures = report(total, stages)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
