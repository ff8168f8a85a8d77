"""The sections of bench/gpu_check.py that run the project's own commands in fresh processes:

quick_profile  `python -m pipeline.profile quick` and `dvc repro` (check_params, data, pretrain, train,
               evaluate, tabulate) in a temporary copy of the working tree, as a user would run them; the
               stages pick CUDA themselves (tood.engine.runtime.pick_device: `pretrain` trains on the CPU by
               design) and `train.amp: auto` resolves to bf16 there. Its tables.md is copied beside the report.
distributed    (1) the collective the losses use, tood.model.losses.reduce_mean, under
               `torchrun --nproc-per-node <visible GPUs>` with the backend pipeline.train_run picks (NCCL
               on CUDA, gloo on CPU); with one GPU that is world size 1. (2) A training run started the
               way a Slurm task starts it (tood.engine.executor.TrainTask in a fresh `python`, which runs
               pipeline.train_run, under torchrun/DDP when more than one GPU is visible), killed (SIGTERM to
               its process group, as a preemption) once its epoch-1 checkpoint is written, then started
               again the same way: it must resume from last.pt, continue the step count and the MLflow run.

`python -m bench.gpu_runs --reduce-worker OUT.json` is the torchrun worker of (1).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from bench.common import verdict
from bench.grid_time import run_repro
from pipeline.profile import sync_tabulate_deps
from tood.config import HEADLINE, load_params, resolve_run_config, variant_names
from tood.data.shapes import generate
from tood.engine.executor import run_command, usable_cores
from tood.engine.runtime import device_name, dist_info, pick_device, resolve_amp
from tood.model.losses import reduce_mean

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"

# `--tiny`: the quick profile shrunk to seconds a stage (tests/test_end_to_end.py's tiny profile)
TINY_QUICK = {
    "pretrain": {"num_train": 48, "num_val": 24, "crop_size": 32, "epochs": 1, "batch_size": 16,
                 "warmup_iters": 1},
    "shapes": {"num_train": 8, "num_val": 4, "image_size": 64, "max_objects": 4},
    "data": {"img_scale": [64, 64]},
    "model": {"fpn_channels": 16, "stacked_convs": 2, "gn_groups": 4},
    "assign": {"warmup_epochs": 1},
    "optim": {"warmup_iters": 2},
    "train": {"epochs": 2, "batch_size": 4, "log_every": 1, "num_threads": 1},
    "eval": {"batch_size": 4},
}  # fmt: skip
TINY_VARIANTS = ()  # the headline alone

# the killed-and-resumed run: the quick profile's model and images, long enough epochs to stop one
RESUME_EPOCHS = 3
RESUME_RUN = {
    "shapes": {"num_train": 256, "num_val": 8},
    "model": {"pretrained": "none"},
    "train": {"epochs": RESUME_EPOCHS, "log_every": 4},
    "eval": {"curve_every_epochs": 0},
}
TINY_RESUME_RUN = {
    "shapes": {"num_train": 16, "num_val": 4, "image_size": 64, "max_objects": 4},
    "data": {"img_scale": [64, 64]},
    "model": {"fpn_channels": 16, "stacked_convs": 2, "gn_groups": 4},
    "train": {"log_every": 1},
}
BATCH_PER_RANK = 4
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]  # as tood.engine.executor's
# what a Slurm task runs (submitit unpickles the TrainTask in a fresh python and calls it): argv, gpus
TASK = (
    "import json, sys; from tood.engine.executor import TrainTask; "
    "TrainTask(int(sys.argv[2]))(json.loads(sys.argv[1]))"
)


def clean_env(device: str, pythonpath: Path) -> dict:
    """This environment without MLflow/DVC pointers (a run must never log into the user's store), with this
    interpreter's bin first (dvc.yaml says `python`) and, for --device cpu, no GPU visible to the children."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(pythonpath))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


# what a copy of the tree leaves out where git cannot list it (a copy of the checkout without .git)
NOT_SOURCE = (".git", ".venv", ".dvc/cache", ".dvc/tmp", "data", "runs", "mlflow.db", "mlruns", "bench/gpu")


def copy_source(dst: Path, rev: str | None) -> str:
    """The source the quick profile runs into `dst`: the working tree as it is (tracked files with their edits,
    new files git does not ignore), or with `rev` that commit (`git archive`); returns what was copied."""
    if rev is not None:
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
        dst.mkdir(parents=True)
        subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)
        return f"git archive {rev}"
    ls = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    proc = subprocess.run(ls, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        shutil.copytree(REPO, dst, ignore=lambda d, names: [n for n in names if _not_source(Path(d) / n)])
        return "working tree (no git checkout: copied without " + ", ".join(NOT_SOURCE) + ")"
    for rel in proc.stdout.splitlines():
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    return "working tree (tracked and untracked, not ignored, files)"


def _not_source(path: Path) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return rel in NOT_SOURCE or path.name == "__pycache__"


def shrink_quick(repo: Path) -> list[str]:
    """The `--tiny` quick profile in `repo`: TINY_QUICK sizes, one seed, TINY_VARIANTS; returns the variants."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY_QUICK.items():
        params[section].update(values)
    params["seeds"] = [0]
    params["variants"] = {v: params["variants"][v] for v in TINY_VARIANTS}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    variants = variant_names(params)
    (repo / "dvc.yaml").write_text(sync_tabulate_deps((repo / "dvc.yaml").read_text(), variants))
    return variants


def run(cmd: list[str], cwd: Path, env: dict, timeout_s: float = 300) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[1:4])} failed (exit {proc.returncode}): {tail(proc.stdout + proc.stderr)}"
        )
    return proc.stdout


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def quick_profile_section(
    device: str, tiny: bool, out_dir: Path, stem: str, timeout_s: float, rev: str | None = None
) -> dict:
    """`pipeline.profile quick` + `dvc repro` in a temporary copy of the working tree (or of commit `rev`);
    tables.md -> out_dir/<stem>-quick-tables.md."""
    with tempfile.TemporaryDirectory(prefix="tood-gpu-check-") as tmp:
        repo = Path(tmp) / "repo"
        source = copy_source(repo, rev)
        env = clean_env(device, repo)
        if tiny:  # one thread a process: on a small shared CPU, spinning OpenMP threads made steps 10x slower
            env["OMP_NUM_THREADS"] = "1"
        run([sys.executable, "-m", "pipeline.profile", "quick"], repo, env)
        variants = shrink_quick(repo) if tiny else variant_names(load_params(repo / "params.yaml"))
        git = ["git", "-c", "user.name=gpu-check", "-c", "user.email=gpu-check@localhost"]
        for cmd in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "quick profile"]):
            run(cmd, repo, env)
        try:
            total, stages = run_repro(False, [], cwd=repo, env=env, timeout_s=timeout_s)
        except SystemExit as e:  # run_repro's way to fail: its message holds dvc's last lines
            raise RuntimeError(str(e)) from None
        tables = repo / "reports" / "tables.md"
        copy = out_dir / f"{stem}-quick-tables.md"
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tables, copy)
        runs = {v: run_record(repo / "reports" / "metrics" / f"{v}.json") for v in variants}
    hardware = device_name(torch.device(device, 0) if device == "cuda" else torch.device("cpu"))
    amp = resolve_amp("auto", torch.device(device))
    text = copy.read_text()
    checks = [
        (f"dvc repro ran {len(stages)} stages in {total:.0f} s", len(stages) > 0),
        (f"tables.md written ({len(text)} characters, Table 1 present)", "Table 1" in text),
        (f"AP of all {len(runs)} variants finite", all(0.0 <= r["AP"] <= 1.0 for r in runs.values())),
        (f"every run trained in {amp} on {hardware} and was evaluated there",
         all(r["precision"] == amp and r["device"] == hardware == r["eval_device"] for r in runs.values())),
    ]  # fmt: skip
    return {
        "source": source,
        "total_s": total,
        "stages": [{k: v for k, v in s.items()} for s in stages],
        "tables": {"path": str(copy), "bytes": len(text.encode())},
        "runs": runs,
        **verdict(checks),
    }


def run_record(path: Path) -> dict:
    metrics = json.loads(path.read_text())
    seed = next(iter(metrics["seeds"].values()))
    return {
        "AP": metrics["AP"],
        **{k: seed.get(k) for k in ("precision", "device", "eval_device", "train_time_s")},
    }


def distributed_section(device: str, tiny: bool, timeout_s: float) -> dict:
    """reduce_mean under torchrun, then the Slurm task's kill-and-resume (module docstring)."""
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    world = max(gpus, 1)
    with tempfile.TemporaryDirectory(prefix="tood-gpu-check-ddp-") as tmp:
        tmp = Path(tmp)
        env = clean_env(device, REPO) | {
            "DVC_ROOT": str(tmp),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
        }
        worker = ["-m", "bench.gpu_runs", "--reduce-worker", str(tmp / "reduce.json")]
        run([*TORCHRUN, f"--nproc-per-node={world}", *worker], REPO, env, timeout_s)
        reduce = json.loads((tmp / "reduce.json").read_text())
        params = resume_params(tmp, tiny, world)
        threads = 1 if device == "cpu" else max(1, usable_cores() // world)
        argv = ["--params", str(params), "--variant", "tood", "--seed", "0", "--out", str(tmp / "run"),
                "--threads", str(threads)]  # fmt: skip
        task = [sys.executable, "-c", TASK, json.dumps(argv), str(gpus)]
        killed = run_until_epoch_one(task, tmp / "run" / "last.pt", env, tmp / "killed.log", timeout_s)
        start = time.perf_counter()
        run(task, REPO, env, timeout_s)  # the requeued task
        resume_s = time.perf_counter() - start
        final = checkpoint_record(tmp / "run" / "last.pt")
        logged = [int(r["step"]) for r in csv.DictReader((tmp / "run" / "losses.csv").open())]
    per_epoch = killed["iteration"] // max(killed["epoch"], 1)
    expected = killed["iteration"] + (RESUME_EPOCHS - killed["epoch"]) * per_epoch
    reduced = f"{reduce['backend']} reduce_mean over {reduce['world']} rank(s) = {reduce['mean']}"
    checks = [
        (f"{reduced} (expected {reduce['expected']})",
         reduce["world"] == world and reduce["mean"] == reduce["expected"]),
        (f"killed after epoch {killed['epoch']} of {RESUME_EPOCHS} (iteration {killed['iteration']})",
         1 <= killed["epoch"] < RESUME_EPOCHS),
        (f"resumed to epoch {final['epoch']}, iteration {final['iteration']} (expected {expected})",
         final["epoch"] == RESUME_EPOCHS and final["iteration"] == expected),
        ("the same MLflow run continued", final["mlflow_run_id"] == killed["mlflow_run_id"]),
        (f"losses.csv: {len(logged)} logged steps, increasing, none twice, last = {final['iteration']}",
         logged == sorted(set(logged)) and bool(logged) and logged[-1] == final["iteration"]),
    ]  # fmt: skip
    launch = run_command(argv, gpus)
    return {
        "gpus": gpus,
        "world_size": world,
        "reduce": reduce,
        "launch": " ".join(launch[1 : launch.index("pipeline.train_run") + 1]),
        "torchrun_training": gpus > 1,
        "killed": killed,
        "final": final,
        "resume_s": resume_s,
        **verdict(checks),
    }


def resume_params(tmp: Path, tiny: bool, world: int) -> Path:
    """profiles/quick.yaml for the killed-and-resumed run (RESUME_RUN), its data generated into tmp/shapes."""
    params = yaml.safe_load((PROFILES / "quick.yaml").read_text())
    for overrides in (RESUME_RUN, TINY_RESUME_RUN if tiny else {}):
        for section, values in overrides.items():
            params[section].update(values)
    params["data"]["root"] = str(tmp / "shapes")
    params["train"]["batch_size"] = BATCH_PER_RANK * world
    params["seeds"], params["variants"] = [0], {}
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    generate(resolve_run_config(params, HEADLINE, where=str(path)).shapes, tmp / "shapes")
    return path


def run_until_epoch_one(task: list[str], checkpoint: Path, env: dict, log: Path, timeout_s: float) -> dict:
    """Start `task` in its own process group and SIGTERM the group once last.pt has been rewritten after its
    epoch-0 version, i.e. after epoch 1 (it is replaced atomically at every epoch end); its record then."""
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout_s
    with log.open("w") as fh:
        proc = subprocess.Popen(
            task, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        while len(seen) < 2 and proc.poll() is None and time.monotonic() < deadline:
            try:
                stat = checkpoint.stat()
            except FileNotFoundError:
                stat = None
            if stat is not None and (stat.st_ino, stat.st_mtime_ns) not in seen:
                seen.append((stat.st_ino, stat.st_mtime_ns))
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    if len(seen) < 2:
        raise RuntimeError(
            f"the run wrote no epoch-1 checkpoint (exit {proc.returncode}): {tail(log.read_text())}"
        )
    return checkpoint_record(checkpoint)


def checkpoint_record(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {k: ckpt[k] for k in ("epoch", "iteration", "mlflow_run_id", "amp", "devices")}


def reduce_worker(out: Path) -> None:
    """One torchrun rank: reduce_mean of rank + 1 over the group, which must be (world + 1) / 2."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"  # pipeline.train_run's rule
    device = pick_device()  # cuda:LOCAL_RANK, made current, before NCCL creates its communicator
    dist.init_process_group(backend)
    try:
        rank, world = dist_info()
        mean = reduce_mean(torch.tensor(float(rank + 1), device=device)).item()  # a sync point
        dist.barrier(device_ids=[device.index] if backend == "nccl" else None)
        if rank == 0:
            record = {"backend": backend, "world": world, "mean": mean, "expected": (world + 1) / 2,
                      "device": str(device)}  # fmt: skip
            out.write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="torchrun worker of bench.gpu_check's distributed section")
    parser.add_argument("--reduce-worker", type=Path, required=True, help="rank 0 writes its record here")
    reduce_worker(parser.parse_args().reduce_worker)
