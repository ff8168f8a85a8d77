"""TAP on the parallel head (issue 20, Table 2 "TAL + TAP"): tood.model.heads.TaskAlignedPredictor."""

from __future__ import annotations

import pytest
import torch
from test_heads import FEAT, C, N, tiny_inputs

from tood.config import ModelConfig
from tood.model.heads import ParallelHead, TaskAlignedPredictor, aligned_score, build_head, flatten_level


def tap_head(anchor: str = "free", tap: bool = True) -> ParallelHead:
    torch.manual_seed(0)
    return ParallelHead(C, FEAT, stacked_convs=N, gn_groups=4, anchor=anchor, num_levels=3, tap=tap)


def test_tap_adds_only_its_two_branches_and_leaves_the_parallel_head_as_it_was():
    """Without TAP: same parameters, names and initial values as before issue 20 (the T-Head count is
    Table 1's). TAP adds M and O on the towers' 2F-channel concatenation: 1x1 2F -> F/4, then 3x3 F/4 -> 1
    (M) and -> 8 (O). At F = 256: 2 * (512*64 + 64) + (64*9*1 + 1) + (64*9*8 + 8) = 70,857 parameters."""
    plain, with_tap = tap_head(tap=False), tap_head()
    assert with_tap.state_dict().keys() - plain.state_dict().keys() == {
        f"tap.{b}.{i}.{w}"
        for b in ("prob_branch", "offset_branch")
        for i in (0, 2)
        for w in ("weight", "bias")
    }
    for (
        name,
        value,
    ) in plain.state_dict().items():  # TAP is created last: the shared layers draw the same values
        torch.testing.assert_close(with_tap.state_dict()[name], value, msg=name)
    extra = sum(p.numel() for p in TaskAlignedPredictor(256).parameters())
    assert extra == 2 * (512 * 64 + 64) + (64 * 9 + 1) + (64 * 9 * 8 + 8) == 70_857


def test_score_is_sqrt_of_cls_times_m_and_zero_offsets_keep_b0():
    head = tap_head()
    feats, priors = tiny_inputs()
    torch.nn.init.zeros_(head.tap.offset_branch[2].weight)
    torch.nn.init.zeros_(head.tap.offset_branch[2].bias)  # O = 0: every side samples its own cell
    out = head(feats, priors)
    plain = tap_head(tap=False)
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("tap.")})
    ref = plain(feats, priors)
    torch.testing.assert_close(out.boxes, ref.boxes)  # B = B0 with zero offsets
    torch.testing.assert_close(out.centerness, ref.centerness)
    x = feats[0]
    cls_feat, reg_feat = head.cls_tower(x), head.reg_tower(x)
    m = head.tap.prob_branch(torch.cat((cls_feat, reg_feat), 1))
    expected = flatten_level(aligned_score(head.cls_conv(cls_feat), m))  # sqrt(sigmoid(cls) * sigmoid(M))
    n0 = priors.num_per_level[0]
    torch.testing.assert_close(out.scores[:, :n0], expected)
    torch.testing.assert_close(
        out.scores[:, :n0] ** 2, ref.scores[:, :n0] * m.sigmoid().flatten(2).transpose(1, 2)
    )


def test_initial_score_is_the_prior_and_offsets_start_near_zero():
    """Both biases at prior 0.01 [R]: sqrt(0.01 * 0.01) = 0.01 up to the tiny initial weights."""
    out = tap_head()(*tiny_inputs())
    assert out.scores.mean().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("anchor", ["free", "based"])
def test_offsets_move_the_boxes_and_every_parameter_learns(anchor):
    head = tap_head(anchor)
    feats, priors = tiny_inputs()
    torch.nn.init.normal_(head.tap.offset_branch[2].weight, std=0.5)
    out = head(feats, priors)
    plain = tap_head(anchor, tap=False)
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("tap.")})
    assert not torch.allclose(out.boxes, plain(feats, priors).boxes)
    (out.scores.sum() + out.boxes.sum() + out.centerness.sum()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert head.tap.offset_branch[2].weight.grad.abs().sum() > 0


def test_build_head_reads_model_tap():
    cfg = ModelConfig(head="parallel", fpn_channels=16, gn_groups=4, tap=True)
    assert isinstance(build_head(cfg, C).tap, TaskAlignedPredictor)
    assert build_head(ModelConfig(head="parallel", fpn_channels=16, gn_groups=4), C).tap is None
