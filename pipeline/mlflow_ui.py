"""Start the MLflow UI on the pipeline's store and print the link that opens on the runs table.

    uv run python -m pipeline.mlflow_ui                # http://127.0.0.1:5000 over mlflow.db at the repo root
    uv run python -m pipeline.mlflow_ui --port 5001

Store: $MLFLOW_TRACKING_URI when set (it overrides the default), else sqlite:///<repo>/mlflow.db, the
SQLite file every training run logs to (<repo> is $DVC_ROOT when set, else this checkout).

The printed link goes through /tood/open, a page this server adds (tood/engine/mlflow_app.py) that stores
in the browser what MLflow keeps only there: the model-training view (MLflow 3.17/3.18 open every page of a
fresh browser in the GenAI view whatever the experiment's tags say), UI telemetry off and its notice
dismissed, the Assistant panel closed. It then opens the runs table with AP, head, assigner, anchor, alpha
and beta columns. The server runs with one worker and no job runner (~0.5 GB instead of 2.8 GB); Ctrl-C
stops it. If MLFLOW_TRACKING_URI names a server already, this only prints the plain link into it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from pipeline.cli import CliError, prog, run
from tood.engine import tracking


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog(__spec__),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"store now: {tracking.store_uri()}",  # what this call would open, env included
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on (default: 5000)")
    args = parser.parse_args(argv)

    uri = tracking.configure_tracking()
    experiment_id = tracking.experiment_id()
    if uri.startswith(("http://", "https://")):
        print(f"MLflow UI: {tracking.runs_page_url(uri, experiment_id)}", flush=True)
        return 0
    base = f"http://{args.host}:{args.port}"
    check_app_installed()
    # SIGTERM would end this process without `finally` and leave the server running on its own
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    server = subprocess.Popen(
        server_command(uri, args.host, args.port),
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    try:
        _wait_until_up(server, base)
        print(f"\nMLflow UI: {tracking.runs_page_url(base, experiment_id, via_open_page=True)}\n", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)


def server_command(store_uri: str, host: str, port: int) -> list[str]:
    """`mlflow server` over `store_uri` with one worker (the default 4 take ~2.3 GB more), serving our app:
    MLflow's own plus the page that opens the UI in the model-training view (tood/engine/mlflow_app.py)."""
    return [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri,
        "--host", host, "--port", str(port), "--workers", "1", "--app-name", APP_NAME,
    ]  # fmt: skip


APP_NAME = "tood-ui"  # pyproject.toml's [project.entry-points."mlflow.app"]


def check_app_installed() -> None:
    """`mlflow server --app-name tood-ui` finds the app through the project's installed entry points, which
    an environment synced before the app existed lacks: say so, rather than let mlflow fail with a usage
    error about --app-name."""
    from importlib.metadata import entry_points

    if not any(ep.name == APP_NAME for ep in entry_points(group="mlflow.app")):
        raise CliError(
            f"the MLflow app {APP_NAME!r} is not installed in this environment (pyproject.toml's mlflow.app "
            "entry point): run `uv sync` in the repo, or start the UI with `uv run python -m pipeline.mlflow_ui`"
        )


def _wait_until_up(server: subprocess.Popen, base: str) -> None:
    """Until `base` answers; no time limit (a cold start on busy cores can take minutes), only the exit."""
    while tracking.unreachable_reason(base, timeout=2.0) is not None:
        if server.poll() is not None:
            raise SystemExit(f"mlflow server exited with code {server.returncode} (is {base} in use?)")
        time.sleep(0.5)


if __name__ == "__main__":
    run(main)
