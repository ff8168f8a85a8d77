"""MLflow tracking against a throw-away sqlite store (a pre-migrated template DB copied per test)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import socket
import sys
import time
import types

import pytest

from tood import tracking
from tood.config import DataConfig, RunConfig, resolve_run_config
from tood.tracking import TrackingError


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
    assert params["data.img_scale"] == "[1333, 800]" and params["model.pretrained"] == "false"
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
    url = tracking.runs_page_url("http://127.0.0.1:5000/", "7")
    assert url == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=tood-runs"
    )
    view = json.loads(tracking._EXPERIMENT_TAGS["mlflow.sharedViewState.tood-runs"])
    assert view["selectedColumns"] == [
        "params.`head`", "params.`assigner`", "params.`anchor`", "params.`alpha`", "params.`beta`",
        "params.`seed`", "metrics.`AP`", "metrics.`AP50`", "metrics.`AP75`",
    ]  # fmt: skip
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
    assert json.loads(exp.tags["mlflow.sharedViewState.tood-runs"])["selectedColumns"][0] == "params.`head`"
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
    fake = types.ModuleType("tood.paper")
    seen = {}

    def paper_rows_for(variant, *, alpha=None, beta=None):
        seen.update(variant=variant, alpha=alpha, beta=beta)
        return ["Table 3: Anchor-free TOOD", "Table 6: T-Head + TAL"]

    fake.paper_rows_for = paper_rows_for
    monkeypatch.setitem(sys.modules, "tood.paper", fake)
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
