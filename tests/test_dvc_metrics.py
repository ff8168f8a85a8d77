"""The real `dvc metrics show` / `dvc exp show` on a temporary DVC repo holding the metrics files our code
writes: no "DVC failed to load some metrics" (issue 12: a key named `error` trips DVC's own error
detection), `dvc metrics show` is a table a person reads in a terminal (issue 18: it was 322 KB in 19
lines), and the docs' `dvc exp show` command (README or a docs/ page) runs and gives a readable table."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.evaluate_variant import DVC_MEANS, aggregate, dvc_means
from pipeline.pretrain_backbone import METRICS as PRETRAIN_METRICS
from tood.config import ModelConfig, load_params, resolve_run_config, variant_names
from tood.engine.evaluate import COCO_KEYS, alignment_stats, summarize_alignment
from tood.report.complexity import measure
from tood.report.tables import tabulate

REPO = Path(__file__).resolve().parents[1]
FAILED = "DVC failed to load some metrics"


def evaluate_output(params: dict, variant: str) -> dict:
    """A metrics file as pipeline.evaluate_variant writes it, every key from the real code paths, from a
    one-box image with a correct detection and an error one (IoU 0.4): DVC only trips on a truthy value."""
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    dets = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 4.0]])
    stats = alignment_stats(
        torch.full((1, 2), 0.5),
        gt,
        gt,
        torch.tensor([0]),
        dets,
        torch.tensor([0.9, 0.8]),
        torch.tensor([0, 0]),
    )
    assert (stats["n_correct"], stats["n_error"]) == (1, 1)
    per_seed = {k: 0.25 for k in COCO_KEYS} | {"per_class": {"ring": 0.25}} | summarize_alignment([stats])
    per_seed |= {"precision": "bf16", "device": "Intel(R) Xeon(R) Processor", "eval_device": "NVIDIA H200"}
    per_seed["curve"] = {
        "step": [264, 528],
        "epoch": [3, 6],
        "AP": [0.1, 0.25],
        "AP50": [0.2, 0.4],
    }  # issue 16
    cfg = resolve_run_config(params, variant)
    seeds = {str(s): per_seed | {"mlflow_run_id": f"run{s}"} for s in cfg.seeds}
    tiny = ModelConfig(depth=18, fpn_channels=16, gn_groups=4, stacked_convs=2)
    complexity = measure(tiny, 2, (64, 64), frozen_stages=-1).to_dict()
    return aggregate(cfg, seeds) | {"complexity": {"run": complexity, "paper_config": complexity}}


def _dvc(args: list[str], repo: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")} | {"DVC_NO_ANALYTICS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _git(args: list[str], repo: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True)


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    """The repo's params.yaml and dvc.yaml with every metrics file and summary.json (the tabulate stage's
    output from them), committed."""
    repo = tmp_path_factory.mktemp("dvc_repo")
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, repo / name)
    params = load_params(repo / "params.yaml")
    metrics = repo / "reports" / "metrics"
    metrics.mkdir(parents=True)
    (repo / "reports" / "means").mkdir()
    for v in variant_names(params):
        result = evaluate_output(params, v)
        (metrics / f"{v}.json").write_text(json.dumps(result, indent=2))
        (repo / "reports" / "means" / f"{v}.json").write_text(json.dumps(dvc_means(result), indent=2))
    (repo / "reports" / "pretrain.json").write_text(json.dumps(dict.fromkeys(PRETRAIN_METRICS, 0.5)))
    # summary.json from those files through the real tabulate: the evaluate output is what the report reads
    reports = repo / "reports"
    tabulate(
        params, metrics, repo / "runs", reports / "tables.md", reports / "summary.json", reports / "figures"
    )
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert _dvc(["init", "-q"], repo).returncode == 0
    _git(["add", "-A"], repo)
    _git(["commit", "-qm", "metrics"], repo)
    return repo


def test_metrics_show_is_one_short_row_per_variant(dvc_repo):
    proc = _dvc(["metrics", "show"], dvc_repo)
    assert proc.returncode == 0, proc.stderr
    assert FAILED not in proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    names = variant_names(load_params(REPO / "params.yaml"))
    assert len(lines) == 1 + len(names) + 1, proc.stdout  # header, a row per variant, the pretrain stage's
    assert max(map(len, lines)) <= 140, proc.stdout  # a terminal's width (it was 21,494 characters)
    header = lines[0].split()
    assert header[0] == "Path" and set(header[1:]) <= {*DVC_MEANS, "seeds", *PRETRAIN_METRICS}, header
    for v in names:
        row = next(line for line in lines if line.startswith(f"reports/means/{v}.json "))
        assert "." in row.split()[1], row  # the mean AP, a number on the 0-100 scale


def test_a_key_named_error_is_what_dvc_fails_on(dvc_repo, tmp_path):
    """The control: the same check does see the failure when a metrics file holds such a key."""
    repo = tmp_path / "repo"
    shutil.copytree(dvc_repo, repo)
    path = repo / "reports" / "means" / "tood.json"
    path.write_text(path.read_text().replace('"seeds"', '"error"'))
    proc = _dvc(["metrics", "show"], repo)
    assert FAILED in proc.stdout + proc.stderr


def test_readme_exp_show_command_gives_a_readable_table(dvc_repo):
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]  # README's topic pages (issue 29)
    (line,) = [x for p in pages for x in p.read_text().splitlines() if x.startswith("uv run dvc exp show")]
    args = shlex.split(line.split("  #")[0])
    assert args[:3] == ["uv", "run", "dvc"]
    proc = _dvc(args[3:], dvc_repo)
    assert proc.returncode == 0, proc.stderr
    header = [c.strip() for c in proc.stdout.splitlines()[0].strip("|").split("|")]
    variants = variant_names(load_params(REPO / "params.yaml"))
    assert sorted(header) == sorted(
        ["Experiment", "alpha", "beta", *(f"reports/means/{v}.json:AP" for v in variants)]
    )
    row = [c.strip() for c in proc.stdout.splitlines()[2].strip("|").split("|")]
    aps = [value for name, value in zip(header, row) if name.endswith(":AP")]
    assert len(aps) == len(variants) and all(float(x) > 0 for x in aps), row  # each variant's mean AP
