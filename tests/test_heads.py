import pytest
import torch
from torchvision.ops import deform_conv2d

from tood.config import ModelConfig
from tood.model.heads import (
    HeadOutput,
    ParallelHead,
    TOODHead,
    build_head,
    decode_based_in_stride,
    decode_free_in_stride,
    fallback_invalid,
    sample_at_offsets,
)
from tood.model.priors import make_priors

STRIDES = (8, 16, 32)
SIZES = [(4, 6), (2, 3), (1, 2)]  # includes a 1-row map, as P7 has on small inputs
C, FEAT, N = 3, 16, 2
LA_REDUCTION = 4  # hidden width 4: with a single hidden unit its ReLU is dead at init half the time


def tiny_head(kind: str, anchor: str):
    if kind == "tood":
        return TOODHead(
            C, FEAT, stacked_convs=N, la_reduction=LA_REDUCTION, gn_groups=4, anchor=anchor, num_levels=3
        )
    return ParallelHead(C, FEAT, stacked_convs=N, gn_groups=4, anchor=anchor, num_levels=3)


def tiny_inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, FEAT, h, w, generator=g) for h, w in SIZES]
    return feats, make_priors(SIZES, STRIDES, device="cpu")


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_paper_config_parameter_counts():
    """tood.md Table 1 notes: 4.82M / 4.92M = exactly these numbers at F=256, N=6, C=80, GN 32."""
    assert n_params(TOODHead(80, 256, stacked_convs=6, la_reduction=8, gn_groups=32)) == 4_823_790
    assert n_params(ParallelHead(80, 256, stacked_convs=4, gn_groups=32)) == 4_918_618


def test_build_head_reads_cfg_head():
    cfg = ModelConfig(head="tood", fpn_channels=16, gn_groups=4, stacked_convs=2, anchor="based")
    assert isinstance(build_head(cfg, C), TOODHead)
    assert isinstance(build_head(ModelConfig(head="parallel", fpn_channels=16, gn_groups=4), C), ParallelHead)
    with pytest.raises(ValueError, match="head"):
        build_head(ModelConfig(head="nope"), C)
    with pytest.raises(ValueError, match="anchor"):
        build_head(ModelConfig(anchor="nope", fpn_channels=16, gn_groups=4), C)


@pytest.mark.parametrize("kind", ["tood", "parallel"])
@pytest.mark.parametrize("anchor", ["free", "based"])
def test_output_contract_and_init(kind, anchor):
    torch.manual_seed(0)
    head = tiny_head(kind, anchor)
    feats, priors = tiny_inputs()
    out = head(feats, priors)
    A = sum(h * w for h, w in SIZES)
    assert isinstance(out, HeadOutput)
    assert out.scores.shape == (2, A, C) and out.boxes.shape == (2, A, 4)
    assert out.scores.dtype == out.boxes.dtype == torch.float32
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    # prior-prob init: sigmoid(cls) = 0.01 (parallel), sqrt(0.01 * 0.01) = 0.01 (T-Head)
    assert torch.allclose(out.scores, torch.full_like(out.scores, 0.01), rtol=0.3)
    if kind == "tood":
        assert out.centerness is None
    else:
        assert out.centerness.shape == (2, A) and out.centerness.abs().max() < 0.5  # logits ~ 0 at init
    # raw ~ 0 and offsets ~ 0 at init: boxes sit on their priors, in Priors order (level, row, col);
    # neighbouring priors are 1 stride apart, so a half-stride tolerance pins the order
    s = priors.strides[:, None]
    expected = priors.anchors if anchor == "based" else torch.cat((priors.points - s, priors.points + s), -1)
    assert ((out.boxes - expected).abs() < 0.5 * s).all()


def test_anchor_free_decode_of_zero_raw_is_one_stride_per_side():
    priors = make_priors(SIZES, STRIDES, device="cpu")
    raw = torch.zeros(1, len(priors.points), 4)
    boxes = decode_free_in_stride(raw, torch.tensor(1.0), priors.points, priors.anchors, priors.strides)
    s = priors.strides[:, None]
    assert torch.equal(boxes * s, torch.cat((priors.points - s, priors.points + s), -1)[None])
    twice = decode_free_in_stride(raw, torch.tensor(2.0), priors.points, priors.anchors, priors.strides)
    assert torch.equal(twice * s, torch.cat((priors.points - 2 * s, priors.points + 2 * s), -1)[None])


def test_anchor_based_decode_of_zero_raw_is_the_anchor_in_strides():
    priors = make_priors(SIZES, STRIDES, device="cpu")
    raw = torch.zeros(1, len(priors.points), 4)
    boxes = decode_based_in_stride(raw, torch.tensor(1.0), priors.points, priors.anchors, priors.strides)
    assert torch.equal(boxes[0] * priors.strides[:, None], priors.anchors)


def test_zero_offsets_keep_b0():
    box_map = torch.randn(2, 4, 3, 5)
    assert torch.allclose(sample_at_offsets(box_map, torch.zeros(2, 8, 3, 5)), box_map, atol=1e-6)


def test_offset_of_one_cell_reads_the_neighbour():
    box_map = torch.arange(4 * 3 * 5, dtype=torch.float32).reshape(1, 4, 3, 5)
    offsets = torch.zeros(1, 8, 3, 5)
    offsets[0, 0] = 1.0  # side 0: dy = +1 -> the row below
    offsets[0, 3] = -1.0  # side 1: dx = -1 -> the column to the left
    offsets[0, 5] = 0.5  # side 2: dx = +0.5 -> halfway to the right
    out = sample_at_offsets(box_map, offsets)
    assert torch.allclose(out[0, 0, :2], box_map[0, 0, 1:])  # row i reads row i+1
    assert torch.allclose(out[0, 0, 2], torch.zeros(5))  # below the last row: zero padding
    assert torch.allclose(out[0, 1, :, 1:], box_map[0, 1, :, :-1])
    assert torch.allclose(out[0, 2, :, :-1], (box_map[0, 2, :, :-1] + box_map[0, 2, :, 1:]) / 2)
    assert torch.allclose(out[0, 2, :, -1], box_map[0, 2, :, -1] / 2)  # half outside: half of zero padding
    assert torch.allclose(out[0, 3], box_map[0, 3])


@pytest.mark.parametrize("hw", [(5, 7), (1, 3), (1, 1)])
def test_sampling_equals_the_reference_depthwise_deform_conv(hw):
    """[R] samples with DeformConv2d(4, 4, 1x1, groups=4, deform_groups=4) and an all-ones kernel."""
    g = torch.Generator().manual_seed(1)
    box_map = torch.randn(2, 4, *hw, generator=g, dtype=torch.float64)
    offsets = 2.5 * torch.randn(2, 8, *hw, generator=g, dtype=torch.float64)  # many fall off the map
    reference = deform_conv2d(box_map, offsets, torch.ones(4, 1, 1, 1, dtype=torch.float64))
    assert torch.allclose(sample_at_offsets(box_map, offsets), reference, atol=1e-9)


def test_invalid_sampled_box_falls_back_to_b0():
    b0 = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    sampled = torch.tensor([[3.0, 0.0, 2.0, 2.0], [1.5, 1.2, 2.5, 2.8], [0.0, 0.5, 1.0, 0.4]])
    out = fallback_invalid(sampled, b0)
    assert torch.equal(out[0], b0[0])  # x1 > x2
    assert torch.equal(out[1], sampled[1])  # valid: keep the sampled box
    assert torch.equal(out[2], b0[2])  # y1 > y2


def test_tood_head_uses_the_fallback_end_to_end():
    torch.manual_seed(0)
    head = tiny_head("tood", "free")
    with torch.no_grad():  # offsets of +/-3 cells on alternate sides invert most boxes
        head.offset_branch[2].weight.zero_()
        head.offset_branch[2].bias.copy_(torch.tensor([0, 3.0, 0, 0, 0, -3.0, 0, 0]))
    feats, priors = tiny_inputs()
    boxes = head(feats, priors).boxes
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()


@pytest.mark.parametrize("kind", ["tood", "parallel"])
@pytest.mark.parametrize("anchor", ["free", "based"])
def test_every_parameter_gets_a_gradient(kind, anchor):
    torch.manual_seed(0)
    head = tiny_head(kind, anchor)
    feats, priors = tiny_inputs()
    out = head(feats, priors)
    g = torch.Generator().manual_seed(2)
    loss = (out.scores * torch.randn(out.scores.shape, generator=g)).sum()
    loss = loss + (out.boxes * torch.randn(out.boxes.shape, generator=g)).sum()
    if out.centerness is not None:
        loss = loss + out.centerness.sum()
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", ["tood", "parallel"])
def test_channels_last_gives_the_nchw_outputs_and_gradients(kind):
    """channels_last takes other code paths (the T-Head's layer attention contracts NHWC memory in place)."""
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        head = tiny_head(kind, "free")
        feats, priors = tiny_inputs()
        if channels_last:
            head = head.to(memory_format=torch.channels_last)
            feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
        feats = [f.requires_grad_() for f in feats]
        out = head(feats, priors)
        loss = (out.scores.square().sum() + out.boxes.square().mean()) / 2
        if out.centerness is not None:
            loss = loss + out.centerness.square().sum()
        grads = torch.autograd.grad(loss, [*feats, *head.parameters()])
        results.append((out.scores, out.boxes, grads))
    (scores, boxes, grads), (scores_cl, boxes_cl, grads_cl) = results
    torch.testing.assert_close(scores_cl, scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(boxes_cl, boxes, rtol=1e-5, atol=1e-5)
    for grad, grad_cl in zip(grads, grads_cl):
        torch.testing.assert_close(grad_cl, grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["tood", "parallel"])
def test_box_branch_stays_fp32_under_autocast(kind):
    head = tiny_head(kind, "free")
    feats, priors = tiny_inputs(batch=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(feats, priors)
    assert out.boxes.dtype == torch.float32 and out.scores.dtype == torch.float32


def test_maps_must_match_priors():
    head = tiny_head("tood", "free")
    feats, _ = tiny_inputs()
    with pytest.raises(ValueError, match="do not match"):
        head(feats, make_priors([(4, 6), (2, 3), (1, 1)], STRIDES, device="cpu"))
