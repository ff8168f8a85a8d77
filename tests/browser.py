"""Headless Chromium for the tests that check what a reader sees (the `chromium` fixture is in conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
# every host name fails to resolve and every proxied request goes to a closed port: a machine without internet
NO_NETWORK = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9"]


def screenshot(chromium: str, url: str, out: Path, *, offline: bool, size: str = "1400,1000") -> Path:
    """A PNG of `url` after its scripts have run (virtual time: no wall-clock wait), in a fresh profile."""
    flags = [
        *FLAGS,
        *(NO_NETWORK if offline else []),
        f"--user-data-dir={out.parent / (out.stem + '-profile')}",
    ]
    flags += [f"--window-size={size}", "--virtual-time-budget=15000", f"--screenshot={out}"]
    subprocess.run([chromium, *flags, url], capture_output=True, timeout=180, check=True)
    return out
