"""The real `dvc repro` in a temporary copy of the repo: a misspelt params key fails fast and names itself,
the check re-runs nothing downstream for nothing, and a user's COCO folder is never written to."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from coco_quirks import TRAIN_ANN, TRAIN_IMAGES, VAL_ANN, VAL_IMAGES, make_quirky_coco, snapshot
from test_end_to_end import make_tiny_repo

REPO = Path(__file__).resolve().parents[1]


def _dvc(args: list[str], repo: Path, env: dict) -> tuple[int, str, set[str], float]:
    """(exit code, output, names of the stages that ran, seconds)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], check=False, cwd=repo, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    return proc.returncode, log, ran, time.perf_counter() - start


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny-profile copy of the repo in which `dvc repro data` has run once."""
    repo = tmp_path_factory.mktemp("guards")
    env = make_tiny_repo(repo)
    code, log, ran, _ = _dvc(["repro", "data"], repo, env)
    assert code == 0 and ran == {"check_params", "data"}, log
    return repo, env


def _paths(entries: list) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries or []}


def test_every_stage_without_an_upstream_stage_waits_for_the_params_check():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    bodies = {name: stage.get("do", stage) for name, stage in stages.items()}
    produced = {
        name: _paths(b.get("outs")) | _paths(b.get("metrics")) | _paths(b.get("plots"))
        for name, b in bodies.items()
    }
    stamp = "data/params.checked"
    assert produced["check_params"] == {stamp} and "params.yaml" in bodies["check_params"]["deps"]
    for name, body in bodies.items():
        if name == "check_params":
            continue
        deps = set(body.get("deps", []))
        upstream = [other for other, outs in produced.items() if other != name and deps & outs]
        assert upstream, f"stage {name} has no upstream stage, so it could start before check_params"
        assert stamp not in deps or upstream == ["check_params"], (
            f"{name}: the stamp belongs to root stages only"
        )


def _edit_params(repo: Path, edit) -> str:
    """Apply edit(params dict) to params.yaml; returns the original text (to restore)."""
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return original


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda p: p.update(alhpa=0.5), "alhpa"),  # top level: no stage lists it
        (lambda p: p["train"].update(epochs_=3), "train.epochs_"),
        (lambda p: p["variants"]["parallel_atss"].update(heads="tood"), "variants.parallel_atss.heads"),
    ],
)
def test_a_misspelt_key_fails_the_next_repro_in_seconds_naming_it(repo, edit, key):
    repo, env = repo
    original = _edit_params(repo, edit)
    try:
        code, log, ran, seconds = _dvc(["repro"], repo, env)  # the whole pipeline, training included
    finally:
        (repo / "params.yaml").write_text(original)
    assert code != 0 and (f"{key}: unknown" in log or f"key '{key}'" in log), log
    assert ran == {"check_params"}, log  # nothing else started
    assert seconds < 60, seconds  # DVC's own start-up plus ~0.3 s of checking; training would take minutes


@pytest.mark.slow
def test_a_valid_edit_reruns_the_check_and_nothing_more_for_it(repo):
    repo, env = repo
    original = _edit_params(repo, lambda p: p["train"].update(epochs=3))  # only the train stages read it
    try:
        code, log, ran, _ = _dvc(["repro", "data"], repo, env)
        assert code == 0 and ran == {"check_params"}, log  # the stamp is unchanged: `data` is not re-run
        _edit_params(repo, lambda p: p["shapes"].update(num_val=3))
        code, log, ran, _ = _dvc(["repro", "data"], repo, env)
        assert code == 0 and ran == {"check_params", "data"}, log
    finally:
        (repo / "params.yaml").write_text(original)
        assert _dvc(["repro", "data"], repo, env)[0] == 0


def _point_data_at(params: dict, root: Path, dataset: str) -> None:
    params["data"].update(dataset=dataset, root=str(root), train_images=TRAIN_IMAGES, train_ann=TRAIN_ANN)
    params["data"].update(val_images=VAL_IMAGES, val_ann=VAL_ANN)


@pytest.mark.slow
def test_shapes_pointed_at_a_users_folder_fails_and_leaves_it_alone(repo, tmp_path):
    repo, env = repo
    users = make_quirky_coco(tmp_path / "my coco")
    before = snapshot(users)
    original = _edit_params(repo, lambda p: _point_data_at(p, users, "shapes"))
    try:
        code, log, ran, _ = _dvc(["repro", "data"], repo, env)
    finally:
        (repo / "params.yaml").write_text(original)
    assert (
        code != 0 and "data.root" in log and f"{users} already exists and was not made by the shapes" in log
    )
    assert snapshot(users) == before and ran == {"check_params", "data"}


@pytest.mark.slow
def test_a_users_coco_folder_goes_through_the_data_stage_untouched(repo, tmp_path):
    repo, env = repo
    users = make_quirky_coco(tmp_path / "my coco")
    before = snapshot(users)
    original = _edit_params(repo, lambda p: _point_data_at(p, users, "coco"))
    try:
        code, log, ran, _ = _dvc(["repro", "data"], repo, env)
        manifest = yaml.safe_load((repo / "data" / "manifest.json").read_text())
        report = (repo / "reports" / "data_stats.md").read_text()
    finally:
        (repo / "params.yaml").write_text(original)
    assert code == 0 and ran == {"check_params", "data"}, log
    assert snapshot(users) == before
    assert manifest["dataset"] == "coco" and manifest["splits"]["val"]["left_out_annotation_ids"] == [24, 25]
    assert "## Your COCO folder" in report and "| val | 24 | 11 |" in report
