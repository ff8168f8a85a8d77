"""bench.gpu_check (issue 29): the prepared GPU check runs end to end on a CPU with --tiny, so it cannot rot
before a GPU is at hand, and its report holds real measurements; asked for CUDA where there is none, it
stops with one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.gpu_check import SECTIONS, environment, run_section
from bench.gpu_report import markdown
from bench.gpu_speed import TOLERANCE

REPO = Path(__file__).resolve().parents[1]


def _check(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    cmd = [sys.executable, "-m", "bench.gpu_check", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("gpu")
    proc = _check(["--device", "cpu", "--tiny", "--out-dir", str(out)])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (json_path,) = out.glob("*-cpu-tiny.json")
    return json.loads(json_path.read_text()), json_path.with_suffix(".md").read_text(), out


@pytest.mark.slow
def test_cpu_tiny_check_passes_every_section(tiny_report):
    report, _, _ = tiny_report
    assert tuple(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert section["ok"] and section["checks"] and _positive(section["seconds"]), (name, section)
    env = report["sections"]["environment"]
    assert env["torch"] == torch.__version__ and env["cpu"]["model"] and env["git"]["commit"]


@pytest.mark.slow
def test_cpu_tiny_report_holds_real_measurements(tiny_report):
    sections = tiny_report[0]["sections"]
    for phase, figures in sections["amp"]["phases"].items():
        diff = figures["rel_diff"]["loss"]
        assert math.isfinite(figures["fp32"]["loss"]) and 0 <= diff <= TOLERANCE[phase]
        assert figures["fp32"]["loss"] != figures["bf16"]["loss"]  # two precisions really ran
    assert len(sections["amp"]["bf16_step_losses"]) == 3
    for figures in sections["train_throughput"]["by_amp"].values():
        assert _positive(figures["images_per_s"]) and _positive(figures["process_peak_rss_mib"])
    ev = sections["eval_throughput"]
    assert _positive(ev["images_per_s"]) and _positive(ev["coco_val_extrapolated_s"])
    assert all(_positive(s) for s in ev["phase_s"].values())  # run_inference, cocoeval
    assert ev["detections_per_image"] > 0  # score_thr 0: the post-processing had boxes to suppress
    ddp = sections["distributed"]
    assert ddp["reduce"]["backend"] == "gloo" and ddp["world_size"] == 1
    assert 1 <= ddp["killed"]["epoch"] < ddp["final"]["epoch"] == 3
    assert ddp["final"]["iteration"] > ddp["killed"]["iteration"] > 0
    quick = sections["quick_profile"]
    assert [s["stage"] for s in quick["stages"]][-1] == "tabulate" and _positive(quick["total_s"])
    assert all(0.0 <= run["AP"] <= 1.0 for run in quick["runs"].values())


@pytest.mark.slow
def test_cpu_tiny_markdown_summary_and_tables_beside_it(tiny_report):
    report, md, out = tiny_report
    for name in SECTIONS:
        assert f"| {name} | pass |" in md and f"## {name}" in md
    assert "FAIL" not in md and report["sections"]["environment"]["torch"] in md
    tables = out / Path(report["sections"]["quick_profile"]["tables"]["path"]).name
    assert tables.parent == out and "Table 1" in tables.read_text()


def test_cuda_where_there_is_none_fails_with_one_clear_line(tmp_path):
    proc = _check(["--out-dir", str(tmp_path / "out")], env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench.gpu_check: error: --device cuda"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_a_failing_section_is_recorded_and_the_others_still_reported():
    start = time.monotonic()
    report = {"started": "t", "command": "c", "device": "cpu", "tiny": True, "sections": {}}
    report["sections"]["environment"] = run_section(
        "environment", lambda: environment(torch.device("cpu")), start
    )
    report["sections"]["amp"] = run_section("amp", lambda: 1 / 0, start)
    assert report["sections"]["environment"]["ok"] and not report["sections"]["amp"]["ok"]
    assert report["sections"]["amp"]["error"] == "ZeroDivisionError: division by zero"
    md = markdown(report)
    assert "| amp | **FAIL** |" in md and "| environment | pass |" in md and "ZeroDivisionError" in md
