"""Table 1's params and GFLOPs measured from our models: the paper's configuration against its printed figures,
a hand-worked multiply-add count, no weights loaded, and the numbers reaching tables.md."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_report import FAKE_COMPLEXITY, make_inputs, run_tabulate, section  # the report tests' fake inputs

import tood.model.backbone
from tood.config import DataConfig, ModelConfig, RunConfig
from tood.model.detector import Detector
from tood.report import paper
from tood.report.complexity import (
    NO_WEIGHTS,
    checkpoint_complexity,
    measure,
    paper_config_complexity,
    run_complexity,
    run_input_hw,
)

TINY = ModelConfig(depth=18, fpn_channels=16, gn_groups=4, stacked_convs=2, head="parallel")
LOADS_WEIGHTS = "imagenet"  # a `model.pretrained` value that would fetch


@pytest.fixture(scope="module")
def at_paper_config():
    return {head: paper_config_complexity(head, "free") for head in ("tood", "parallel")}


def test_paper_configuration_reproduces_table1_params(at_paper_config):
    t_head, parallel = at_paper_config["tood"], at_paper_config["parallel"]
    assert (t_head.head_params, parallel.head_params) == (4_823_790, 4_918_618)  # reference/tood.md
    by_head = {row.config["head"]: row.metrics for row in paper.TABLE1}
    for c, printed in ((t_head, by_head["tood"]), (parallel, by_head["parallel"])):
        assert round(c.head_params / 1e6, 2) == printed["head_params_m"]
        assert round(c.params / 1e6, 2) == printed["params_m"]  # 31.98 / 32.07: trainable, as mmcv counts
        # frozen: stem conv 7x7x3x64 = 9,408 + BN 128; stage 1 convs 73,728 + 2 x 69,632 = 212,992 and their
        # BN affine 1,280 + 2 x 768 = 2,816 (by hand from ResNet-50's bottleneck widths)
        assert c.all_params - c.params == 9_408 + 128 + 212_992 + 2_816


def test_paper_configuration_gflops_are_multiply_adds_close_to_table1(at_paper_config):
    """torch counts 2 FLOPs per multiply-add, mmcv 1: a missed conversion would be 2x off. mmcv also counts
    norms, activations and bias adds, which torch's counter does not: ours may be lower, by < 1%."""
    by_head = {row.config["head"]: row.metrics for row in paper.TABLE1}
    for head, c in at_paper_config.items():
        printed = by_head[head]
        assert 0.99 * printed["head_gflops"] < c.head_gflops <= printed["head_gflops"]
        assert 0.99 * printed["gflops"] < c.gflops <= printed["gflops"]
        assert (c.input_h, c.input_w, c.num_classes, c.depth, c.fpn_channels) == (800, 1280, 80, 50, 256)


def test_parallel_head_multiply_adds_by_hand():
    """Parallel head, F=16, C=3 on a 64x64 input: levels 8x8, 4x4, 2x2, 1x1, 1x1 -> 86 locations. Per
    location: 8 tower convs 3x3 FxF, then cls 3x3 F->C, reg F->4, centerness F->1: 9F(8F + C + 5) MACs."""
    c = measure(TINY, 3, (64, 64), frozen_stages=-1)
    assert c.head_gflops * 1e9 == pytest.approx(9 * 16 * (8 * 16 + 3 + 5) * 86)  # 1,684,224
    assert c.params == c.all_params  # nothing frozen


def test_counting_loads_no_weights_and_counts_what_the_recipe_freezes(monkeypatch):
    def no_weights(pretrained: str, depth: int) -> None:
        assert pretrained == NO_WEIGHTS, f"complexity counting asked the backbone for weights: {pretrained}"

    monkeypatch.setattr(tood.model.backbone, "pretrained_state_dict", no_weights)
    cfg = RunConfig(
        variant="x", model=dataclasses.replace(TINY, pretrained=LOADS_WEIGHTS, frozen_stages=1),
        data=DataConfig(img_scale=(64, 64)),
    )  # fmt: skip
    c = run_complexity(cfg, 3)
    body = Detector(dataclasses.replace(TINY, pretrained=NO_WEIGHTS), 3).backbone.body
    frozen = sum(p.numel() for m in (body.stem, body.stages[0]) for p in m.parameters())
    assert c.all_params - c.params == frozen > 0


def test_run_input_is_the_padded_resize_canvas():
    assert run_input_hw(DataConfig(img_scale=(128, 128), size_divisor=32)) == (128, 128)
    assert run_input_hw(DataConfig(img_scale=(1333, 800), size_divisor=32)) == (800, 1344)


def test_checkpoint_complexity_is_the_checkpoints_model(tmp_path):
    cfg = RunConfig(variant="x", model=TINY, data=DataConfig(img_scale=(64, 64)))
    detector = Detector(cfg.model, 5)
    path = tmp_path / "last.pt"
    torch.save({"config": cfg.to_dict(), "cat_ids": [1, 2, 4, 8, 9], "model": detector.state_dict()}, path)
    out = checkpoint_complexity(path)
    assert out["run"]["num_classes"] == 5 and (out["run"]["input_h"], out["run"]["input_w"]) == (64, 64)
    assert out["run"]["all_params"] == sum(p.numel() for p in detector.parameters())
    assert out["run"]["head_params"] == sum(p.numel() for p in detector.head.parameters())
    assert out["paper_config"]["head_params"] == 4_918_618  # the parallel head at the paper's configuration
    json.dumps(out)  # goes into the metrics JSON as is


def test_measured_figures_reach_table1(tmp_path, at_paper_config, monkeypatch):
    measured = at_paper_config["tood"]
    monkeypatch.setitem(FAKE_COMPLEXITY, "paper_config", measured.to_dict())  # every fake variant gets it
    text = run_tabulate(make_inputs(tmp_path, [0]))
    block = section(text, "Table 1").split("### Params and GFLOPs")[1]
    row = next(line for line in block.splitlines() if line.startswith("| ATSS anchor-free, T-Head |"))
    gflops = f"{measured.head_gflops:.2f} / {measured.gflops:.2f}"
    assert f"| 4.82 / 31.98 | 4.82 / 31.98 | 100.79 / 201.13 | {gflops} |" in row
