"""End to end: the real `dvc repro` on a tiny profile in a temporary copy of the repo, then
`dvc exp run -S alpha=.. -S beta=..` there and back (DVC's run-cache and runs/.work: nothing retrained),
MLflow read back through a real `mlflow server`'s REST API, two queued experiments at once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("tood", "parallel_atss")  # the headline and one ablation cell

TINY = {
    "pretrain": {
        "num_train": 48,
        "num_val": 24,
        "crop_size": 32,
        "epochs": 1,
        "batch_size": 16,
        "warmup_iters": 1,
    },
    "shapes": {"num_train": 8, "num_val": 4, "image_size": 64, "max_objects": 4},
    "data": {"img_scale": [64, 64]},
    "model": {"fpn_channels": 16, "stacked_convs": 2, "gn_groups": 4},
    "assign": {"warmup_epochs": 1},
    "optim": {"warmup_iters": 2},
    "train": {"epochs": 2, "batch_size": 4, "log_every": 1},
    "eval": {"batch_size": 4},
}


def _copy_repo(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in files.splitlines():
        if (REPO / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)


def _tiny_profile(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    params["seeds"] = [0]
    params["variants"] = {v: params["variants"][v] for v in VARIANTS if v != "tood"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    deps = dvc["stages"]["tabulate"]["deps"]
    dvc["stages"]["tabulate"]["deps"] = [
        d for d in deps if not d.startswith("reports/") or Path(d).stem in VARIANTS
    ]
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))


def _run(args: list[str], repo: Path, env: dict) -> str:
    proc = subprocess.run(args, check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def make_tiny_repo(repo: Path) -> dict:
    """A committed git copy of the repo on the tiny profile in `repo`; returns the env to run DVC in."""
    _copy_repo(repo)
    _tiny_profile(repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # stage `python` = this venv
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(repo))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny"], cwd=repo, check=True)
    return env


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("repo")
    env = make_tiny_repo(repo)
    _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    return repo, env


@pytest.mark.slow
def test_repro_fills_every_section_from_the_runs_it_did(pipeline_repo):
    repo, _ = pipeline_repo
    tables = (repo / "reports" / "tables.md").read_text()
    for heading in ("Table 1", "Table 2", "Table 3", "Table 4", "Table 6", "MLflow"):
        assert heading in tables
    for variant in VARIANTS:
        metrics = json.loads((repo / "reports" / "metrics" / f"{variant}.json").read_text())
        assert 0.0 <= metrics["AP"] <= 1.0 and metrics["seeds"]["0"]["mlflow_run_id"] in tables
        assert (repo / "runs" / variant / "seed0" / "last.pt").is_file()
        curve = metrics["seeds"]["0"]["curve"]  # issue 16: the run's budget curve, ending at its last step
        assert curve["step"] and curve["epoch"][-1] == metrics["setting"]["epochs"], curve
        assert metrics["seeds"]["0"]["precision"] in ("fp32", "bf16") and metrics["seeds"]["0"]["device"]
    assert tables.index("## Summary") < tables.index("## Table 1") and "## Over the budget" in tables
    for figure in (
        "alpha_beta",
        "ablations",
        "losses",
        "alignment",
        "data_stats",
        "budget_curves",
        "budget_deltas",
    ):
        assert (repo / "reports" / "figures" / f"{figure}.png").stat().st_size > 1000


def _exp_run(repo: Path, env: dict, alpha: str, beta: str) -> str:
    return _run(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", f"alpha={alpha}", "-S", f"beta={beta}"], repo, env
    )


def _ran(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_exp_run_alpha_beta_reruns_only_the_headline_branch_and_going_back_retrains_nothing(pipeline_repo):
    repo, env = pipeline_repo
    checkpoint = repo / "runs" / "tood" / "seed0" / "last.pt"
    trained_at_1_6, runs_before = _digest(checkpoint), _tood_runs(repo)
    log = _exp_run(repo, env, "0.5", "4")
    assert _ran(log) == {"check_params", "train_tood", "evaluate_tood", "tabulate"}, log  # check: any edit
    metrics = json.loads((repo / "reports" / "metrics" / "tood.json").read_text())
    assert (metrics["setting"]["alpha"], metrics["setting"]["beta"]) == (0.5, 4.0)
    trained_at_05_4 = _digest(checkpoint)

    # Back to 1/6. DVC's run-cache compares params as written (`alpha: 1` now, `1.0` committed), so
    # train_tood runs, but finds its finished run in runs/.work and trains nothing: the checkpoint is
    # the very file of the first repro (a retrained one would name another MLflow run).
    log = _exp_run(repo, env, "1", "6")
    assert _ran(log) <= {"check_params", "train_tood", "tabulate"}, log
    assert "Stage 'evaluate_tood' is cached - skipping run" in log
    assert _digest(checkpoint) == trained_at_1_6
    # Each way once more: DVC's run-cache restores both stages; only tabulate (uncached tables.md) runs.
    for alpha, beta, digest in (("0.5", "4", trained_at_05_4), ("1", "6", trained_at_1_6)):
        log = _exp_run(repo, env, alpha, beta)
        assert _ran(log) - {"check_params"} == {"tabulate"}, log  # check_params: run or restored (same bytes)
        assert "Stage 'train_tood' is cached - skipping run" in log
        assert _digest(checkpoint) == digest
    assert len(_tood_runs(repo)) == len(runs_before) + 1  # one MLflow run for 0.5/4, none for going back


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_mlflow_server_lists_every_variant_run(pipeline_repo):
    repo, env = pipeline_repo
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{repo}/mlflow.db",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=repo, env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        with urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tood-ablations"
        ) as r:
            experiment = json.loads(r.read())["experiment"]
        runs = _post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})[
            "runs"
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)
    by_variant: dict[str, list[dict]] = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        by_variant.setdefault(tags.get("variant"), []).append(run)
    assert set(VARIANTS) <= set(by_variant)
    names = {variant: [run["info"]["run_name"] for run in by_variant[variant]] for variant in VARIANTS}
    assert "tood a1 b6 / seed0" in names["tood"] and names["parallel_atss"] == ["parallel_atss / seed0"]
    for variant in VARIANTS:
        run = by_variant[variant][0]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"head", "assigner", "anchor"} <= set(params) and not {"model.head", "assign.alpha"} & set(
            params
        )
        assert ({"alpha", "beta"} <= set(params)) == (params["assigner"] == "tal")  # ATSS ignores them
        assert "AP" in metrics and "APl" not in metrics  # no large objects at 64 px: COCO says -1


def _tood_runs(repo: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    experiment = client.get_experiment_by_name("tood-ablations")
    runs = client.search_runs([experiment.experiment_id], "tags.variant = 'tood'")
    return [(run, client.get_metric_history(run.info.run_id, "train/loss")) for run in runs]


@pytest.mark.slow
def test_two_queued_experiments_at_once_lose_no_run_or_metric(pipeline_repo):
    repo, env = pipeline_repo
    before = {run.info.run_id for run, _ in _tood_runs(repo)}
    for alpha, beta in (("0.5", "2"), ("1.5", "8")):
        _run(
            [
                sys.executable,
                "-m",
                "dvc",
                "exp",
                "run",
                "--queue",
                "-S",
                f"alpha={alpha}",
                "-S",
                f"beta={beta}",
            ],
            repo,
            env,
        )
    _run([sys.executable, "-m", "dvc", "queue", "start", "-j", "2"], repo, env)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = _run([sys.executable, "-m", "dvc", "queue", "status"], repo, env)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert status.count("Success") >= 2, status
    new = [(run, history) for run, history in _tood_runs(repo) if run.info.run_id not in before]
    assert sorted((run.data.params["alpha"], run.data.params["beta"]) for run, _ in new) == [
        ("0.5", "2.0"), ("1.5", "8.0"),
    ]  # fmt: skip
    for run, history in new:
        assert "AP" in run.data.metrics and run.info.status == "FINISHED"
        steps = [m.step for m in history]
        assert len(steps) > 0 and steps == sorted(set(steps))  # one point per logged step, none lost
        assert len(steps) == len(new[0][1])  # both runs logged the same number of points
