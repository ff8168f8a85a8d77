"""MLflow tracking: one run per training run (evaluation resumes it), in a store pinned to the repo root.

Where runs go (reference/dvc-mlflow.md §2-3, gotchas 10-18):
    $MLFLOW_TRACKING_URI if set (e.g. http://127.0.0.1:5000 or sqlite:////abs/path.db), else
    sqlite:///<root>/mlflow.db with root = $DVC_ROOT (DVC sets it to the MAIN repo even for queued
    experiments, which run in temporary copies) or the repo holding this package. MLflow's own default
    is relative to the working directory, so queued runs would vanish with their temp dirs.
    For a sqlite store the experiment's artifacts live beside the DB file (<root>/mlartifacts for the
    default); an http(s) server decides its own artifact location.

Opening the UI on the runs: MLflow 3.17 and 3.18 (same frontend code) open in the GenAI view in a fresh
browser whatever the experiment's mlflow.experimentKind tag says, because the sidebar's workflow toggle
lives in the browser's localStorage (mlflow#24498). The UI does honour `?workflowType=machine_learning`
in the URL, so `runs_page_url` builds that link. The runs table's columns (AP, head, assigner, anchor,
alpha, beta) are kept as the experiment tag RUNS_VIEW_TAG, in the UI's own "share view" format. The UI has
no per-experiment default columns (a fresh browser shows Source/Models/Dataset) and keeps the table's
state in localStorage too, so the page of `pipeline.mlflow_ui`'s server (tood/engine/mlflow_app.py) copies
that view into the browser before it opens the table. `viewStateShareKey=<RUNS_VIEW_KEY>` in the URL would
apply it as well, but under a "You're viewing a shared view... Override saved view" banner (issue 29), so
only the link into a server we do not serve carries it.

A tracking server that stops answering fails training within ~60 s with a TrackingError rather than
after MLflow's default ~8 min of retries (HTTP_RETRY_ENV); the checkpoint is kept and a re-run resumes
the same MLflow run. Telemetry is off unless the user opted in explicitly.

`import mlflow` costs ~1.5 s, so it is imported inside the functions that need it: importing this
module (and tood.engine.train) stays cheap for code paths that do not track.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlflow

    from tood.config import DataConfig, RunConfig

EXPERIMENT = "tood-ablations"
# the `pretrain` stage's run: not a detection run, so not in the detection runs' table (issue 18)
PRETRAIN_EXPERIMENT = "tood-pretrain"
UI_URL = "http://127.0.0.1:5000"  # where `python -m pipeline.mlflow_ui` serves by default
# a page of pipeline.mlflow_ui's server (tood/engine/mlflow_app.py) that stores the UI settings MLflow keeps
# only in the browser (model-training view, telemetry notice, Assistant panel), then opens the route after '#'
OPEN_PATH = "/tood/open"
REPO_ROOT = Path(__file__).resolve().parents[2]
HEALTH_TIMEOUT_S = 5.0  # MLflow's own client retries an unreachable server for minutes
_QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "GIT_PYTHON_REFRESH": "quiet"}
# MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) hang a training process for 8 min 22 s
# when the server dies. These give at most 3 tries of 5 s plus ~3 s of backoff: measured 18 s for a server
# that hangs (SIGSTOP) and ~3 s for one that refuses, then 5 s to probe /health and 5 s to try to mark
# the run FAILED (abort_run): ~28 s of waiting at worst, leaving the rest of the promised minute to the
# process's own teardown (51 s from the server hanging to exit, measured on 2 busy cores). Our calls
# are small (metrics, a config file), so 5 s per try is generous for a live server.
# Set in the environment because MLflow reads them per request; a value the user exported wins.
HTTP_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
# The runs table of `runs_page_url`: AP, then the five switches, narrow enough that all of them fit beside
# the run name (which carries variant, α, β and seed) on a 1600 px screen with MLflow's Assistant panel
# open. Column ids are the UI's own ("params.`alpha`"); columnOrder is needed, or params sort by name.
RUNS_VIEW_KEY = "tood-runs"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"  # where the UI looks up a viewStateShareKey
RUNS_VIEW_METRICS = ("AP",)
RUNS_VIEW_PARAMS = ("head", "assigner", "anchor", "alpha", "beta")
_RUNS_VIEW_COLUMNS = [f"metrics.`{k}`" for k in RUNS_VIEW_METRICS] + [
    f"params.`{k}`" for k in RUNS_VIEW_PARAMS
]
_RUNS_VIEW = {
    "selectedColumns": _RUNS_VIEW_COLUMNS,
    "columnOrder": _RUNS_VIEW_COLUMNS,
    "columnWidths": dict.fromkeys(_RUNS_VIEW_COLUMNS, 72),
}
_EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    RUNS_VIEW_TAG: json.dumps(_RUNS_VIEW),
}
# The five ablation switches are logged once each, under short names (params.alpha in search filters and
# table columns) instead of their config paths; every other setting keeps its dotted path.
_SWITCHES = {
    "assign.alpha": "alpha",
    "assign.beta": "beta",
    "model.head": "head",
    "assign.assigner": "assigner",
    "model.anchor": "anchor",
}
# read only by TAL (assignment, its warm-up switch, its loss): an ATSS-trained run never uses them
_TAL_ONLY = ("assign.alpha", "assign.beta", "assign.topk", "assign.warmup_epochs", "loss.qfl_beta")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says which one and how to fix it."""


def tracking_root() -> Path:
    """$DVC_ROOT (the main repo, also inside `dvc exp run --queue` temp copies) or this package's repo."""
    return Path(os.environ.get("DVC_ROOT") or REPO_ROOT).resolve()


def store_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the pipeline's own SQLite store at the repo root (see the module doc)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{tracking_root() / 'mlflow.db'}"


def configure_tracking(experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the pipeline's store and make `experiment` (created if needed) the active one;
    returns the tracking URI.

    Raises:
        TrackingError: an http(s) $MLFLOW_TRACKING_URI does not answer within HEALTH_TIMEOUT_S.
    """
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)  # before `import mlflow`: GitPython reads its variable at import
    uri = store_uri()
    if _is_http(uri):
        check_server(uri)
        for key, value in HTTP_RETRY_ENV.items():
            os.environ.setdefault(key, value)
    import mlflow

    mlflow.set_tracking_uri(uri)
    _ensure_experiment(_artifact_location(uri), experiment)
    return uri


def check_server(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Raise a TrackingError that says how to start the server if `uri` does not answer."""
    reason = unreachable_reason(uri, timeout)
    if reason is not None:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}). Either start it, e.g.\n"
            f"  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --backend-store-uri "
            f"sqlite:///mlflow.db --host 127.0.0.1 --port {_port(uri)} "
            f"--workers 1\nor unset MLFLOW_TRACKING_URI to log to the local store "
            f"sqlite:///{tracking_root() / 'mlflow.db'}."
        )


def unreachable_reason(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> str | None:
    """GET <uri>/health once: None if it answers (any HTTP status: MLflow then reports auth/API errors),
    else why not (refused, DNS, timeout, malformed URL)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        return str(getattr(e, "reason", e))


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _port(uri: str) -> int:
    try:
        return urllib.parse.urlsplit(uri).port or 5000
    except ValueError:
        return 5000


def _artifact_location(uri: str) -> str | None:
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    db_path = Path(uri.removeprefix("sqlite:///")).resolve()  # 4 slashes = absolute, 3 = relative to cwd
    return (db_path.parent / "mlartifacts").as_uri()


def _ensure_experiment(artifact_location: str | None, name: str = EXPERIMENT) -> None:
    """Create (or restore) experiment `name` with its UI tags and make it the active experiment."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    tags = _EXPERIMENT_TAGS if name == EXPERIMENT else {"mlflow.experimentKind": "custom_model_development"}
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            client.create_experiment(name, artifact_location=artifact_location, tags=tags)
        except MlflowException:  # another process (a DVC queue worker) created it first
            if client.get_experiment_by_name(name) is None:
                raise
        exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    for key, value in tags.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    mlflow.set_experiment(experiment_id=exp.experiment_id)


def experiment_id() -> str:
    """The id of EXPERIMENT in the configured store (created, with its tags, if needed)."""
    configure_tracking()
    import mlflow

    return mlflow.get_experiment_by_name(EXPERIMENT).experiment_id


def runs_page_url(base_url: str, experiment_id: str, via_open_page: bool = False) -> str:
    """The UI page that lists the experiment's runs, in the model-training view, with RUNS_VIEW's columns.

    `via_open_page` (a server started by pipeline.mlflow_ui): through OPEN_PATH, which stores the view and
    the columns in the browser, so that the run pages a click opens from there stay in that view too
    (`workflowType` in the URL covers only the page it names) and no shared-view banner shows. Without it
    (a server we do not serve), the columns come through `viewStateShareKey`, banner included.
    """
    query = {"workflowType": "machine_learning"}
    if not via_open_page:
        query["viewStateShareKey"] = RUNS_VIEW_KEY
    route = f"/experiments/{experiment_id}/runs?{urllib.parse.urlencode(query)}"
    return f"{base_url.rstrip('/')}{OPEN_PATH if via_open_page else '/'}#{route}"


def run_page_url(run_id: str, base_url: str = UI_URL) -> str:
    """A run's page (MLflow's direct `#/runs/<id>` route) in the model-training view, through OPEN_PATH."""
    return f"{base_url.rstrip('/')}{OPEN_PATH}#/runs/{run_id}?workflowType=machine_learning"


# ---------------------------------------------------------------------------------------------------
# runs


def start_run(
    cfg: RunConfig, seed: int, run_id: str | None = None, data_root: str | Path | None = None
) -> mlflow.ActiveRun:
    """Start the MLflow run of one (variant, seed) training run, or resume `run_id`.

    A new run is named by `run_name` and gets the hyperparameters of `run_params` and the provenance
    tags of `run_tags`. Resuming (a killed training continuing, or evaluation adding to the training
    run) logs nothing new; if `run_id` is not in this store (e.g. the DB was deleted but the checkpoint
    kept), a warning is issued and a new run is started, tagged resumed_from=<run_id>.
    Use the result as a context manager, or end it with `end_run` / `abort_run`.
    """
    uri = configure_tracking()
    import mlflow
    from mlflow.exceptions import MlflowException

    extra_tags = {}
    if run_id is not None:
        try:
            with _server_calls():
                return mlflow.start_run(run_id=run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            warnings.warn(f"MLflow run {run_id} is not in {uri}; starting a new run", stacklevel=2)
            extra_tags["resumed_from"] = run_id
    # provenance only for new runs: hashing COCO's annotation json takes ~1 s
    tags = {**run_tags(cfg, seed, data_root), **extra_tags}
    with _server_calls():
        active = mlflow.start_run(run_name=run_name(cfg, seed), tags=tags)
    try:
        with _server_calls():
            mlflow.log_params(run_params(cfg, seed))
    except BaseException:
        abort_run()
        raise
    return active


def end_run(status: str = "FINISHED") -> None:
    import mlflow

    with _server_calls():
        mlflow.end_run(status=status)


def abort_run() -> None:
    """End the active run as FAILED after an error, trying the store once only.

    When the error is a tracking server that went away, MLflow's retries would add another minute;
    the run then stays RUNNING on the server until a re-run resumes and finishes it.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    with _environ({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}):
        try:
            mlflow.end_run(status="FAILED")  # forgets the run locally before it calls the store
        except MlflowException as e:
            warnings.warn(f"could not mark the MLflow run FAILED: {_first_line(e)}", stacklevel=2)


def run_name(cfg: RunConfig, seed: int) -> str:
    """What the run is, e.g. "tood a1 b6 / seed0" or "parallel_atss / seed0" (α, β only where TAL uses them)."""
    alpha_beta = f" a{cfg.assign.alpha:g} b{cfg.assign.beta:g}" if cfg.assign.assigner == "tal" else ""
    return f"{cfg.variant}{alpha_beta} / seed{int(seed)}"


def run_params(cfg: RunConfig, seed: int) -> dict[str, str]:
    """cfg.flat() + seed as strings rendered one way for every run; each setting under one name.

    The switches are `alpha`, `beta`, `head`, `assigner`, `anchor` (not `assign.alpha`, ...); an ATSS
    run leaves out the TAL-only settings it never reads, so it shows no α, β. Floats are repr(float)
    ("1.0" whether params.yaml said 1 or 1.0: `dvc exp run -S alpha=1` writes an int, gotcha 18), ints
    str(), bools/None/lists JSON ("true", "[1333, 800]").
    """
    unused = _TAL_ONLY if cfg.assign.assigner != "tal" else ()
    if cfg.loss.cls_target == "iou":  # GFL's QFL reads qfl_beta too (issue 20)
        unused = tuple(k for k in unused if k != "loss.qfl_beta")
    params = {
        _SWITCHES.get(key, key): _param_str(value) for key, value in cfg.flat().items() if key not in unused
    }
    params["seed"] = str(int(seed))
    return params


def _param_str(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (list, tuple, dict)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def run_tags(cfg: RunConfig, seed: int, data_root: str | Path | None = None) -> dict[str, str]:
    """Provenance tags: variant, seed, paper rows, git commit + dirty flag, dataset, DVC stage/experiment."""
    commit, dirty = git_state(REPO_ROOT)
    tags = {
        "variant": cfg.variant,
        "seed": str(int(seed)),
        "git.commit": commit,
        "git.dirty": dirty,
        "dataset": cfg.data.dataset,
        "dataset.fingerprint": dataset_fingerprint(cfg.data, data_root),
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME") or "(repro)",
        "dvc.stage": os.environ.get("DVC_STAGE") or "manual",
    }
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    rows = _paper_rows(cfg)
    if rows:
        tags["paper.rows"] = "; ".join(rows)  # e.g. "Table 1: T-Head + TAL; Table 6: T-Head + TAL"
        tags["paper.tables"] = ", ".join(sorted({row.split(":")[0].strip() for row in rows}))
    return tags


def _paper_rows(cfg: RunConfig) -> list[str]:
    """The paper rows a variant reproduces, from tood.report.paper.paper_rows_for when that exists (it is optional)."""
    try:
        paper = importlib.import_module("tood.report.paper")
    except ModuleNotFoundError as e:
        if e.name == "tood.report.paper":
            return []
        raise
    rows_for = getattr(paper, "paper_rows_for", None)
    if rows_for is None:
        return []
    try:
        return [str(row) for row in rows_for(cfg.variant, alpha=cfg.assign.alpha, beta=cfg.assign.beta)]
    except Exception as e:  # noqa: BLE001 -- a missing tag must never stop a training run
        warnings.warn(
            f"tood.report.paper.paper_rows_for({cfg.variant!r}) failed: {e!r}; no paper.rows tag",
            stacklevel=3,
        )
        return []


def git_state(repo: Path) -> tuple[str, str]:
    """(HEAD commit, "true"/"false" for uncommitted changes to tracked files); ("unknown", "unknown") without git."""
    try:
        commit = _git(repo, "rev-parse", "HEAD")
        status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    return commit, "true" if status else "false"


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=10)
    return out.stdout.strip()


def dataset_fingerprint(data: DataConfig, data_root: str | Path | None = None) -> str:
    """First 16 hex chars of sha256(train annotation bytes + val annotation bytes); "missing" if absent.

    The data root is `data_root` if given, else data.root (absolute, or relative to the working
    directory, $DVC_ROOT or the repo root: the first that holds the annotations).
    """
    root = _find_data_root(data, data_root)
    files = [root / data.train_ann, root / data.val_ann]
    if not all(f.is_file() for f in files):
        return "missing"
    digest = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):  # COCO train json is ~450 MB
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _find_data_root(data: DataConfig, data_root: str | Path | None) -> Path:
    if data_root is not None:
        return Path(data_root)
    root = Path(data.root)
    if root.is_absolute():
        return root
    candidates = [Path.cwd() / root, tracking_root() / root, REPO_ROOT / root]
    return next((c for c in candidates if (c / data.train_ann).is_file()), candidates[0])


# ---------------------------------------------------------------------------------------------------
# logging into the active run


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log numbers into the active run; nested mappings become "outer/inner" keys, None is skipped.

    e.g. coco_eval's {"AP": .4, "per_class": {"circle": .5}} -> AP, per_class/circle.
    """
    import mlflow

    _require_active_run()
    flat = _flat_metrics(metrics)
    if flat:
        with _server_calls():
            mlflow.log_metrics(flat, step=step)


def log_eval_metrics(metrics: Mapping[str, Any]) -> None:
    """`log_metrics` for evaluation results, leaving out pycocotools' -1 ("undefined": no ground truth
    of that size, e.g. APl on a set without large objects, or of that class in per_class/*).

    Only COCO AP values are screened: -1 is a real value of the alignment PCC.
    """
    from tood.engine.evaluate import COCO_KEYS

    kept = {k: v for k, v in metrics.items() if not (k in COCO_KEYS and v == -1)}
    if isinstance(kept.get("per_class"), Mapping):
        kept["per_class"] = {k: v for k, v in kept["per_class"].items() if v != -1}
    log_metrics(kept)


def last_logged_steps() -> dict[str, int]:
    """{metric key: highest step logged so far} of the active run, to resume without duplicate steps."""
    import mlflow

    run_id = _require_active_run()
    client = mlflow.MlflowClient()
    with _server_calls():
        keys = client.get_run(run_id).data.metrics
        return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


def log_params(params: Mapping[str, Any]) -> None:
    """Log extra params into the active run, rendered as run_params renders them (e.g. the resolved amp)."""
    import mlflow

    _require_active_run()
    with _server_calls():
        mlflow.log_params({key: _param_str(value) for key, value in params.items()})


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set (or overwrite) tags of the active run: e.g. the device, which a resume on another machine changes.

    Nested mappings become "outer.inner" keys and values are rendered as run_params renders them, e.g.
    {"complexity": {"run": {"gflops": 0.7}}} -> complexity.run.gflops = "0.7". Numbers that do not change
    over a run (a model's size) belong here rather than in log_metrics: a run's Model metrics tab draws a
    chart per metric, grouped by the name before its last '/', groups in name order, so complexity/* came
    before the epoch/, train/ and val/ curves (issue 29).
    """
    import mlflow

    _require_active_run()
    with _server_calls():
        mlflow.set_tags(_flat_tags(tags))


def _flat_tags(tags: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tags.items():
        if isinstance(value, Mapping):
            flat.update(_flat_tags(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else _param_str(value)
    return flat


def _flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flat_metrics(value, name + "/"))
        elif value is not None:
            try:
                flat[name] = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"metric {name!r}: {value!r} is not a number") from None
    return flat


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Copy a file (or a folder's files) into the active run's artifacts."""
    import mlflow

    _require_active_run()
    path = Path(path)
    with _server_calls():
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path)


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    """Write `data` as JSON/YAML (by the file's suffix) into the active run's artifacts."""
    import mlflow

    _require_active_run()
    with _server_calls():
        mlflow.log_dict(dict(data), artifact_file)


def _require_active_run() -> str:
    import mlflow

    run = mlflow.active_run()
    if run is None:  # MLflow would silently start a stray run in the active experiment
        raise TrackingError("no active MLflow run: call tood.engine.tracking.start_run(cfg, seed) first")
    return run.info.run_id


@contextlib.contextmanager
def _server_calls() -> Iterator[None]:
    """Report MLflow's error for a tracking server that stopped answering as a TrackingError that says
    what to do; other MLflow errors (a bad request, a missing run) pass through unchanged."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        uri = mlflow.get_tracking_uri()
        reason = unreachable_reason(uri) if _is_http(uri) else None
        if reason is None:
            raise
        raise TrackingError(
            f"MLflow tracking server {uri} stopped answering ({reason}), so this run stops rather than "
            "retry for minutes. Start the server again (same --backend-store-uri) and re-run the same "
            "command: training resumes from its last checkpoint and logs into the same MLflow run."
        ) from e


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block (MLflow reads its HTTP settings per call)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
