"""The `executor` section and the local executor (tood/engine/executor.py): the threads/jobs rule, runs at
once in their own processes with their own logs, one clear error naming each failed run, and a stage whose
runs ran two at once giving the same weights and MLflow runs as one at a time. Slurm: tests/test_slurm.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tood.config import ConfigError, LocalExecutorConfig, load_executor_config
from tood.engine.executor import (
    ProgressRelay,
    Run,
    RunsFailed,
    TrainTask,
    local_plan,
    run_command,
    run_local,
    slurm_parameters,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"kidn": "slurm"}, "executor.kidn: unknown key (did you mean 'kind'?)"),
        ({"local": {"thread_per_run": 2}}, "executor.local.thread_per_run: unknown key (did you mean"),
        ({"local": {"jobs": "many"}}, "executor.local.jobs: 'many' should be an integer or 'auto'"),
        ({"local": {"jobs": 0}}, "executor.local.jobs: 0 is out of range; must be >= 1"),
        ({"kind": "pbs"}, "executor.kind: 'pbs' is not allowed"),
        ({"slurm": {"sbatch": ["--qos=low"]}}, "executor.slurm.sbatch: '--qos=low' should be key=value"),
    ],
)
def test_a_bad_executor_section_is_named(section, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_executor_config({"executor": section}, "params.yaml")


def test_check_params_rejects_threads_that_contradict_train_num_threads(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["num_threads"] = 2
    params["executor"]["local"]["threads_per_run"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.check_params", "--params", str(tmp_path / "params.yaml"),
         "--stamp", str(tmp_path / "stamp")],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "executor.local.threads_per_run: 1 contradicts" in proc.stderr


@pytest.mark.parametrize(
    ("jobs", "threads", "runs", "cores", "num_threads", "plan"),
    [
        ("auto", "auto", 3, 2, 0, (2, [1, 1, 2])),  # 2 cores: two 1-thread runs, then one on both cores
        ("auto", "auto", 2, 2, 0, (2, [1, 1])),  # (RESULTS §7: 1.35x the images of one 2-thread run)
        ("auto", "auto", 1, 2, 0, (1, [2])),  # one run gets both cores
        ("auto", "auto", 5, 2, 0, (2, [1, 1, 1, 1, 2])),
        ("auto", "auto", 3, 8, 0, (3, [2, 2, 2])),  # 8 cores: every seed at once
        ("auto", "auto", 3, 64, 0, (3, [21, 21, 21])),
        ("auto", 4, 3, 8, 0, (2, [4, 4, 4])),
        (1, "auto", 3, 2, 0, (1, [2, 2, 2])),  # one at a time: each gets the cores
        ("auto", "auto", 3, 8, 1, (3, [1, 1, 1])),  # train.num_threads is every run's
    ],
)
def test_local_plan_prefers_processes_to_threads(jobs, threads, runs, cores, num_threads, plan):
    cfg = LocalExecutorConfig(jobs=jobs, threads_per_run=threads)
    assert local_plan(cfg, runs, cores, num_threads) == plan


def test_no_train_stage_lists_the_executor_so_switching_it_retrains_nothing():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name, stage in dvc["stages"].items():
        params = stage.get("do", stage).get("params", [])
        assert not [p for p in params if str(p).split(".")[0] == "executor"], name
    sections = {
        path.name: set(yaml.safe_load(path.read_text())["executor"])
        for path in (REPO / "profiles").glob("*.yaml")
    }
    assert all(keys == {"kind", "local", "slurm"} for keys in sections.values()), sections


def test_slurm_parameters_come_from_params():
    cfg = load_executor_config(
        {"executor": {"slurm": {"partition": "gpu", "time_min": 90, "cpus_per_task": 4, "gpus_per_run": 8,
                                "mem_gb": 64, "max_requeues": 5, "sbatch": ["account=lab", "qos=low"]}}}
    ).slurm  # fmt: skip
    params = slurm_parameters(cfg, "train_tood")
    assert params == {
        "name": "train_tood", "timeout_min": 90, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 4,
        "slurm_additional_parameters": {"account": "lab", "qos": "low"},
        "gpus_per_node": 8, "slurm_partition": "gpu", "mem_gb": 64,
    }  # fmt: skip


# A stand-in run: records when it ran, prints a line, fails when its second argument is non-zero.
FAKE_RUN = textwrap.dedent(
    """
    import json, sys, time
    out, code = sys.argv[1], int(sys.argv[2])
    start = time.time(); time.sleep(1.0)
    print("line of", out); print("boom" if code else "timing: {}", flush=True)
    open(out, "w").write(json.dumps([start, time.time()]))
    sys.exit(code)
    """
)


def test_run_local_runs_jobs_at_once_each_with_its_log_and_names_the_failed_one(tmp_path):
    runs = [Run(f"v-seed{i}", (str(tmp_path / f"t{i}.json"), "3" if i == 1 else "0")) for i in range(3)]
    runs[2] = Run("v-seed2", runs[2].argv, threads=2)  # waits until the two 1-thread runs have ended
    with pytest.raises(RunsFailed) as info:
        run_local(runs, 2, 2, tmp_path / "logs", command=lambda argv: [sys.executable, "-c", FAKE_RUN, *argv])
    message = str(info.value)
    assert message.startswith("1 of 3 runs failed; the others finished and are kept")
    assert f"v-seed1: exit code 3; log: {tmp_path / 'logs' / 'v-seed1.log'}" in message
    assert "boom" in message and "v-seed0" not in message and "v-seed2" not in message
    spans = [json.loads((tmp_path / f"t{i}.json").read_text()) for i in range(3)]  # every run ran
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # 0 and 1 at once
    assert spans[2][0] >= max(spans[0][1], spans[1][1])  # 2 needs both cores
    assert (tmp_path / "logs" / "v-seed2.log").read_text().startswith("line of")


def test_running_runs_show_their_newest_progress_line_every_interval(tmp_path, capsys):
    """Issue 18 item 6 under the executor: the runs write to their logs, the stage relays their ETAs."""
    logs = {
        "tood-seed0": tmp_path / "a.log",
        "tood-seed1": tmp_path / "b.log",
        "tood-seed2": tmp_path / "c.log",
    }
    logs["tood-seed0"].write_text(
        "train tood/seed0: 30/2112 steps (1%), 4.1 steps/s, elapsed 7s, ETA 8m27s, loss 1.2\n"
        "timing: something else\n"
        "train tood/seed0: 150/2112 steps (7%), 4.2 steps/s, elapsed 36s, ETA 7m47s, loss 0.9\n"
    )
    logs["tood-seed1"].write_text(
        "epoch 1/24:  3%|▎  | 3/88 [00:01<00:17, 4.9it/s]\rpretrain: 9/90, ETA 1m02s\r"
    )
    # tood-seed2 has not written a log yet
    now = [0.0]
    relay = ProgressRelay(interval_s=30, clock=lambda: now[0])
    relay.relay(logs)
    now[0] = 29.0
    relay.relay(logs)
    assert capsys.readouterr().out == ""  # nothing before the first interval
    now[0] = 30.0
    relay.relay(logs)
    assert capsys.readouterr().out.splitlines() == [
        "tood-seed0: train tood/seed0: 150/2112 steps (7%), 4.2 steps/s, elapsed 36s, ETA 7m47s, loss 0.9",
        "tood-seed1: pretrain: 9/90, ETA 1m02s",
    ]
    now[0] = 45.0
    relay.relay(logs)
    assert capsys.readouterr().out == ""  # the next lines come one interval later


@pytest.mark.slow
def test_a_stage_whose_runs_fail_at_start_names_each_run_and_its_log(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["root"] = str(tmp_path / "no-data")
    params["seeds"] = [0, 1]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.train_variant",
            "--params",
            str(tmp_path / "params.yaml"),
            "--variant",
            "tood",
            "--out",
            str(tmp_path / "runs"),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "DVC_ROOT": str(tmp_path)},
    )  # fmt: skip  (DVC_ROOT: the MLflow store goes there, not into the repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pipeline.train_variant: error: tood: 2 of 2 runs failed" in proc.stderr
    for seed in (0, 1):
        assert (
            f"tood-seed{seed}: exit code 2; log: {tmp_path / 'work' / 'logs'}/tood-seed{seed}.log"
            in proc.stderr
        )
    assert "no-data" in proc.stderr  # the tail of the log says what went wrong


@pytest.mark.slow
def test_two_runs_at_once_equal_one_at_a_time_and_share_the_mlflow_store(tmp_path):
    """A tiny-profile train stage through `dvc repro` (2 seeds: two 1-thread runs at once, logging to one
    fresh SQLite store), then the same runs one at a time at 1 thread: the same weights and losses, and
    four FINISHED MLflow runs, each with every step logged once."""
    from mlflow.tracking import MlflowClient
    from test_end_to_end import make_tiny_repo

    env = make_tiny_repo(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["seeds"] = [0, 1]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "train_tood"], cwd=tmp_path, env=env, capture_output=True,
        text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "up to 2 at once; train.num_threads tood-seed0 1, tood-seed1 1" in proc.stdout
    assert proc.stdout.count('{"variant": "tood"') == 2  # each run's summary, relayed from its log

    params["executor"]["local"].update(jobs=1, threads_per_run=1)
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.train_variant", "--params", "one.yaml", "--variant", "tood",
         "--out", "one/tood", "--work-dir", "one/.work"],
        cwd=tmp_path, env={**env, "DVC_ROOT": str(tmp_path)}, capture_output=True, text=True, check=False,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import torch

    for seed in (0, 1):
        at_once, alone = (tmp_path / d / "tood" / f"seed{seed}" for d in ("runs", "one"))
        assert (at_once / "losses.csv").read_text() == (alone / "losses.csv").read_text()
        a, b = (
            torch.load(d / "last.pt", map_location="cpu", weights_only=False)["model"]
            for d in (at_once, alone)
        )
        assert all(torch.equal(a[k], b[k]) for k in a)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs(
        [client.get_experiment_by_name("tood-ablations").experiment_id], "tags.variant = 'tood'"
    )
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["train.num_threads"] for r in runs} == {"1"}
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert steps and steps == sorted(set(steps))


def test_a_requeued_slurm_task_resubmits_the_same_run_and_multi_gpu_runs_use_torchrun():
    """submitit calls checkpoint() on preemption or time-out; what it returns is resubmitted, and the run
    then resumes from its last.pt (tood.engine.train)."""
    argv = ["--variant", "tood", "--seed", "0", "--out", "runs/tood/seed0"]
    again = TrainTask(gpus=8).checkpoint(argv)
    assert isinstance(again.function, TrainTask) and again.function.gpus == 8 and again.args == (argv,)
    assert run_command(argv, gpus=8)[1:6] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=8", "-m",
    ]  # fmt: skip
    assert run_command(argv)[1:3] == ["-m", "pipeline.train_run"]


def test_stopping_the_stage_stops_its_runs(tmp_path):
    """SIGTERM to the stage's process (a killed `dvc repro`) ends the runs it started; they resume later."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from tood.engine.executor import Run, run_local
        sleeper = lambda argv: [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"]
        run_local([Run("v-seed0", ()), Run("v-seed1", ())], 2, 2, Path({str(tmp_path)!r}), command=sleeper)
        """
    )
    stage = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    logs = [tmp_path / "v-seed0.log", tmp_path / "v-seed1.log"]
    deadline = time.monotonic() + 30
    while not all(log.exists() and log.read_text().strip() for log in logs) and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = [int(log.read_text().split()[0]) for log in logs]
    stage.terminate()
    assert stage.wait(timeout=20) == 128 + 15
    for pid in pids:
        with pytest.raises(ProcessLookupError):  # ended and reaped by the stage
            os.kill(pid, 0)
