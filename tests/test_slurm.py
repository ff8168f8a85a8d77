"""`executor: slurm` on a real one-node Slurm (tests/slurm_cluster.py: Debian's slurmctld, slurmd, munge):
a tiny-profile train stage through `dvc repro` gives the weights, losses and dvc.lock entry the local
executor gives at the same threads per run, a second `dvc repro` does nothing, and a cancelled job or a run
failing at start fails the stage naming the task and its log."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from slurm_cluster import Unavailable, one_node_slurm
from test_end_to_end import make_tiny_repo

pytestmark = pytest.mark.slow
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict:
    try:
        with one_node_slurm(tmp_path_factory.mktemp("slurm")) as env:
            yield env
    except Unavailable as e:
        pytest.skip(f"no test Slurm on this machine: {e}")


def _set_executor(repo: Path, kind: str, **train) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["seeds"] = SEEDS
    params["train"].update(train)
    params["executor"]["kind"] = kind
    params["executor"]["local"]["threads_per_run"] = 1  # = slurm cpus_per_task: the same CPU numerics
    params["executor"]["slurm"].update(cpus_per_task=1, time_min=10, partition="")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _dvc(args: list[str], repo: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        check=False,
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _train_entry(repo: Path) -> dict:
    """dvc.lock's train_tood entry without its output hashes (a checkpoint holds its MLflow run id)."""
    entry = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train_tood"]
    return {k: v for k, v in entry.items() if k != "outs"}


def _results(repo: Path) -> dict:
    """Per seed: the trained weights and losses.csv."""
    out = {}
    for seed in SEEDS:
        run = repo / "runs" / "tood" / f"seed{seed}"
        model = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["model"]
        out[seed] = (model, (run / "losses.csv").read_text())
    return out


class SqueueWatch(threading.Thread):
    """Job names and states `squeue` showed while a command ran."""

    def __init__(self, env: dict):
        super().__init__(daemon=True)
        self.env, self.seen, self.stop = env, set(), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            out = subprocess.run(
                ["squeue", "-h", "-o", "%i %j %T"], check=False, env=self.env, capture_output=True, text=True
            )
            self.seen |= {tuple(line.split()) for line in out.stdout.splitlines()}
            time.sleep(0.5)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, slurm) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("repo")
    env = {**make_tiny_repo(repo), "SLURM_CONF": slurm["SLURM_CONF"]}
    return repo, env


def test_slurm_stage_equals_local_and_a_second_repro_does_nothing(repo):
    repo, env = repo
    _set_executor(repo, "local")
    _dvc(["repro", "train_tood"], repo, env)
    local, local_entry = _results(repo), _train_entry(repo)

    _set_executor(repo, "slurm")  # not a param of train_tood: a plain repro would skip it
    shutil.rmtree(repo / "runs" / ".work")  # the keyed folders would hand back the local runs
    watch = SqueueWatch(env)
    watch.start()
    proc = _dvc(["repro", "--force", "--single-item", "train_tood"], repo, env)
    watch.stop.set()
    log = proc.stdout + proc.stderr
    assert "executor slurm: 2 runs of tood" in log and log.count("submitted tood-seed") == 2
    assert {name for _, name, _ in watch.seen} == {"train_tood"}, watch.seen  # the array's tasks
    assert any(state == "RUNNING" for *_, state in watch.seen)
    slurm = _results(repo)
    for seed in SEEDS:
        assert slurm[seed][1] == local[seed][1]  # losses.csv
        assert slurm[seed][0].keys() == local[seed][0].keys()
        assert all(torch.equal(slurm[seed][0][k], local[seed][0][k]) for k in local[seed][0])
    assert _train_entry(repo) == local_entry

    again = _dvc(["repro", "train_tood"], repo, env)  # params.yaml changed: only its check re-runs
    assert [line for line in again.stdout.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'check_params':"
    ], again.stdout
    assert "Running stage" not in _dvc(["repro", "train_tood"], repo, env).stdout


def test_a_cancelled_job_fails_the_stage_naming_it(repo, slurm):
    repo, env = repo
    _set_executor(repo, "slurm", epochs=40)  # a new setting: the stage trains for a while
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "train_tood"], cwd=repo, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    job = None
    while job is None and time.monotonic() < deadline:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i %j %T"], check=False, env=env, capture_output=True, text=True
        ).stdout
        job = next((line.split()[0] for line in out.splitlines() if line.split()[2] == "RUNNING"), None)
        time.sleep(0.5)
    assert job is not None, "no train_tood task ran within 180 s"
    subprocess.run(["scancel", job.split("_")[0]], env=env, check=True)  # the whole array
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, log
    assert "pipeline.train_variant: error: tood: 2 of 2 Slurm tasks failed" in log, log[-3000:]
    assert "CANCELLED" in log and "log: " in log


def test_a_run_failing_at_start_names_its_slurm_log(repo, tmp_path):
    repo, env = repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["root"] = str(tmp_path / "no-data")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.train_variant", "--params", str(tmp_path / "params.yaml"),
         "--variant", "tood", "--out", str(tmp_path / "runs"), "--work-dir", str(tmp_path / "work")],
        check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    assert "tood: 2 of 2 Slurm tasks failed" in err and f"log: {tmp_path / 'work' / 'slurm'}/" in err
    assert "annotation file not found" in err  # the log's tail says why
