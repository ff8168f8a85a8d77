"""Docs and generated reports name commands that exist (issue 12: data_stats.md named `pipeline.make_data`)."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"python -m ((?:pipeline|bench|tood)\.[A-Za-z_][\w.]*)")


def test_every_python_m_command_in_code_and_docs_names_a_module_of_the_repo():
    tracked = subprocess.run(
        ["git", "ls-files", "*.py", "*.md"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    found = {}
    for rel in tracked:
        if rel.startswith("reports/"):  # generated: checked through the code that writes them
            continue
        for module in COMMAND.findall((REPO / rel).read_text(encoding="utf-8")):
            found.setdefault(module, rel)
    assert "pipeline.prepare_data" in found  # tood/data/shapes.py writes it into reports/data_stats.md
    missing = {m: rel for m, rel in found.items() if not (REPO / (m.replace(".", "/") + ".py")).is_file()}
    assert not missing, missing
