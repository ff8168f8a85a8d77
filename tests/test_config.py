"""params.yaml -> typed config: strict keys, types and ranges; round trip of the resolved config."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from tood.config import (
    HEADLINE,
    ConfigError,
    RunConfig,
    load_params,
    load_run_config,
    resolve_run_config,
    variant_names,
)

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


def _params() -> dict:
    return yaml.safe_load(PARAMS.read_text())


def _resolve(params: dict, variant: str = HEADLINE) -> RunConfig:
    return resolve_run_config(params, variant, where="params.yaml")


def test_every_variant_of_the_repo_params_loads():
    params = load_params(PARAMS)
    names = variant_names(params)
    assert names[0] == HEADLINE and len(names) == len(set(names))
    for name in names:
        cfg = load_run_config(PARAMS, name)
        assert cfg.variant == name


def test_headline_takes_top_level_alpha_beta_and_cells_keep_their_own():
    params = _params()
    params["alpha"], params["beta"] = 0.5, 4
    headline = _resolve(params)
    assert (headline.assign.alpha, headline.assign.beta) == (0.5, 4.0)
    assert isinstance(headline.assign.beta, float)  # `-S beta=4` writes an int; it is stored as 4.0
    cell = _resolve(params, "a15_b8")
    assert (cell.assign.alpha, cell.assign.beta) == (1.5, 8.0)
    assert _resolve(params, "parallel_atss").assign.alpha == params["assign"]["alpha"]


def test_variant_overrides_route_to_model_and_assign():
    cfg = _resolve(_params(), "ab_parallel_atss")
    assert (cfg.model.head, cfg.model.anchor, cfg.assign.assigner) == ("parallel", "based", "atss")


def test_resolved_config_round_trips(tmp_path):
    cfg = _resolve(_params(), "a05_b2")
    cfg.save(tmp_path / "config.json")
    again = RunConfig.load(tmp_path / "config.json")
    assert again == cfg
    assert again.data.img_scale == cfg.data.img_scale and isinstance(again.data.img_scale, tuple)
    flat = cfg.flat()
    assert (
        flat["assign.alpha"] == 0.5 and flat["model.head"] == "tood" and flat["data.img_scale"] == [128, 128]
    )


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda p: p.update(alpha=-1.0), ["params.yaml: alpha: -1.0", ">= 0.0"]),  # not as assign.alpha
        (lambda p: p.update(beta="six"), ["params.yaml: beta: 'six'", "number"]),
        (lambda p: p["assign"].update(alpha=-1.0), ["assign.alpha", "-1.0", ">= 0.0"]),
        (lambda p: p["optim"].update(lr=-0.01), ["optim.lr", "-0.01", "> 0.0"]),
        (lambda p: p["optim"].update(lr=0), ["optim.lr", "0", "> 0.0"]),
        (lambda p: p["model"].update(head="retina"), ["model.head", "'retina'", "'tood'", "'parallel'"]),
        (
            lambda p: p["variants"]["thead_atss"].update(assigner="simota"),
            ["params.yaml: variants.thead_atss.assigner: 'simota'", "'atss'"],  # where it was written
        ),
        (lambda p: p["model"].update(anchor="both"), ["model.anchor", "'both'", "'free'", "'based'"]),
        (lambda p: p["model"].update(depth=152), ["model.depth", "152", "18"]),
        (lambda p: p["model"].update(pretrained=True), ["model.pretrained", "True", "str"]),
        (lambda p: p["train"].update(epochs=2.5), ["train.epochs", "2.5", "int"]),
        (lambda p: p["train"].update(epochs=True), ["train.epochs", "True", "int"]),
        (lambda p: p["train"].update(batchsize=8), ["train.batchsize", "unknown key"]),
        (lambda p: p["data"].update(img_scale=[128]), ["data.img_scale", "2 entries"]),
        (lambda p: p["optim"].update(steps=[11, 8]), ["optim.steps", "increasing"]),
        (lambda p: p["variants"]["a1_b8"].update(alpah=2.0), ["variants.a1_b8.alpah", "unknown override"]),
        (lambda p: p["headline"].update(alpha=2.0), ["headline.alpha", "top-level"]),
        (lambda p: p.update(seeds=[]), ["seeds", "empty"]),
        (lambda p: p.update(extra=1), ["extra", "unknown top-level key"]),
        (lambda p: p["model"].update(gn_groups=7), ["model.gn_groups", "7", "fpn_channels"]),
        (lambda p: p["variants"].update({"a0.5_b3": {"alpha": 0.5}}), ["variants.a0.5_b3", "a05_b2"]),
    ],
)
def test_bad_values_are_rejected_with_key_value_and_allowed(tmp_path, edit, needles):
    params = _params()
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as err:
        for name in variant_names(load_params(path)):
            load_run_config(path, name)
    message = str(err.value)
    for needle in needles:
        assert needle in message, message


def test_unknown_variant_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="unknown variant 'nope'.*tood"):
        load_run_config(PARAMS, "nope")
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("alpha: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_configs_are_frozen():
    cfg = _resolve(_params())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.assign.alpha = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variant", "key", "value", "expected"),
    [
        # issue 18: these were reported as `assign.alpha` / `assign.assigner` / `model.gn_groups`, sections
        # that hold only valid values, so the user could not find the mistake
        ("a05_b2", "alpha", -2, "params.yaml: variants.a05_b2.alpha: -2.0 is out of range; must be >= 0.0"),
        ("parallel_atss", "assigner", "atts", "params.yaml: variants.parallel_atss.assigner: 'atts' is not"),
        (
            "a05_b4",
            "gn_groups",
            7,
            "params.yaml: variants.a05_b4.gn_groups: 7 must divide model.fpn_channels",
        ),
        ("a05_b4", "topk", "13", "params.yaml: variants.a05_b4.topk: '13' should be int"),
    ],
)
def test_a_bad_variant_value_is_named_where_it_was_written(variant, key, value, expected):
    params = _params()
    params["variants"][variant][key] = value
    with pytest.raises(ConfigError) as err:
        _resolve(params, variant)
    assert str(err.value).startswith(expected), err.value
    assert "assign." not in str(err.value) and "model." + key not in str(err.value)


def test_a_section_name_inside_a_variant_gets_no_misleading_suggestion():
    params = _params()
    params["variants"]["a05_b4"]["train"] = {"epochs": 3}
    with pytest.raises(ConfigError) as err:
        _resolve(params, "a05_b4")
    message = str(err.value)
    assert message.startswith("params.yaml: variants.a05_b4.train: unknown override"), message
    assert "did you mean" not in message and "shared top-level section" in message  # was: 'pretrained'?
    params["variants"]["a05_b4"] = {"alhpa": 0.5}
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):  # a real near-miss keeps its hint
        _resolve(params, "a05_b4")


# ---------------------------------------------------------------------------------------------------
# issue 20: loss overrides, the `schedule` multiplier and the new switches' checks


def test_variant_schedule_scales_epochs_and_lr_steps_and_nothing_else():
    params = _params()
    params["variants"]["long"] = {"head": "parallel", "assigner": "tal", "schedule": 1.5}
    params["train"]["epochs"], params["optim"]["steps"] = 12, [8, 11]  # the recipe's 1x
    cfg, base = _resolve(params, "long"), _resolve(params, "parallel_tal")
    assert (cfg.train.epochs, cfg.optim.steps) == (18, (12, 16))  # mmdet's 1.5x (PAA: 18, [12, 16])
    assert cfg.assign.warmup_epochs == base.assign.warmup_epochs == 4  # the reference's fixed 4 epochs
    same = dataclasses.replace(cfg, variant=base.variant, train=base.train, optim=base.optim)
    assert same == base
    params["train"]["epochs"], params["optim"]["steps"] = 6, [4, 5]
    assert (_resolve(params, "long").train.epochs, _resolve(params, "long").optim.steps) == (9, (6, 7))


def test_variant_overrides_route_to_loss():
    params = _params()
    params["variants"]["gfl"] = {"head": "parallel", "assigner": "atss", "cls_target": "iou", "qfl_beta": 1.5}
    cfg = _resolve(params, "gfl")
    assert (cfg.loss.cls_target, cfg.loss.qfl_beta, cfg.loss.box_weight) == ("iou", 1.5, 2.0)


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ({"schedule": 1.3}, ["variants.bad.schedule: 1.3 x train.epochs (24) = 31.2 is not a whole number"]),
        ({"schedule": 0}, ["variants.bad.schedule: 0.0 is out of range; must be > 0"]),
        ({"schedule": "long"}, ["variants.bad.schedule: 'long' should be a number"]),
        ({"tap": True}, ["variants.bad.tap: true needs model.head: parallel (got 'tood'"]),
        (
            {"head": "parallel", "assigner": "tal", "cls_target": "iou"},
            ["variants.bad.cls_target: 'iou'", "TAL"],
        ),
        ({"cls_target": "soft"}, ["variants.bad.cls_target: 'soft' is not allowed", "'iou'"]),
        ({"assigner": "simota"}, ["variants.bad.assigner: 'simota'", "'max_iou'", "'fovea'", "'fcos'"]),
        ({"max_iou_neg": 0.6}, ["variants.bad.max_iou_neg: 0.6 is above assign.max_iou_pos (0.5)"]),
        ({"fovea_sigma": 0}, ["variants.bad.fovea_sigma: 0.0 is out of range; must be > 0.0"]),
        ({"fovea_scale_ranges": [[1, 64], [64, 32]]}, ["variants.bad.fovea_scale_ranges", "[low, high]"]),
        ({"fcos_range_bounds": [64, 32, 256, 512]}, ["variants.bad.fcos_range_bounds", "must increase"]),
        ({"fcos_range_bounds": [64, 128]}, ["variants.bad.fcos_range_bounds", "one per boundary of P3-P7"]),
        ({"cls_targt": "iou"}, ["variants.bad.cls_targt: unknown override (did you mean 'cls_target'?)"]),
    ],
)
def test_issue20_settings_are_checked_and_named_where_written(override, needles):
    params = _params()
    params["variants"]["bad"] = override
    with pytest.raises(ConfigError) as err:
        _resolve(params, "bad")
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_headline_takes_no_schedule():
    params = _params()
    params["headline"]["schedule"] = 1.5
    with pytest.raises(ConfigError, match="headline.schedule"):
        _resolve(params)


@pytest.mark.parametrize(
    ("stats", "needle"),
    [
        ({"alpha": 0.7}, "stats.alpha: 0.7 is out of range; must be > 0.0 and <= 0.25"),
        ({"margin_ap": 0}, "stats.margin_ap: 0.0 is out of range; must be > 0.0"),
        ({"power": 1.0}, "stats.power: 1.0 is out of range"),
        ({"margin": 0.5}, "stats.margin: unknown key (did you mean 'margin_ap'?)"),
        (
            {"replications": "bench/precision/fp32"},
            "stats.replications: 'bench/precision/fp32' should be a list",
        ),
    ],
)
def test_stats_section_is_checked_and_named(stats, needle):
    from tood.config import load_stats_config

    with pytest.raises(ConfigError) as err:
        load_stats_config({"stats": stats}, "params.yaml")
    assert needle in str(err.value) and str(err.value).startswith("params.yaml: "), str(err.value)


def test_stats_defaults_are_the_committed_ones():
    from tood.config import StatsConfig, load_params, load_stats_config

    committed = load_stats_config(load_params(REPO / "params.yaml"))
    assert committed == StatsConfig(replications=("bench/precision/fp32", "bench/alpha_beta/epyc_bf16"))
    assert load_stats_config({}) == StatsConfig()
