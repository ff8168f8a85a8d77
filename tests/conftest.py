"""Shared test settings: offline, quiet tools; tests never touch the repo's own stores."""

import os
import shutil
import subprocess

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium. CI runs as root with Debian's packages reachable, so a missing browser is
    installed there (~20 s, once per session); elsewhere the tests that need it skip, saying why."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=900, check=False
        )
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("needs a headless browser (Debian: apt-get install -y chromium)")
    return found
