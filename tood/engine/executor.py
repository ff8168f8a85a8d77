"""Where a train stage's (variant, seed) runs execute: `executor:` in params.yaml (tood.config.ExecutorConfig).

Every run is one `python -m pipeline.train_run ...` process (or torchrun of it), whatever the executor:
    local   as many processes at once as fit on this machine (local_plan), each with its own log file
            <work-dir>/logs/<variant>-seed<k>.log
    slurm   one Slurm job array per stage through submitit (one task per seed), logs in
            <work-dir>/slurm/<job id>/; a preempted or timed-out task is requeued (TrainTask.checkpoint)
            and resumes from its run's last.pt, which is bit-exact on CPU (tood.engine.train)
The stage waits for all of its runs; when any fails it raises RunsFailed naming each failed run, its log
and the log's tail, after the other runs finished (their results are kept and a re-run skips them).

This module does not import torch or MLflow: the stage process only launches and waits (0.06 s of CPU to
import; bench/RESULTS.md §7). A one-seed local stage trains in its own process (pipeline.train_variant).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tood.config import ConfigError, LocalExecutorConfig, SlurmExecutorConfig
from tood.progress import LOG_INTERVAL_S

TAIL_LINES = 30  # of a failed run's log, in the stage's error
RELAYED = ("timing: ", '{"variant"')  # lines of a run's log the stage prints (bench/grid_time.py reads them)
PROGRESS_MARK = ", ETA "  # in tood.progress's lines: what `ProgressRelay` looks for in a running run's log


@dataclass(frozen=True)
class Run:
    """One (variant, seed) run: `python -m pipeline.train_run *argv`."""

    name: str  # e.g. "tood-seed0"
    argv: tuple[str, ...]
    threads: int = 1  # torch intra-op threads: cores it keeps busy (run_local starts runs that fit)


class RunsFailed(RuntimeError):
    """Some runs of a stage failed; the message names each, with its log path and tail."""


def usable_cores() -> int:
    """CPUs this process may run on (a Slurm allocation or `taskset` narrows os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_plan(
    cfg: LocalExecutorConfig, runs: int, cores: int, num_threads: int = 0
) -> tuple[int, list[int]]:
    """(runs at once, torch threads of each run) for `runs` runs on `cores` cores.

    auto prefers processes to threads: on our 2-core Xeon two 1-thread runs at once trained 71.3 images/s
    against 52.9 for one 2-thread run (1.35x; bench/RESULTS.md §7), as a small model's intra-op threads
    leave a core idle part of each step. So jobs = min(cores, runs) runs go at once, in waves, with
    cores // jobs threads each, and the last, partial wave of r runs gets cores // r threads each
    (3 seeds on 2 cores: two 1-thread runs, then one 2-thread run). A rule of (runs, cores),
    never a timing: a run's thread count changes its CPU numerics, so the same machine and params.yaml
    always give it the same one. An explicit threads_per_run or train.num_threads > 0 is every run's.
    """
    threads = cfg.threads_per_run
    if num_threads > 0:
        if threads not in ("auto", num_threads):
            raise ConfigError(
                f"executor.local.threads_per_run: {threads} contradicts train.num_threads: {num_threads}; "
                "set one of them (train.num_threads: 0 leaves it to the executor)"
            )
        threads = num_threads
    if threads != "auto":
        jobs = cfg.jobs if cfg.jobs != "auto" else max(1, cores // threads)
        return max(1, min(jobs, runs)), [threads] * runs
    jobs = max(1, min(cfg.jobs if cfg.jobs != "auto" else cores, runs))
    last = runs % jobs
    full = max(1, cores // jobs)
    return jobs, [full] * (runs - last) + [max(full, cores // max(last, 1))] * last


def run_command(argv: Sequence[str], gpus: int = 0) -> list[str]:
    """The command of one run: the entry point, under torchrun with one process per GPU when gpus > 1."""
    if gpus > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}"]
        return [sys.executable, *launcher, "-m", "pipeline.train_run", *argv]
    return [sys.executable, "-m", "pipeline.train_run", *argv]


def run_local(
    runs: Sequence[Run], jobs: int, cores: int, logs: Path, command=run_command, poll_s: float = 0.2
) -> None:
    """Run every run as its own process (`command(run.argv)`), in order, at most `jobs` at once and only as
    many as their threads fit in `cores` (one always runs), stdout+stderr to logs/<name>.log; raises
    RunsFailed once all have ended."""
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(runs), {}, []
    progress = ProgressRelay()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that `finally` stops the runs
    try:
        while pending or running:
            busy = sum(run.threads for run, _, _ in running.values())
            while pending and len(running) < jobs and (not running or busy + pending[0].threads <= cores):
                run = pending.pop(0)
                log = logs / (run.name.replace(" ", "-") + ".log")
                with log.open("w") as fh:  # the child holds its own copy of the descriptor
                    proc = subprocess.Popen(command(run.argv), stdout=fh, stderr=subprocess.STDOUT)
                print(f"started {run.name} (pid {proc.pid}); log: {log}", flush=True)
                running[proc] = (run, log, time.perf_counter())
                busy += run.threads
            for proc in [p for p in running if p.poll() is not None]:
                run, log, start = running.pop(proc)
                took = time.perf_counter() - start
                if proc.returncode == 0:
                    print(f"finished {run.name} in {took:.1f} s", flush=True)
                    relay(log)
                else:
                    failed.append((run.name, f"exit code {proc.returncode}", log))
            progress.relay({run.name: log for run, log, _ in running.values()})
            time.sleep(poll_s)
    finally:  # Ctrl-C / SIGTERM to the stage: stop the runs it started (each resumes from last.pt later)
        signal.signal(signal.SIGTERM, previous)
        for proc in running:
            proc.terminate()
        for proc in running:
            proc.wait()
    if failed:
        raise RunsFailed(failure_message(failed, len(runs)))


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def relay(log: Path) -> None:
    """Print a finished run's summary and timing lines (bench/grid_time.py reads them off the stage)."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(RELAYED):
            print(line, flush=True)


class ProgressRelay:
    """Every LOG_INTERVAL_S, the newest progress line (tood.progress, with its ETA) of each running run's log,
    prefixed with the run's name: the runs write to their logs, so without it a train stage is silent until
    its first run ends (issue 18: every long stage shows progress)."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock=time.monotonic):
        self.interval_s, self.clock = interval_s, clock
        self.last = clock()

    def relay(self, logs: dict[str, Path]) -> None:
        if self.clock() - self.last < self.interval_s:
            return
        self.last = self.clock()
        for name, log in logs.items():
            line = latest_progress(log)
            if line is not None:
                print(f"{name}: {line}", flush=True)


def latest_progress(log: Path, window: int = 8192) -> str | None:
    """The last progress line in the final `window` bytes of `log`, or None."""
    try:
        with log.open("rb") as fh:
            fh.seek(max(fh.seek(0, 2) - window, 0))
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    lines = [line for line in text.replace("\r", "\n").splitlines() if PROGRESS_MARK in line]
    return lines[-1].strip() if lines else None


def failure_message(failed: list[tuple[str, str, Path]], total: int, what: str = "runs") -> str:
    kept = "; the others finished and are kept (a re-run skips them)" if len(failed) < total else ""
    parts = [f"{len(failed)} of {total} {what} failed{kept}"]
    for name, why, log in failed:
        parts.append(f"--- {name}: {why}; log: {log}\n{tail(log)}")
    return "\n".join(parts)


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:]) or "(the log is empty)"


# ---------------------------------------------------------------------------------------------------
# Slurm through submitit (https://github.com/facebookincubator/submitit), as DETR's run_with_submitit.py


class TrainTask:
    """What one Slurm task runs: the run's command, in a child process (as `local` does).

    submitit calls `checkpoint` when Slurm signals a preemption or the time limit; returning the same call
    requeues the task, and the run resumes from its last.pt in the keyed work folder (tood.engine.train).
    """

    def __init__(self, gpus: int = 0):
        self.gpus = gpus

    def __call__(self, argv: Sequence[str]) -> int:
        proc = subprocess.run(run_command(argv, self.gpus), check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"pipeline.train_run exited with code {proc.returncode}")
        return 0

    def checkpoint(self, argv: Sequence[str]):
        import submitit

        return submitit.helpers.DelayedSubmission(TrainTask(self.gpus), argv)


# Slurm job states after which a job that wrote no result will not write one
# (https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES), and GONE: unknown to Slurm by now
FINAL_STATES = {
    "BOOT_FAIL",
    "CANCELLED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "TIMEOUT",
    "GONE",
}


def slurm_parameters(cfg: SlurmExecutorConfig, name: str) -> dict:
    """submitit AutoExecutor parameters of one stage's job array."""
    params = {
        "name": name,
        "timeout_min": cfg.time_min,
        "nodes": 1,
        "tasks_per_node": 1,  # one task per run; torchrun inside it starts one process per GPU
        "cpus_per_task": cfg.cpus_per_task,
        "slurm_additional_parameters": dict(option.split("=", 1) for option in cfg.sbatch),
    }
    if cfg.gpus_per_run:
        params["gpus_per_node"] = cfg.gpus_per_run
    if cfg.partition:
        params["slurm_partition"] = cfg.partition
    if cfg.mem_gb:
        params["mem_gb"] = cfg.mem_gb
    return params


def run_slurm(runs: Sequence[Run], cfg: SlurmExecutorConfig, folder: Path, name: str, poll_s: float = 2.0):
    """Submit `runs` as one job array, wait for every task; raises RunsFailed naming each failed task."""
    import submitit

    executor = submitit.AutoExecutor(
        folder=folder / "%j", cluster="slurm", slurm_max_num_timeout=cfg.max_requeues
    )
    executor.update_parameters(**slurm_parameters(cfg, name))
    jobs = executor.map_array(TrainTask(cfg.gpus_per_run), [list(r.argv) for r in runs])
    for run, job in zip(runs, jobs):
        print(f"submitted {run.name}: Slurm job {job.job_id}; log: {job.paths.stdout}", flush=True)
    failed, waiting = [], dict(zip(jobs, runs))
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        _wait_slurm(waiting, failed, poll_s)
    except BaseException:  # Ctrl-C / SIGTERM to the stage: cancel its tasks (they resume from last.pt later)
        for job in waiting:
            job.cancel(check=False)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed:
        raise RunsFailed(failure_message(failed, len(runs), "Slurm tasks"))


def _wait_slurm(waiting: dict, failed: list, poll_s: float) -> None:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    progress = ProgressRelay()
    while waiting:
        progress.relay({run.name: job.paths.stderr for job, run in waiting.items()})
        for job in list(waiting):
            state = slurm_state(job)
            if not (job.paths.result_pickle.exists() or state in FINAL_STATES):
                continue
            run = waiting.pop(job)
            try:
                job.result()
            except (FailedJobError, UncompletedJobError) as e:  # raised in the task, or it never ended
                why = f"Slurm job {job.job_id} {state}: {str(e).splitlines()[0]} (stdout: {job.paths.stdout})"
                failed.append((run.name, why, job.paths.stderr))
            else:
                print(f"finished {run.name} (Slurm job {job.job_id})", flush=True)
                relay(job.paths.stdout)
        time.sleep(poll_s)


def slurm_state(job) -> str:
    """A job's state: submitit's (from sacct), else `scontrol show job`, which needs no accounting database
    (a one-node Slurm without slurmdbd has no sacct) and knows a job for MinJobAge (300 s) after it ends."""
    state = job.state
    if state != "UNKNOWN":
        return state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    proc = subprocess.run(
        ["scontrol", "show", "job", job.job_id], capture_output=True, text=True, check=False
    )
    for field in proc.stdout.split():
        if field.startswith("JobState="):
            return field.removeprefix("JobState=")
    if "Invalid job id" in proc.stderr:  # ended more than MinJobAge ago, without writing a result
        return "GONE"
    return "UNKNOWN"
