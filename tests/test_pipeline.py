"""dvc.yaml, params.yaml and the profiles agree with each other (fast, static checks)."""

from pathlib import Path

import pytest
import yaml

from pipeline.profile import main as switch_profile
from tood.config import HEADLINE, load_params, load_run_config, resolve_run_config, variant_names

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


# ---------------------------------------------------------------------------------------------------
# issue 20: the extended grid is the default grid plus new variants, nothing else

EXTENDED = {"extended": "shapes", "quick_extended": "quick"}


@pytest.mark.parametrize(("name", "base"), sorted(EXTENDED.items()))
def test_extended_profiles_are_their_base_plus_only_new_variants(name, base):
    ext = yaml.safe_load((REPO / "profiles" / f"{name}.yaml").read_text())
    ref = yaml.safe_load((REPO / "profiles" / f"{base}.yaml").read_text())
    assert {k: v for k, v in ext.items() if k != "variants"} == {
        k: v for k, v in ref.items() if k != "variants"
    }
    assert list(ext["variants"])[: len(ref["variants"])] == list(ref["variants"])  # same entries, same order
    assert {k: ext["variants"][k] for k in ref["variants"]} == ref["variants"]
    new = {k: v for k, v in ext["variants"].items() if k not in ref["variants"]}
    other = yaml.safe_load((REPO / "profiles" / "extended.yaml").read_text())["variants"]
    assert new == {k: v for k, v in other.items() if k not in ref["variants"]}  # both add the same entries
    assert set(new) == {
        "tood_m5", "tood_m9", "tood_m17", "tood_m21", "parallel_tal_1p5x", "tap_tal_1p5x",
        "parallel_max_iou", "parallel_fovea", "parallel_fcos", "parallel_atss_qfl",
    }  # fmt: skip


def test_extended_variants_resolve_to_their_rows(tmp_path):
    params = load_params(REPO / "profiles" / "extended.yaml")
    for m in (5, 9, 17, 21):
        cfg = resolve_run_config(params, f"tood_m{m}")
        assert (cfg.model.head, cfg.assign.assigner, cfg.assign.topk) == ("tood", "tal", m)
        assert (cfg.assign.alpha, cfg.assign.beta) == (1.0, 6.0)
    for name, tap in (("parallel_tal_1p5x", False), ("tap_tal_1p5x", True)):
        cfg = resolve_run_config(params, name)
        assert (cfg.model.head, cfg.model.tap, cfg.assign.assigner) == ("parallel", tap, "tal")
        assert (cfg.train.epochs, cfg.optim.steps, cfg.assign.warmup_epochs) == (36, (24, 33), 4)  # 1.5 x 24
    quick = resolve_run_config(load_params(REPO / "profiles" / "quick_extended.yaml"), "tap_tal_1p5x")
    assert (quick.train.epochs, quick.optim.steps) == (9, (6, 7))  # quick: 6 epochs, steps [4, 5]
    cfg = resolve_run_config(params, "parallel_max_iou")
    assert (cfg.assign.assigner, cfg.model.anchor, cfg.assign.max_iou_pos, cfg.assign.max_iou_neg) == (
        "max_iou", "based", 0.5, 0.4,
    )  # fmt: skip
    assert resolve_run_config(params, "parallel_fovea").assign.fovea_sigma == 0.4
    assert resolve_run_config(params, "parallel_fcos").assign.assigner == "fcos"
    qfl = resolve_run_config(params, "parallel_atss_qfl")
    assert (qfl.assign.assigner, qfl.loss.cls_target) == ("atss", "iou")


def test_switching_profiles_rewrites_only_the_tabulate_lists_and_back(tmp_path):
    committed = (REPO / "dvc.yaml").read_text()
    (tmp_path / "dvc.yaml").write_text(committed)
    target = tmp_path / "params.yaml"
    switch_profile(["extended", "--params", str(target)])
    extended = (tmp_path / "dvc.yaml").read_text()
    names = variant_names(load_params(target))
    deps = yaml.safe_load(extended)["stages"]["tabulate"]["deps"]
    assert [d for d in deps if d.startswith("reports/metrics/")] == [
        f"reports/metrics/{v}.json" for v in names
    ]
    assert [d for d in deps if d.startswith("reports/curves/")] == [f"reports/curves/{v}.csv" for v in names]
    removed = set(committed.splitlines()) - set(extended.splitlines())
    assert not removed and len(extended.splitlines()) == len(committed.splitlines()) + 20
    switch_profile(["quick", "--params", str(target)])
    assert (tmp_path / "dvc.yaml").read_text() == committed
    switch_profile(["quick_extended", "--params", str(target)])
    switch_profile(["shapes", "--params", str(target)])
    assert (tmp_path / "dvc.yaml").read_text() == committed
    assert target.read_bytes() == (REPO / "profiles" / "shapes.yaml").read_bytes()
