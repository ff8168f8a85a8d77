import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tood.model.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from tood.model.coders import MAX_RATIO, decode_deltas, decode_ltrb, encode_deltas, encode_ltrb
from tood.model.priors import make_priors

coord = st.floats(-1000, 1000, allow_nan=False, allow_infinity=False)
size = st.floats(0.5, 800, allow_nan=False, allow_infinity=False)


def test_priors_known_answer():
    p = make_priors([(2, 3), (1, 2)], (8, 16), device="cpu")
    expected_points = [[0, 0], [8, 0], [16, 0], [0, 8], [8, 8], [16, 8], [0, 0], [16, 0]]  # level, then row
    assert p.points.tolist() == expected_points
    assert p.strides.tolist() == [8] * 6 + [16] * 2
    assert p.num_per_level == (6, 2)
    assert p.sizes == ((2, 3), (1, 2))
    assert p.anchors[4].tolist() == [8 - 32, 8 - 32, 8 + 32, 8 + 32]  # 8*stride square centred on the point
    assert p.anchors[7].tolist() == [16 - 64, -64, 16 + 64, 64]
    assert p.points.dtype == torch.float32


def test_priors_count_matches_sizes():
    p = make_priors([(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)], (8, 16, 32, 64, 128), device="cpu")
    assert p.points.shape == (sum(p.num_per_level), 2) == (320 + 80 + 20 + 6 + 2, 2)
    assert p.anchors.shape == (428, 4) and p.strides.shape == (428,)


def test_ltrb_known_answer():
    points = torch.tensor([[10.0, 20.0]])
    boxes = torch.tensor([[4.0, 15.0, 30.0, 21.0]])
    assert encode_ltrb(points, boxes).tolist() == [[6.0, 5.0, 20.0, 1.0]]
    assert decode_ltrb(points, torch.tensor([[6.0, 5.0, 20.0, 1.0]])).tolist() == boxes.tolist()


@settings(max_examples=50, deadline=None)
@given(px=coord, py=coord, x1=coord, y1=coord, w=size, h=size)
def test_ltrb_round_trip(px, py, x1, y1, w, h):
    points = torch.tensor([px, py], dtype=torch.float64)
    boxes = torch.tensor([x1, y1, x1 + w, y1 + h], dtype=torch.float64)
    assert torch.allclose(decode_ltrb(points, encode_ltrb(points, boxes)), boxes, atol=1e-9)


def test_deltas_known_answer():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor([[1.0, 2.0, 11.0, 12.0]])  # centre moved by (1, 2) = (0.1, 0.2) anchor sizes
    assert torch.allclose(encode_deltas(anchors, boxes), torch.tensor([[1.0, 2.0, 0.0, 0.0]]))
    assert torch.equal(decode_deltas(anchors, torch.zeros(1, 4)), anchors)
    doubled = decode_deltas(anchors, torch.tensor([[0.0, 0.0, math.log(2) / 0.2, 0.0]]))
    assert torch.allclose(doubled, torch.tensor([[-5.0, 0.0, 15.0, 10.0]]))


def test_deltas_clamp_like_mmdet():
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    huge = decode_deltas(anchors, torch.tensor([[0.0, 0.0, 1e4, -1e4]]))  # exp() would overflow unclamped
    wh = xyxy_to_cxcywh(huge)[0, 2:]
    assert MAX_RATIO == math.log(1000 / 16)
    assert torch.allclose(wh, torch.tensor([1000.0, 16 * 16 / 1000]))


@settings(max_examples=50, deadline=None)
@given(acx=coord, acy=coord, aw=size, ah=size, dx=coord, dy=coord, lw=st.floats(-4, 4), lh=st.floats(-4, 4))
def test_deltas_round_trip(acx, acy, aw, ah, dx, dy, lw, lh):
    anchors = cxcywh_to_xyxy(torch.tensor([acx, acy, aw, ah], dtype=torch.float64))
    boxes = cxcywh_to_xyxy(torch.tensor([acx + dx, acy + dy, aw * math.exp(lw), ah * math.exp(lh)]).double())
    back = decode_deltas(anchors, encode_deltas(anchors, boxes))  # |log ratio| <= 4 < log(62.5): no clamp
    assert torch.allclose(back, boxes, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(x1=coord, y1=coord, w=size, h=size)
def test_xyxy_cxcywh_round_trip(x1, y1, w, h):
    boxes = torch.tensor([[x1, y1, x1 + w, y1 + h]], dtype=torch.float64)
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes, atol=1e-9)
