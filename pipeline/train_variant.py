"""Stage `train@<variant>`: train every seed of one params.yaml variant into runs/<variant>/seed<k>/.

    python -m pipeline.train_variant --variant tood --out runs/tood --work-dir runs/.work \
        --curves reports/curves/tood.csv
    torchrun --nproc-per-node 2 -m pipeline.train_variant --variant tood --out runs/tood   # DDP, in-process

Each (variant, seed) run is its own `python -m pipeline.train_run` process, started by params.yaml's
`executor` (tood.engine.executor): `local` runs as many at once as fit on this machine, each logging to
<work-dir>/logs/<variant>-seed<k>.log (a variant with one seed trains in this process, which is then that
run's own); `slurm` submits one job array (one task per seed). The stage waits for every run and exits 1
naming each failed run, its log and the log's tail; the other runs are kept.
Under torchrun the seeds train one after the other in this process (every rank runs each one).

Re-running resumes each seed from its last.pt; finished seeds are skipped (tood.engine.train.train). With
--work-dir (what dvc.yaml passes) each seed trains in its own folder there, keyed by its settings, and
is then copied into --out, which DVC may delete before a re-run (tood.engine.train.train_published).
--curves writes the seed-mean loss curve (steps every seed logged) for `dvc plots`.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from pipeline import train_run
from pipeline.cli import prog, run
from tood.config import load_executor_config, load_params, resolve_repo_path, resolve_run_config
from tood.engine.executor import Run, RunsFailed, local_plan, run_local, run_slurm, usable_cores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog(__spec__), description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--variant", required=True, help="variant name in params.yaml (or 'tood')")
    parser.add_argument("--out", type=Path, required=True, help="run folder, e.g. runs/<variant>")
    parser.add_argument("--data-root", type=Path, default=None, help="overrides data.root of params.yaml")
    parser.add_argument("--curves", type=Path, default=None, help="seed-mean losses.csv to write (DVC plot)")
    parser.add_argument(
        "--work-dir", type=Path, default=None,
        help="train each seed in <work-dir>/<variant>-seed<k>-<key> (relative to $DVC_ROOT), then copy "
        "it into --out; default: train in --out itself",
    )  # fmt: skip
    args = parser.parse_args(argv)

    params = load_params(args.params)
    cfg = resolve_run_config(params, args.variant, where=str(args.params))
    executor = load_executor_config(params, where=str(args.params))

    def run_argv(seed: int, threads: int) -> tuple[str, ...]:
        argv = ["--params", str(args.params), "--variant", cfg.variant, "--seed", str(seed)]
        argv += ["--out", str(args.out / f"seed{seed}"), "--threads", str(threads)]
        argv += ["--work-dir", str(args.work_dir)] if args.work_dir is not None else []
        return tuple(argv + (["--data-root", str(args.data_root)] if args.data_root is not None else []))

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: every rank trains each seed here
        import torch
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")  # once for all seeds
        try:
            for seed in cfg.seeds:
                train_run.main(list(run_argv(seed, cfg.train.num_threads)))
        finally:
            dist.destroy_process_group()
        if int(os.environ.get("RANK", "0")) == 0:
            _write_curves(args, cfg.seeds)
        return 0

    logs = resolve_repo_path(args.work_dir if args.work_dir is not None else args.out)
    try:
        if executor.kind == "local":
            cores = usable_cores()
            jobs, threads = local_plan(executor.local, len(cfg.seeds), cores, cfg.train.num_threads)
            runs = [Run(f"{cfg.variant}-seed{s}", run_argv(s, t), t) for s, t in zip(cfg.seeds, threads)]
            where = f"up to {jobs} at once" if len(runs) > 1 else "in this process"
            print(
                f"executor local: {len(runs)} runs of {cfg.variant} on {cores} usable cores, {where}; "
                f"train.num_threads " + ", ".join(f"{r.name} {r.threads}" for r in runs), flush=True,
            )  # fmt: skip
            if len(runs) == 1:  # the stage's process is the run's own: no second start-up
                train_run.main(list(runs[0].argv))
            else:
                if jobs > 1:
                    _create_experiment()
                run_local(runs, jobs, cores, logs / "logs")
        else:
            # a task's CPUs are shared by its torchrun ranks (one per GPU)
            threads = cfg.train.num_threads or max(
                1, executor.slurm.cpus_per_task // max(1, executor.slurm.gpus_per_run)
            )
            print(f"executor slurm: {len(cfg.seeds)} runs of {cfg.variant}, train.num_threads {threads} each")
            _create_experiment()
            runs = [Run(f"{cfg.variant}-seed{s}", run_argv(s, threads)) for s in cfg.seeds]
            run_slurm(runs, executor.slurm, logs / "slurm", name=f"train_{cfg.variant}")
    except RunsFailed as e:
        print(f"pipeline.train_variant: error: {cfg.variant}: {e}", file=sys.stderr)
        return 1
    _write_curves(args, cfg.seeds)
    return 0


def _create_experiment() -> None:
    """Create the MLflow store and experiment here, once, before runs log to it from several processes at
    once: two processes creating a fresh SQLite store race on its schema migration."""
    from tood.engine import tracking

    tracking.configure_tracking()


def _write_curves(args: argparse.Namespace, seeds) -> None:
    if args.curves is not None:
        write_mean_curve([args.out / f"seed{s}" / "losses.csv" for s in seeds], args.curves)


def write_mean_curve(paths: list[Path], out: Path) -> None:
    """Mean over runs of every loss column of losses.csv, on the steps all runs logged."""
    tables = []
    for path in paths:
        with path.open(newline="") as f:
            tables.append({int(r["step"]): r for r in csv.DictReader(f)})
    steps = sorted(set.intersection(*(set(t) for t in tables)))
    columns = [c for c in next(iter(tables[0].values()), {}) if c != "step"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *columns])
        for step in steps:
            cells = [[t[step][c] for t in tables] for c in columns]
            writer.writerow([step, *(_mean(values) for values in cells)])


def _mean(values: list[str]) -> float | str:
    numbers = [float(v) for v in values if v != ""]
    return sum(numbers) / len(numbers) if numbers else ""


if __name__ == "__main__":
    run(main)
