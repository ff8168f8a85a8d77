"""dvc.yaml, params.yaml and the profiles agree with each other (fast, static checks)."""

from pathlib import Path

import pytest
import yaml

from pipeline.profile import main as switch_profile
from tood.config import HEADLINE, load_params, load_run_config, variant_names

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_tabulate_deps_list_every_variant_explicitly(dvc_yaml):
    names = variant_names(load_params(REPO / "params.yaml"))
    deps = dvc_yaml["stages"]["tabulate"]["deps"]
    assert sorted(d for d in deps if d.startswith("reports/metrics/")) == sorted(
        f"reports/metrics/{v}.json" for v in names
    )
    assert sorted(d for d in deps if d.startswith("reports/curves/")) == sorted(
        f"reports/curves/{v}.csv" for v in names
    )


def test_only_the_headline_stage_reads_top_level_alpha_beta(dvc_yaml):
    stages = dvc_yaml["stages"]
    assert {"alpha", "beta"} <= set(stages["train_tood"]["params"])
    assert not {"alpha", "beta"} & set(stages["train"]["do"]["params"])
    assert "variants.${key}" in stages["train"]["do"]["params"]
    assert stages["train"]["foreach"] == "${variants}"
    for name in ("train_tood", "evaluate_tood"):
        assert f"--variant {HEADLINE}" in stages[name]["cmd"]


def test_every_stage_depends_on_the_code_it_runs(dvc_yaml):
    stages = dvc_yaml["stages"]
    for name in ("train_tood", "evaluate_tood"):
        assert "tood" in stages[name]["deps"]
    for name in ("train", "evaluate"):
        assert "tood" in stages[name]["do"]["deps"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        module = body["cmd"].split("python -m ")[1].split()[0]
        assert module.replace(".", "/") + ".py" in body["deps"], name


def test_repo_params_is_the_shapes_profile():
    assert (REPO / "params.yaml").read_bytes() == (REPO / "profiles" / "shapes.yaml").read_bytes()


def test_coco_profile_is_the_reference_recipe(tmp_path):
    target = tmp_path / "params.yaml"
    switch_profile(["coco", "--params", str(target)])
    cfg = load_run_config(target, HEADLINE)
    assert cfg.data.dataset == "coco2017" and cfg.data.img_scale == (1333, 800)
    assert (cfg.model.depth, cfg.model.pretrained, cfg.model.fpn_channels, cfg.model.stacked_convs) == (
        50,
        "imagenet",
        256,
        6,
    )
    assert (cfg.optim.lr, cfg.optim.warmup_iters, cfg.optim.steps, cfg.train.epochs, cfg.train.batch_size) == (
        0.01, 500, (8, 11), 12, 16,
    )  # fmt: skip
    assert (cfg.assign.alpha, cfg.assign.beta, cfg.assign.topk, cfg.assign.warmup_epochs) == (1.0, 6.0, 13, 4)
    assert (cfg.eval.score_thr, cfg.eval.nms_iou, cfg.eval.nms_pre, cfg.eval.max_per_img) == (
        0.05,
        0.6,
        1000,
        100,
    )
    assert variant_names(load_params(target)) == variant_names(load_params(REPO / "params.yaml"))


def test_ci_runs_the_readme_test_command():
    ci = [line for line in (REPO / ".ci/run").read_text().splitlines() if "uv run" in line]
    assert len(ci) == 1 and ci[0] in (REPO / "README.md").read_text()
