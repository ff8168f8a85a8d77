"""The app `pipeline.mlflow_ui` serves: MLflow's own server app plus one page, OPEN_PATH (tood.engine.tracking).

MLflow 3.17's UI keeps three choices only in the browser's localStorage, where no server setting, experiment
tag or environment variable reaches them (read from the UI bundle of mlflow 3.17.2; keys are `<key>_v<version>`
holding JSON):

* the workflow view, `mlflow.workflowType` (default "genai"). `?workflowType=machine_learning` in a URL
  overrides it for that page only, so a run opened from the runs table showed "Evaluations" and the GenAI
  sidebar (issue 18);
* the UI telemetry switch and its notice, "MLflow collects usage data", shown until dismissed even when the
  server runs with MLFLOW_DISABLE_TELEMETRY (the server then already refuses UI telemetry records);
* the MLflow Assistant panel, which opens by itself on a first visit and takes a third of the page.

An experiment's runs-table state (columns, their order and widths, sorting, ...) lives there too, as JSON
under `MLflowLocalStorage-1.1-ExperimentPage-["<experiment id>"]-ReactComponentState`; MLflow's runs page
writes it on every visit (Source/Models/Dataset columns in a fresh browser). The one server-side way to other columns is a view
stored as an experiment tag and named in the URL (`viewStateShareKey`), which the UI shows under a "You're
viewing a shared view... Override saved view / Exit shared view" banner (issue 29).

OPEN_PATH is a tiny page on the UI's own origin (localStorage is per origin) that stores those choices and
then replaces itself with the UI route after its '#': `/tood/open#/experiments/1/runs?...`. For a route into
an experiment it also copies the experiment's stored view (tag RUNS_VIEW_TAG, tood.engine.tracking) into that
experiment's table state, unless the browser already shows columns other than MLflow's defaults (the
reader's own choice wins). Every link we print or write goes through it. It is registered for
`mlflow server --app-name tood-ui` by the `mlflow.app` entry point in pyproject.toml (the mechanism MLflow's
own basic-auth app uses).
"""

from __future__ import annotations

import json

from mlflow.server.fastapi_app import app
from starlette.requests import Request
from starlette.responses import HTMLResponse

from tood.engine.tracking import OPEN_PATH, RUNS_VIEW_TAG

UI_SETTINGS = {
    "mlflow.workflowType_v1": "machine_learning",
    "mlflow.settings.telemetry.enabled_v1": False,
    "mlflow.telemetry.info.alert.dismissed_v1": True,
    "mlflow.assistant.panelOpen_v1": False,
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,  # as if it had opened once: it stays closed
}

# the runs table's columns in a fresh browser (the UI's default selectedColumns)
MLFLOW_DEFAULT_COLUMNS = ["attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`"]

PAGE = r"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>MLflow (tood)</title></head>
<body>Opening MLflow in the model-training view...
<script>
for (const [key, value] of Object.entries(SETTINGS)) localStorage.setItem(key, JSON.stringify(value));
// only routes of this UI: "#/..." after the page's own path
const route = location.hash.startsWith("#/") ? location.hash : "#/";

// An experiment's page: its runs table in the experiment's stored view, unless the reader chose columns.
async function storeRunsView() {
  const experiment = /^#\/experiments\/(\d+)(?:[\/?]|$)/.exec(route);
  if (!experiment) return;
  const key = `MLflowLocalStorage-1.1-ExperimentPage-${JSON.stringify([experiment[1]])}-ReactComponentState`;
  const state = JSON.parse(localStorage.getItem(key) || "{}");
  if (state.selectedColumns && JSON.stringify(state.selectedColumns) !== JSON.stringify(DEFAULT_COLUMNS)) return;
  const response = await fetch(`/ajax-api/2.0/mlflow/experiments/get?experiment_id=${experiment[1]}`);
  const tags = (await response.json()).experiment.tags || [];
  const view = tags.find((tag) => tag.key === VIEW_TAG);
  if (view) localStorage.setItem(key, JSON.stringify({...state, ...JSON.parse(view.value)}));
}
storeRunsView().catch(() => {}).finally(() => location.replace("/" + route));
</script></body></html>
"""
for name, value in {
    "SETTINGS": UI_SETTINGS, "DEFAULT_COLUMNS": MLFLOW_DEFAULT_COLUMNS, "VIEW_TAG": RUNS_VIEW_TAG
}.items():  # fmt: skip
    PAGE = PAGE.replace(name, json.dumps(value))


@app.middleware("http")
async def open_page(request: Request, call_next):
    """OPEN_PATH answers with PAGE; every other request goes to MLflow unchanged."""
    if request.url.path == OPEN_PATH:
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})
    return await call_next(request)
