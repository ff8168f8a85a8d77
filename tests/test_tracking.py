"""MLflow tracking against a throw-away sqlite store (a pre-migrated template DB copied per test), and
against a real `mlflow server` on 127.0.0.1: the UI link, and a server that dies mid-training."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import browser
import pytest
import torch
import yaml
from test_train import make_tiny_coco  # the tiny COCO generator of the training tests

from pipeline.mlflow_ui import server_command
from tood.config import DataConfig, RunConfig, resolve_run_config
from tood.engine import tracking
from tood.engine.tracking import TrackingError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    """Create the MLflow schema once (alembic migrations take ~2 s); each test copies the file."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, template_db):
    shutil.copy(template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    for name in ("DVC_EXP_NAME", "DVC_STAGE", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    yield uri
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_bytes(b'{"train": 1}')
    (root / "annotations" / "instances_val.json").write_bytes(b'{"val": 2}')
    return root


def make_cfg(data_root=None) -> RunConfig:
    cfg = RunConfig(variant="tood")
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data=DataConfig(root=str(data_root)))
    return cfg


def client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


# ---------------------------------------------------------------------------------------------------
# pure parts (no MLflow import)


def test_run_params_render_numbers_one_way():
    from_int = resolve_run_config({"alpha": 1, "beta": 6}, "tood")  # what `dvc exp run -S alpha=1` writes
    from_float = resolve_run_config({"alpha": 1.0, "beta": 6.0}, "tood")
    params = tracking.run_params(from_int, seed=2)
    assert params == tracking.run_params(from_float, seed=2)
    assert (params["alpha"], params["beta"]) == ("1.0", "6.0")
    assert (params["head"], params["assigner"], params["anchor"]) == ("tood", "tal", "free")
    assert params["seed"] == "2" and params["model.depth"] == "50"
    assert params["data.img_scale"] == "[1333, 800]" and params["model.pretrained"] == "none"
    assert params["seeds"] == "[0]" and params["variant"] == "tood"
    assert params["assign.topk"] == "13" and params["assign.warmup_epochs"] == "4"


def test_each_setting_is_logged_under_one_name():
    cfg = resolve_run_config({"alpha": 0.5, "beta": 4}, "tood")
    params = tracking.run_params(cfg, seed=0)
    for path in ("assign.alpha", "assign.beta", "model.head", "assign.assigner", "model.anchor"):
        assert path not in params  # logged as alpha, beta, head, assigner, anchor
    # every resolved setting is there once: the flat config, renamed, plus the seed
    assert len(params) == len(cfg.flat()) + 1


def test_atss_runs_leave_out_the_tal_settings_they_ignore():
    cfg = resolve_run_config({"alpha": 1, "beta": 6, "variants": {"atss": {"assigner": "atss"}}}, "atss")
    params = tracking.run_params(cfg, seed=0)
    assert params["assigner"] == "atss" and params["assign.atss_topk"] == "9"
    for key in ("alpha", "beta", "assign.topk", "assign.warmup_epochs", "loss.qfl_beta"):
        assert key not in params, key
    assert tracking.run_name(cfg, 0) == "atss / seed0"


def test_run_names_say_what_the_run_is():
    assert tracking.run_name(resolve_run_config({"alpha": 1, "beta": 6}, "tood"), 0) == "tood a1 b6 / seed0"
    cfg = resolve_run_config({"alpha": 0.5, "beta": 4.0}, "tood")
    assert tracking.run_name(cfg, 2) == "tood a0.5 b4 / seed2"


def test_runs_page_url_opens_the_training_view_with_the_stored_columns():
    # our own server's page stores the columns in the browser: no share key, so no shared-view banner
    url = tracking.runs_page_url("http://127.0.0.1:5000/", "7", via_open_page=True)
    assert url == "http://127.0.0.1:5000/tood/open#/experiments/7/runs?workflowType=machine_learning"
    # a server we do not serve: the share key is the only way to the columns (banner included)
    url = tracking.runs_page_url("http://127.0.0.1:5000/", "7")
    assert url == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=tood-runs"
    )
    assert tracking.RUNS_VIEW_TAG == "mlflow.sharedViewState.tood-runs"
    view = json.loads(tracking._EXPERIMENT_TAGS[tracking.RUNS_VIEW_TAG])
    columns = ["metrics.`AP`", *(f"params.`{k}`" for k in ("head", "assigner", "anchor", "alpha", "beta"))]
    assert view["selectedColumns"] == view["columnOrder"] == columns
    assert view["columnWidths"] == dict.fromkeys(columns, 72)
    # the columns name params a TAL run really logs
    params = tracking.run_params(resolve_run_config({"alpha": 1, "beta": 6}, "tood"), seed=0)
    assert set(tracking.RUNS_VIEW_PARAMS) <= set(params)


def test_dataset_fingerprint_hashes_train_then_val_annotations(data_root, tmp_path):
    expected = hashlib.sha256(b'{"train": 1}{"val": 2}').hexdigest()[:16]
    assert tracking.dataset_fingerprint(make_cfg(data_root).data) == expected
    assert tracking.dataset_fingerprint(make_cfg().data, data_root=data_root) == expected
    assert tracking.dataset_fingerprint(make_cfg(tmp_path / "nowhere").data) == "missing"


def test_git_state_of_this_repo_and_of_a_non_repo(tmp_path):
    commit, dirty = tracking.git_state(tracking.REPO_ROOT)
    assert re.fullmatch(r"[0-9a-f]{40}", commit) or commit == "unknown"
    assert dirty in ("true", "false", "unknown")
    assert tracking.git_state(tmp_path / "absent") == ("unknown", "unknown")


def test_unreachable_server_fails_fast_naming_the_uri(monkeypatch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(TrackingError) as err:
        tracking.configure_tracking()
    assert time.perf_counter() - t0 < 10
    assert uri in str(err.value) and "MLFLOW_TRACKING_URI" in str(err.value)
    assert f"--port {port}" in str(err.value)


# ---------------------------------------------------------------------------------------------------
# against the sqlite store


def test_default_store_is_pinned_to_dvc_root(tmp_path, monkeypatch, template_db):
    shutil.copy(template_db, tmp_path / "mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    for name in ("MLFLOW_DISABLE_TELEMETRY", "DVC_NO_ANALYTICS", "GIT_PYTHON_REFRESH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path.parent)
    uri = tracking.configure_tracking()
    assert uri == f"sqlite:///{tmp_path}/mlflow.db"
    exp = client(uri).get_experiment_by_name(tracking.EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert json.loads(exp.tags["mlflow.sharedViewState.tood-runs"])["selectedColumns"][0] == "metrics.`AP`"
    assert tracking.experiment_id() == exp.experiment_id
    assert exp.artifact_location == f"file://{tmp_path}/mlartifacts"
    assert tracking.configure_tracking() == uri  # idempotent
    import os

    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and os.environ["DVC_NO_ANALYTICS"] == "1"


def test_run_logs_params_tags_metrics_and_artifacts(store, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "train@tood")
    cfg = make_cfg(data_root)
    with tracking.start_run(cfg, seed=3) as run:
        for step, loss in enumerate([3.0, 2.0, 1.5]):
            tracking.log_metrics({"loss": loss, "lr": 0.01, "skipped": None}, step=step)
        tracking.log_metrics({"AP": 0.4, "per_class": {"circle": 0.5}})
        (tmp_path / "config.json").write_text("{}")
        tracking.log_artifact(tmp_path / "config.json")
        tracking.log_dict({"a": 1}, "extra/a.json")
    c = client(store)
    got = c.get_run(run.info.run_id)
    assert got.info.run_name == "tood a1 b6 / seed3" and got.info.status == "FINISHED"
    p = got.data.params
    assert (p["alpha"], p["beta"], p["head"], p["assigner"], p["anchor"]) == (
        "1.0",
        "6.0",
        "tood",
        "tal",
        "free",
    )
    assert "assign.alpha" not in p
    assert (p["model.depth"], p["seed"], p["optim.lr"]) == ("50", "3", "0.01")
    t = got.data.tags
    assert (t["variant"], t["seed"], t["dvc.stage"], t["dvc.exp_name"]) == (
        "tood",
        "3",
        "train@tood",
        "(repro)",
    )
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", t["git.commit"]) and "git.dirty" in t
    assert t["dataset.fingerprint"] == hashlib.sha256(b'{"train": 1}{"val": 2}').hexdigest()[:16]
    history = c.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 2.0), (2, 1.5)]
    assert got.data.metrics["per_class/circle"] == 0.5 and "skipped" not in got.data.metrics
    assert {a.path for a in c.list_artifacts(run.info.run_id)} == {"config.json", "extra"}
    assert got.info.artifact_uri.startswith(f"file://{tmp_path}/mlartifacts/")


def test_resuming_a_run_adds_to_it(store):
    cfg = make_cfg()
    with tracking.start_run(cfg, seed=0) as run:
        tracking.log_metrics({"loss": 2.0}, step=0)
    with tracking.start_run(cfg, seed=0, run_id=run.info.run_id) as resumed:
        tracking.log_metrics({"loss": 1.0}, step=1)
        tracking.log_metrics({"AP": 0.3})
    assert resumed.info.run_id == run.info.run_id
    c = client(store)
    exp = c.get_experiment_by_name(tracking.EXPERIMENT)
    assert len(c.search_runs([exp.experiment_id])) == 1
    assert [m.step for m in c.get_metric_history(run.info.run_id, "loss")] == [0, 1]
    assert c.get_run(run.info.run_id).data.metrics["AP"] == 0.3


def test_resuming_an_unknown_run_starts_a_new_one(store):
    with (
        pytest.warns(UserWarning, match="not in"),
        tracking.start_run(make_cfg(), seed=0, run_id="0" * 32) as run,
    ):
        pass
    assert run.info.run_id != "0" * 32
    assert client(store).get_run(run.info.run_id).data.tags["resumed_from"] == "0" * 32


def test_paper_rows_and_dvc_experiment_become_tags(store, monkeypatch, tmp_path):
    fake = types.ModuleType("tood.report.paper")
    seen = {}

    def paper_rows_for(variant, *, alpha=None, beta=None):
        seen.update(variant=variant, alpha=alpha, beta=beta)
        return ["Table 3: Anchor-free TOOD", "Table 6: T-Head + TAL"]

    fake.paper_rows_for = paper_rows_for
    monkeypatch.setitem(sys.modules, "tood.report.paper", fake)
    monkeypatch.setenv("DVC_EXP_NAME", "ws-alpha2")
    with tracking.start_run(make_cfg(), seed=1, data_root=tmp_path / "no-data-here") as run:
        pass
    tags = client(store).get_run(run.info.run_id).data.tags
    assert tags["paper.rows"] == "Table 3: Anchor-free TOOD; Table 6: T-Head + TAL"
    assert tags["paper.tables"] == "Table 3, Table 6"
    assert seen == {"variant": "tood", "alpha": 1.0, "beta": 6.0}
    assert tags["dvc.exp_name"] == "ws-alpha2" and tags["dataset.fingerprint"] == "missing"


def test_evaluation_metrics_leave_out_cocos_undefined_minus_one(store):
    metrics = {"AP": 0.3, "APs": 0.2, "APl": -1.0, "pcc_top50": -1.0, "per_class": {"ring": -1.0, "L": 0.4}}
    with tracking.start_run(make_cfg(), seed=0) as run:
        tracking.log_eval_metrics(metrics)
    logged = client(store).get_run(run.info.run_id).data.metrics
    assert logged == {"AP": 0.3, "APs": 0.2, "pcc_top50": -1.0, "per_class/L": 0.4}  # a PCC of -1 is real


COMPLEXITY = {  # tood.report.complexity.checkpoint_complexity's shape (Complexity.to_dict() twice)
    where: {"head_params": 4_800_000, "params": 31_900_000, "all_params": 32_100_000, "head_gflops": 40.1,
            "gflops": 199.6, "num_classes": 80, "input_h": 800, "input_w": 1344, "depth": 50, "fpn_channels": 256}
    for where in ("run", "paper_config")
}  # fmt: skip


def test_evaluation_records_the_models_complexity_as_tags_not_metrics(store):
    """Issue 29: twenty constants as metrics drew twenty one-point charts, first on the Model metrics tab."""
    from pipeline.evaluate_variant import log_to_run

    cfg = make_cfg()
    with tracking.start_run(cfg, seed=0) as run:
        pass
    metrics = {"AP": 0.4, "APl": -1.0, "per_class": {"L": 0.5}, "eval_device": "cpu", "curve": {"step": [1]}}
    log_to_run(cfg, 0, run.info.run_id, metrics, COMPLEXITY)
    got = client(store).get_run(run.info.run_id).data
    assert got.metrics == {"AP": 0.4, "per_class/L": 0.5}
    for where in ("run", "paper_config"):
        for key, value in COMPLEXITY[where].items():
            assert got.tags[f"complexity.{where}.{key}"] == str(value)
    assert got.tags["eval_device"] == "cpu"
    log_to_run(cfg, 0, run.info.run_id, metrics, COMPLEXITY | {"run": {"gflops": 0.5}})  # re-evaluated
    assert client(store).get_run(run.info.run_id).data.tags["complexity.run.gflops"] == "0.5"


def test_last_logged_steps_of_a_resumed_run(store):
    with tracking.start_run(make_cfg(), seed=0) as run:
        tracking.log_metrics({"train/loss": 2.0, "train/lr": 0.1}, step=3)
        tracking.log_metrics({"train/loss": 1.0}, step=5)
        tracking.log_metrics({"epoch/loss": 1.5}, step=1)
    with tracking.start_run(make_cfg(), seed=0, run_id=run.info.run_id):
        assert tracking.last_logged_steps() == {"train/loss": 5, "train/lr": 3, "epoch/loss": 1}


def test_logging_without_an_active_run_raises(store):
    tracking.configure_tracking()
    with pytest.raises(TrackingError, match="no active MLflow run"):
        tracking.log_metrics({"loss": 1.0})
    with tracking.start_run(make_cfg(), seed=0), pytest.raises(TypeError, match="'note'"):
        tracking.log_metrics({"note": "text"})


# ---------------------------------------------------------------------------------------------------
# against a real `mlflow server` on 127.0.0.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(
    predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
):
    """predicate() once true, else fail after `timeout` s, or at once when `proc` has exited (with `log`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            said = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise AssertionError(f"exited with code {proc.returncode} before {what}:\n{said}")
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _start_server(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` over root/mlflow.db in its own process group (so killpg takes uvicorn with it)."""
    proc = subprocess.Popen(
        server_command(f"sqlite:///{root}/mlflow.db", "127.0.0.1", port),
        cwd=root, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    _wait_for(lambda: tracking.unreachable_reason(base, timeout=2) is None, 600, f"mlflow server at {base}")
    return proc


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read().decode()


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def ui(tmp_path_factory, template_db):
    """`python -m pipeline.mlflow_ui` over a store holding a TAL and an ATSS run: (printed link, base, root)."""
    root = tmp_path_factory.mktemp("ui")
    shutil.copy(template_db, root / "mlflow.db")
    from pipeline.evaluate_variant import log_to_run

    tal = resolve_run_config({"alpha": 1, "beta": 6}, "tood")
    atss = resolve_run_config({"alpha": 1, "beta": 6, "variants": {"atss": {"assigner": "atss"}}}, "atss")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("DVC_ROOT", str(root))
        for cfg, ap in ((tal, 0.4), (atss, 0.3)):
            # what training logs (step losses, the budget curve, epoch means), then what evaluation adds
            with tracking.start_run(cfg, seed=0) as run:
                for step in (1, 2, 3, 4):
                    tracking.log_metrics({"train": {"loss": 2.0 / step, "lr": 0.01}}, step=step)
                for step in (2, 4):
                    tracking.log_metrics({"val": {"AP": ap * step / 4}}, step=step)
                    tracking.log_metrics({"epoch": {"loss": 1.0 / step}}, step=step // 2)
            evaluation = {"AP": ap, "APl": -1.0, "per_class": {"red": ap}, "eval_device": "cpu"}
            log_to_run(cfg, 0, run.info.run_id, evaluation, COMPLEXITY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    port, log = _free_port(), root / "ui.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.mlflow_ui", "--port", str(port)], cwd=REPO,
            env={**env, "DVC_ROOT": str(root)}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        link = _wait_for(
            lambda: re.search(r"MLflow UI: (\S+)", log.read_text()), 600, "the UI link", proc, log
        )[1]
        yield link, f"http://127.0.0.1:{port}", root
    finally:
        _stop(proc)


@pytest.mark.slow
def test_ui_link_names_the_runs_page_and_the_view_the_server_holds(ui):
    """What CI can check without a browser: the link, the view the server returns for it, and that the
    frontend this MLflow ships still reads `workflowType`, the share key and the column ids we write
    (an MLflow upgrade that renames one fails here; then re-check with the chromium test below)."""
    link, base, root = ui
    exp_id = client(f"sqlite:///{root}/mlflow.db").get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    assert link == tracking.runs_page_url(base, exp_id, via_open_page=True)
    # no viewStateShareKey: it would show the "You're viewing a shared view" banner (issue 29)
    assert link == f"{base}{tracking.OPEN_PATH}#/experiments/{exp_id}/runs?workflowType=machine_learning"
    got = json.loads(_get(f"{base}/ajax-api/2.0/mlflow/experiments/get?experiment_id={exp_id}"))
    tags = {t["key"]: t["value"] for t in got["experiment"]["tags"]}
    view = json.loads(tags[f"mlflow.sharedViewState.{tracking.RUNS_VIEW_KEY}"])
    runs = _post(f"{base}/ajax-api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    assert sorted(r["info"]["run_name"] for r in runs) == ["atss / seed0", "tood a1 b6 / seed0"]
    logged = {
        f"{kind}.`{item['key']}`" for r in runs for kind in ("params", "metrics") for item in r["data"][kind]
    }
    assert set(view["selectedColumns"]) <= logged  # every column has values
    assert "metrics.`APl`" not in logged
    main_js = re.search(r'src="([^"]*/static/js/main\.[0-9a-f]+\.js)"', _get(f"{base}/"))[1]
    frontend = _get(f"{base}/{main_js}")
    for contract in ('.get("workflowType")', '"machine_learning"', '"viewStateShareKey"',
                     '"mlflow.sharedViewState."', '"selectedColumns"', '"columnOrder"', '".`"',
                     # the runs table's state in localStorage, which OPEN_PATH's page writes
                     '"MLflowLocalStorage"', 'version="1.1"', '"ReactComponentState"',
                     'SOURCE:"Source"', 'MODELS:"Models"', 'DATASET:"Dataset"'):  # fmt: skip
        assert contract in frontend, contract


def _dom(chromium: str, url: str, profile: Path) -> str:
    flags = [
        *browser.FLAGS,
        f"--user-data-dir={profile}",
        "--window-size=1600,900",
        "--virtual-time-budget=25000",
    ]
    return subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True
    ).stdout


GENAI = ("Judges", "Evaluations")  # the GenAI sidebar and a run page's GenAI breadcrumb ("… › Evaluations")


SHARED_VIEW_BANNER = "viewing a shared view"  # "You're viewing a shared view. ... Override saved view"
MLFLOW_COLUMNS = (">Source<", ">Dataset<")  # the runs table's columns in a fresh browser (and Models)


def _columns_shown(table: str) -> None:
    for column in ("AP", *tracking.RUNS_VIEW_PARAMS):
        assert f">{column}<" in table, column  # a column header
    assert not any(c in table for c in MLFLOW_COLUMNS), [c for c in MLFLOW_COLUMNS if c in table]


@pytest.mark.slow
def test_ui_link_then_a_run_stays_in_the_training_view(ui, chromium, tmp_path):
    """Issues 18 and 29, as a user clicks: the printed link -> the runs table in our columns, without
    the shared-view banner -> a run (its link from the table, in the same browser profile) -> its
    metrics, with no GenAI page on the way; then the bare address shows no telemetry notice. MLflow
    keeps the view in the browser, so the profile is what carries it."""
    link, base, _ = ui
    profile = tmp_path / "profile"
    table = _dom(chromium, link, profile)
    assert "tood a1 b6 / seed0" in table and "atss / seed0" in table
    _columns_shown(table)
    assert SHARED_VIEW_BANNER not in table and "Override saved view" not in table
    assert not any(g in table for g in GENAI)
    run_href = re.search(r'href="(#/experiments/\d+/runs/[0-9a-f]{32})"', table)[1]  # a run name's link
    run_page = _dom(chromium, f"{base}/{run_href}", profile)
    assert "Model metrics" in run_page and ">AP<" in run_page and " / seed0" in run_page
    assert not any(g in run_page for g in GENAI), [g for g in GENAI if g in run_page]
    assert "collects usage data" not in _dom(chromium, f"{base}/", profile)


@pytest.mark.slow
def test_ui_link_gives_our_columns_to_a_browser_that_showed_mlflows(ui, chromium, tmp_path):
    """The table's page saves its state in the browser on every visit, MLflow's default columns in a
    browser that opened the bare address first; the printed link still shows ours, without the banner."""
    link, base, root = ui
    exp_id = client(f"sqlite:///{root}/mlflow.db").get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    profile = tmp_path / "profile"
    assert all(c in _dom(chromium, f"{base}/#/experiments/{exp_id}/runs", profile) for c in MLFLOW_COLUMNS)
    table = _dom(chromium, link, profile)
    _columns_shown(table)
    assert SHARED_VIEW_BANNER not in table


def _chart_sections(page: str) -> list[str]:
    """The Model metrics tab's sections, top to bottom: each header is "<name>" then "(<chart count>)"."""
    return re.findall(r">([^<>]+)</div><div[^>]*>\(\d+\)</div>", page)


@pytest.mark.slow
def test_a_runs_model_metrics_tab_opens_on_its_training_curves(ui, chromium, tmp_path):
    """Issue 29: the tab shows one section per metric prefix, by name; complexity/paper_config/* came
    first with ten one-point charts. Now the complexity figures are tags and the curves come first."""
    link, base, root = ui
    store = client(f"sqlite:///{root}/mlflow.db")
    exp = store.get_experiment_by_name(tracking.EXPERIMENT)
    run = store.search_runs([exp.experiment_id], "attributes.run_name = 'tood a1 b6 / seed0'")[0]
    profile = tmp_path / "profile"
    _dom(chromium, link, profile)  # as a reader arrives: through the link, in the model-training view
    route = f"#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/model-metrics"
    page = _dom(chromium, f"{base}/{route}", profile)
    sections = _chart_sections(page)
    # training curves first: the epoch means (epoch/*), the steps' losses (train/*), the budget curve (val/*)
    assert sections[0] in ("epoch", "train", "val"), sections
    assert {"train", "val"} <= set(sections) and not any("complexity" in s for s in sections), sections
    assert sections.index("val") < sections.index("Model metrics")  # the evaluation's one-point AP charts
    first_chart = re.search(r'<h4[^>]* title="([^"]+)"', page)[1]
    assert first_chart.split("/")[0] in ("epoch", "train", "val"), first_chart
    assert "complexity" not in page  # tags (the Overview tab), not charts


@pytest.mark.slow
def test_without_the_open_page_a_fresh_browser_shows_runs_in_genai_mode(ui, chromium, tmp_path):
    """The control for the test above: the same kind of pages in fresh profiles (what the old link gave)."""
    _, base, root = ui
    exp = client(f"sqlite:///{root}/mlflow.db").get_experiment_by_name(tracking.EXPERIMENT)
    run = client(f"sqlite:///{root}/mlflow.db").search_runs([exp.experiment_id])[0]
    run_page = _dom(
        chromium, f"{base}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}", tmp_path / "a"
    )
    assert any(g in run_page for g in GENAI)
    assert "collects usage data" in _dom(chromium, f"{base}/", tmp_path / "b")
    # the share key, our columns' one way into a server we do not serve, brings MLflow's banner
    shared = _dom(chromium, tracking.runs_page_url(base, exp.experiment_id), tmp_path / "c")
    assert SHARED_VIEW_BANNER in shared and ">assigner<" in shared


@pytest.mark.slow
def test_training_stops_within_a_minute_when_the_server_dies_then_resumes_into_the_same_run(
    tmp_path, template_db
):
    """The server is SIGKILLed while the trainer is stopped (SIGSTOP) after its first epoch, so the
    trainer's next call meets a dead server whatever the machine's speed."""
    make_tiny_coco(tmp_path / "data")
    params = {
        "alpha": 1.0, "beta": 6.0, "seeds": [0],
        "data": {"root": str(tmp_path / "data"), "img_scale": [64, 64]},
        "model": {"depth": 18, "fpn_channels": 16, "stacked_convs": 2, "gn_groups": 4},
        "assign": {"warmup_epochs": 1}, "optim": {"warmup_iters": 3},
        "train": {"epochs": 4, "batch_size": 2, "log_every": 1, "num_threads": 1},
        "variants": {"tiny": {}},
    }  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(template_db, tmp_path / "mlflow.db")
    cmd = [sys.executable, "-m", "pipeline.train_variant", "--params", str(tmp_path / "params.yaml"),
           "--variant", "tiny", "--out", str(tmp_path / "runs" / "tiny"), "--work-dir", str(tmp_path / "work")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_HTTP", "DVC_"))}

    port = _free_port()
    server = _start_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    stderr = tmp_path / "train.err"
    with stderr.open("w") as err:
        trainer = subprocess.Popen(cmd, cwd=REPO, env={**env, "MLFLOW_TRACKING_URI": uri}, stderr=err)
    try:
        run_id = _wait_for(lambda: _run_with_epoch(uri, 1), 600, "the first epoch in MLflow")
        os.kill(trainer.pid, signal.SIGSTOP)
        _stop(server, signal.SIGKILL)
        os.kill(trainer.pid, signal.SIGCONT)
        t0 = time.monotonic()
        returncode = trainer.wait(timeout=300)
        took = time.monotonic() - t0
    finally:
        _stop(server, signal.SIGKILL)
        if trainer.poll() is None:
            trainer.kill()
    message = stderr.read_text()
    assert returncode != 0 and took < 60, (returncode, took, message[-2000:])
    assert f"MLflow tracking server {uri} stopped answering" in message
    (work_dir,) = (tmp_path / "work").iterdir()
    epoch = torch.load(work_dir / "last.pt", weights_only=True)["epoch"]
    assert 1 <= epoch < 4 and f"The checkpoint of epoch {epoch} is kept: {work_dir / 'last.pt'}" in message

    port = _free_port()  # the server is back (same store, another port): the re-run finishes the same run
    server = _start_server(tmp_path, port)
    try:
        env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
        done = subprocess.run(
            cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=900
        )
    finally:
        _stop(server)
    assert done.returncode == 0, done.stderr[-2000:]
    store = client(f"sqlite:///{tmp_path}/mlflow.db")
    assert store.get_run(run_id).info.status == "FINISHED"
    assert (
        json.loads((tmp_path / "runs" / "tiny" / "seed0" / "mlflow_run.json").read_text())["run_id"] == run_id
    )
    for key, steps in (("train/loss", range(1, 9)), ("epoch/loss", range(1, 5))):
        assert sorted(m.step for m in store.get_metric_history(run_id, key)) == list(steps), key


def _run_with_epoch(uri: str, epoch: int) -> str | None:
    """The id of the store's run once it has logged `epoch`'s mean loss, else None."""
    try:
        c = client(uri)
        exp = c.get_experiment_by_name(tracking.EXPERIMENT)
        runs = c.search_runs([exp.experiment_id]) if exp is not None else []
    except Exception:  # noqa: BLE001 -- the trainer may not have created the experiment yet
        return None
    for run in runs:
        if run.data.metrics.get("epoch/loss") is not None and any(
            m.step >= epoch for m in c.get_metric_history(run.info.run_id, "epoch/loss")
        ):
            return run.info.run_id
    return None


def test_mlflow_ui_says_when_its_app_is_not_installed(monkeypatch):
    """An environment synced before the tood-ui entry point existed: one line that says what to run, not
    mlflow's usage error about --app-name (which a test fixture once waited 10 minutes on)."""
    import importlib.metadata

    from pipeline import mlflow_ui
    from pipeline.cli import CliError

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    with pytest.raises(CliError, match="MLflow app 'tood-ui' is not installed.*run `uv sync`"):
        mlflow_ui.check_app_installed()
