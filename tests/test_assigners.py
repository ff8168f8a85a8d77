"""Tests of tood/model/assigners.py: hand-worked answers, parity with a slow per-GT loop, invariants.

The slow references below are written straight from reference/tood.md §3(b) and §3(d): one image and
one GT at a time, in Python floats (float64), so they share no code with the batched functions.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from tood.model.assigners import alignment_metric, atss_assign, choose_assigner, tal_assign
from tood.model.boxes import pairwise_iou

# ---------------------------------------------------------------------------------------------- priors


def make_grid(sizes, strides, octave_scale=8):
    """points (A, 2) at (j*s, i*s), 8s square anchors (A, 4) and A_l, as tood/model/priors.py defines them."""
    points, anchors = [], []
    for (h, w), s in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h) * float(s), torch.arange(w) * float(s), indexing="ij")
        p = torch.stack((xs.flatten(), ys.flatten()), dim=-1)
        half = octave_scale * s / 2
        points.append(p)
        anchors.append(torch.cat((p - half, p + half), dim=-1))
    return torch.cat(points), torch.cat(anchors), tuple(h * w for h, w in sizes)


SIZES, STRIDES = [(8, 12), (4, 6), (2, 3)], (8, 16, 32)  # a 96 x 64 image, A = 96 + 24 + 6 = 126
POINTS, ANCHORS, NUM_PER_LEVEL = make_grid(SIZES, STRIDES)
IMG_W, IMG_H = 96.0, 64.0

# ------------------------------------------------------------------------------------ slow references


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])
    return inter / max(area(a) + area(b) - inter, 1e-9)


def inside(p, box):
    return min(p[0] - box[0], p[1] - box[1], box[2] - p[0], box[3] - p[1]) > 0.01


def resolve(pos, ious, valid, A):
    """pos[g] = set of priors; a prior claimed by several GTs goes to the highest IoU (lowest g on ties)."""
    owner = {}
    for a in range(A):
        claims = [g for g in valid if a in pos[g]]
        if claims:
            owner[a] = max(claims, key=lambda g: (ious[g][a], -g))
    return owner


def ref_tal_image(scores, boxes, points, gts, labels, mask, alpha, beta, topk, eps=1e-7):
    """§3(b)+(c) for one image: loops over GTs and priors. Returns per-prior lists."""
    A = len(points)
    valid = [g for g in range(len(gts)) if mask[g]]
    ious = {g: [iou(boxes[a], gts[g]) for a in range(A)] for g in valid}
    t = {g: [scores[a][labels[g]] ** alpha * ious[g][a] ** beta for a in range(A)] for g in valid}
    pos = {}
    for g in valid:
        top = sorted(range(A), key=lambda a: -t[g][a])[:topk]
        pos[g] = {a for a in top if t[g][a] > 0 and inside(points[a], gts[g])}
    owner = resolve(pos, ious, valid, A)
    t_hat = [0.0] * A
    for g in valid:
        members = [a for a, o in owner.items() if o == g]
        if members:
            max_t, max_u = max(t[g][a] for a in members), max(ious[g][a] for a in members)
            for a in members:
                t_hat[a] = t[g][a] / (max_t + eps) * max_u
    overlaps = [ious[owner[a]][a] if a in owner else 0.0 for a in range(A)]
    return owner, t_hat, overlaps


def ref_atss_image(anchors, num_per_level, gts, mask, topk):
    """§3(d) for one image: per GT, per level, k nearest centres, mean + unbiased std threshold."""
    A = len(anchors)
    centres = [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in anchors]
    valid = [g for g in range(len(gts)) if mask[g]]
    ious = {g: [iou(anchors[a], gts[g]) for a in range(A)] for g in valid}
    pos = {}
    for g in valid:
        gc = ((gts[g][0] + gts[g][2]) / 2, (gts[g][1] + gts[g][3]) / 2)
        cands, start = [], 0
        for n in num_per_level:
            level = range(start, start + n)
            cands += sorted(level, key=lambda a: math.dist(centres[a], gc))[:topk]
            start += n
        cand_ious = [ious[g][a] for a in cands]
        thr = statistics.mean(cand_ious) + (statistics.stdev(cand_ious) if len(cands) > 1 else 0.0)
        pos[g] = {a for a in cands if ious[g][a] >= thr and inside(centres[a], gts[g])}
    owner = resolve(pos, ious, valid, A)
    overlaps = [ious[owner[a]][a] if a in owner else 0.0 for a in range(A)]
    return owner, [1.0 if a in owner else 0.0 for a in range(A)], overlaps


def check_against_reference(asg, owners, t_hats, overlaps, gt_boxes, gt_labels, num_classes):
    B, A = asg.fg_mask.shape
    for b in range(B):
        fg = [a in owners[b] for a in range(A)]
        assert asg.fg_mask[b].tolist() == fg, f"image {b}: positive sets differ"
        gt_index = [owners[b].get(a, 0) for a in range(A)]
        assert asg.gt_index[b].tolist() == gt_index, f"image {b}: assigned GTs differ"
        labels = [int(gt_labels[b, owners[b][a]]) if a in owners[b] else num_classes for a in range(A)]
        assert asg.labels[b].tolist() == labels
        boxes = torch.stack(
            [gt_boxes[b, owners[b][a]] if a in owners[b] else torch.zeros(4) for a in range(A)]
        )
        torch.testing.assert_close(asg.target_boxes[b], boxes)
        torch.testing.assert_close(asg.target_scores[b], torch.tensor(t_hats[b]), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(asg.overlaps[b], torch.tensor(overlaps[b]), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------- random problems


def random_boxes(gen, n, kind):
    """n xyxy GT boxes inside the 96 x 64 image: normal, tiny (1-2 px), huge (~image) or overlapping."""
    u = lambda *shape: torch.rand(*shape, generator=gen)
    if kind == "tiny":
        wh = 1 + u(n, 2)
    elif kind == "huge":
        lo, hi = 2 * u(n, 2), torch.tensor([IMG_W, IMG_H]) - 2 * u(n, 2)
        return torch.cat((lo, hi), dim=-1)
    else:
        wh = 4 + u(n, 2) * torch.tensor([60.0, 40.0])
    centre = u(n, 2) * torch.tensor([IMG_W, IMG_H])
    if kind == "tiny":  # most 1-2 px GTs hold no prior centre; centre some on a random grid point
        on_grid = POINTS[torch.randint(0, NUM_PER_LEVEL[0], (n,), generator=gen)] + 0.8 * (u(n, 2) - 0.5)
        centre = torch.where(torch.arange(n)[:, None] % 2 == 0, on_grid, centre)
    if kind == "overlap":  # jittered copies of one box: many priors are claimed by several GTs
        centre = centre[:1] + 3 * (u(n, 2) - 0.5)
        wh = wh[:1] * (0.8 + 0.4 * u(n, 2))
    return torch.cat((centre - wh / 2, centre + wh / 2), dim=-1)


def random_problem(seed, B=2, G=5, C=4, kind="normal", num_valid=None):
    """Padded GTs (garbage boxes and labels in padded rows), scores with distinct values, boxes near priors."""
    gen = torch.Generator().manual_seed(seed)
    A = POINTS.shape[0]
    gt_boxes = torch.stack([random_boxes(gen, G, kind) for _ in range(B)])  # (B, G, 4)
    gt_labels = torch.randint(0, C, (B, G), generator=gen)
    if num_valid is None:
        gt_mask = torch.rand(B, G, generator=gen) < 0.75
    else:
        gt_mask = torch.arange(G)[None, :].expand(B, G) < num_valid
    garbage = torch.randn(B, G, 4, generator=gen) * 50
    gt_boxes = torch.where(gt_mask[..., None], gt_boxes, garbage)
    gt_labels = torch.where(gt_mask, gt_labels, torch.randint(-3, C + 3, (B, G), generator=gen))
    # jitter makes every score distinct, so top-k order is unique
    jitter = torch.randperm(B * A * C, generator=gen).reshape(B, A, C) / (B * A * C)
    scores = 0.05 + 0.9 * torch.rand(B, A, C, generator=gen) + 1e-3 * jitter  # (B, A, C) in (0.05, 0.951)
    wh = 4 + 48 * torch.rand(B, A, 2, generator=gen)
    ctr = POINTS + 6 * (torch.rand(B, A, 2, generator=gen) - 0.5)
    pred_boxes = torch.cat((ctr - wh / 2, ctr + wh / 2), dim=-1)
    return scores, pred_boxes, gt_boxes, gt_labels, gt_mask


def run_tal(problem, alpha=1.0, beta=6.0, topk=13, eps=1e-7):
    scores, pred_boxes, gt_boxes, gt_labels, gt_mask = problem
    return tal_assign(
        scores, pred_boxes, POINTS, gt_boxes, gt_labels, gt_mask, alpha=alpha, beta=beta, topk=topk, eps=eps
    )


def run_atss(problem, num_classes=4, topk=9):
    _, _, gt_boxes, gt_labels, gt_mask = problem
    return atss_assign(ANCHORS, NUM_PER_LEVEL, gt_boxes, gt_labels, gt_mask, num_classes, topk=topk)


KINDS = ["normal", "overlap", "tiny", "huge", "normal", "overlap"]
CASES = [(seed, KINDS[seed % len(KINDS)]) for seed in range(30)]
ALPHA_BETA_TOPK = [(1.0, 6.0, 13), (0.5, 2.0, 5), (1.5, 8.0, 9), (0.0, 4.0, 13), (1.0, 1.0, 3)]


def assert_same(a, b):
    for name in ("labels", "fg_mask", "gt_index", "target_boxes", "target_scores", "overlaps"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), msg=name)


# --------------------------------------------------------------------------------------- hand-worked


def test_tal_hand_worked_3x3_grid():
    """3x3 points at (0, 8, 16)^2, one GT [4, 4, 20, 20] of class 1, alpha=1, beta=2, top-3.

    Inside the GT (margin 0.01): priors 4 (8,8), 5 (16,8), 7 (8,16), 8 (16,16). Priors and t = s * U^2:
      prior 0 (0,0) outside, pred = GT             U=1     s=0.9 -> t=0.9      top-1, dropped by the centre test
      prior 4        pred [4,4,20,16]              U=0.75  s=0.6 -> t=0.3375   top-2, positive
      prior 5        pred [4,4,20,12]              U=0.5   s=0.8 -> t=0.2      top-3, positive
      prior 8        pred [4,4,12,12]              U=0.25  s=1.0 -> t=0.0625   4th: outside top-3
      others         pred [0,0,4,4]                U=0               t=0
    t_hat = t / max t * max U over positives {4, 5}: 0.3375/0.3375*0.75 = 0.75 and 0.2/0.3375*0.75 = 4/9.
    """
    points = torch.tensor([[8.0 * j, 8.0 * i] for i in range(3) for j in range(3)])
    gt = torch.tensor([[[4.0, 4.0, 20.0, 20.0]]])
    pred = torch.tensor([[0.0, 0.0, 4.0, 4.0]]).repeat(9, 1)
    pred[0], pred[4], pred[5], pred[8] = (
        gt[0, 0],
        torch.tensor([4.0, 4, 20, 16]),
        torch.tensor([4.0, 4, 20, 12]),
        torch.tensor([4.0, 4, 12, 12]),
    )
    scores = torch.full((1, 9, 2), 0.99)  # class 0 is high everywhere and must be ignored
    scores[0, :, 1] = torch.tensor([0.9, 0.3, 0.3, 0.3, 0.6, 0.8, 0.3, 0.3, 1.0])
    labels, mask = torch.tensor([[1]]), torch.tensor([[True]])

    overlaps = pairwise_iou(gt, pred[None])  # (1, 1, 9)
    t = alignment_metric(scores, pred[None], gt, labels, mask, alpha=1.0, beta=2.0)
    expected_t = torch.tensor([0.9, 0, 0, 0, 0.3375, 0.2, 0, 0, 0.0625])
    torch.testing.assert_close(t[0, 0], expected_t)
    torch.testing.assert_close(overlaps[0, 0], torch.tensor([1.0, 0, 0, 0, 0.75, 0.5, 0, 0, 0.25]))

    asg = tal_assign(scores, pred[None], points, gt, labels, mask, alpha=1.0, beta=2.0, topk=3)
    assert asg.fg_mask[0].nonzero().flatten().tolist() == [4, 5]
    expected_t_hat = torch.tensor([0, 0, 0, 0, 0.75, 4 / 9, 0, 0, 0])
    torch.testing.assert_close(asg.target_scores[0], expected_t_hat, atol=1e-6, rtol=1e-5)
    assert asg.labels[0].tolist() == [2, 2, 2, 2, 1, 1, 2, 2, 2]
    torch.testing.assert_close(asg.overlaps[0], torch.tensor([0, 0, 0, 0, 0.75, 0.5, 0, 0, 0]))
    torch.testing.assert_close(asg.target_boxes[0, 4], gt[0, 0])

    # with top-4 prior 8 joins; max t and max U over positives are unchanged
    asg4 = tal_assign(scores, pred[None], points, gt, labels, mask, alpha=1.0, beta=2.0, topk=4)
    assert asg4.fg_mask[0].nonzero().flatten().tolist() == [4, 5, 8]
    assert asg4.target_scores[0, 8].item() == pytest.approx(0.0625 / 0.3375 * 0.75, rel=1e-5)


def test_tal_conflict_goes_to_highest_iou_not_smallest_area():
    """Prior (8,8) lies in both GTs; its prediction [0,0,36,36] has IoU 0.81 with the big GT and 0.198 with
    the small one. The paper SM's minimal-area rule would pick the small GT; the code (and we) pick the big."""
    points = torch.tensor([[8.0, 8.0]])
    gts = torch.tensor([[[0.0, 0.0, 40.0, 40.0], [4.0, 4.0, 20.0, 20.0]]])
    pred = torch.tensor([[[0.0, 0.0, 36.0, 36.0]]])
    scores = torch.full((1, 1, 3), 0.5)
    asg = tal_assign(
        scores,
        pred,
        points,
        gts,
        torch.tensor([[0, 2]]),
        torch.tensor([[True, True]]),
        alpha=1.0,
        beta=6.0,
        topk=13,
    )
    assert asg.gt_index.tolist() == [[0]] and asg.labels.tolist() == [[0]]
    assert asg.overlaps.item() == pytest.approx(0.81)
    assert asg.target_scores.item() == pytest.approx(0.81, rel=1e-5)  # single positive: t_hat = its IoU


def test_atss_hand_worked_toy_grid():
    """Level 0: 3x3 anchors of side 8 centred at (0, 8, 16)^2; level 1: a single 16-px anchor at (0, 0).

    GT [5, 6, 17, 14] (centre (11, 10), area 96), topk 4. Nearest level-0 centres: (8,8) 3.61, (16,8) 5.39,
    (8,16) 6.71, (16,16) 7.81 -> priors 4, 5, 7, 8; level 1 has fewer than k priors so its only prior 9 joins.
    IoUs: 42/118, 30/130, 14/146, 10/150 and 6/346; thr = mean + unbiased std ~ 0.307 lies between
    30/130 and 42/118, and only prior 4 has its centre inside -> positives {4}.
    """
    cells = torch.tensor([[8.0 * j, 8.0 * i] for i in range(3) for j in range(3)])
    anchors = torch.cat((torch.cat((cells - 4, cells + 4), 1), torch.tensor([[-8.0, -8.0, 8.0, 8.0]])))
    gt = torch.tensor([[[5.0, 6.0, 17.0, 14.0]]])
    ious = [42 / 118, 30 / 130, 14 / 146, 10 / 150, 6 / 346]
    thr = statistics.mean(ious) + statistics.stdev(ious)
    assert 30 / 130 < thr <= 42 / 118
    asg = atss_assign(anchors, (9, 1), gt, torch.tensor([[3]]), torch.tensor([[True]]), 5, topk=4)
    assert asg.fg_mask[0].nonzero().flatten().tolist() == [4]
    assert asg.labels[0, 4].item() == 3 and asg.target_scores[0, 4].item() == 1.0
    assert asg.overlaps[0, 4].item() == pytest.approx(42 / 118)

    # centre test: GT [8, 4, 16, 12] gives priors 4 and 5 IoU 1/3 each, the other candidates 0, so
    # thr = mean + std = 2/15 + sqrt(1/30) ~ 0.316 and both pass the IoU test; but their centres (8, 8) and
    # (16, 8) sit exactly on the GT's left and right edges, so nothing is positive.
    ious2 = [1 / 3, 1 / 3, 0.0, 0.0, 0.0]
    assert statistics.mean(ious2) + statistics.stdev(ious2) < 1 / 3
    gt2 = torch.tensor([[[8.0, 4.0, 16.0, 12.0]]])
    asg2 = atss_assign(anchors, (9, 1), gt2, torch.tensor([[0]]), torch.tensor([[True]]), 5, topk=4)
    assert not asg2.fg_mask.any()
    # shifted left by 0.5 px, prior 4's centre is 0.5 px inside: IoU 36/92 > thr ~ 0.32 -> positive
    asg3 = atss_assign(
        anchors,
        (9, 1),
        gt2 - torch.tensor([0.5, 0, 0.5, 0]),
        torch.tensor([[0]]),
        torch.tensor([[True]]),
        5,
        topk=4,
    )
    assert asg3.fg_mask[0].nonzero().flatten().tolist() == [4]
    assert asg3.overlaps[0, 4].item() == pytest.approx(36 / 92)


def test_choose_assigner():
    assert [choose_assigner("tal", e, 4) for e in range(6)] == ["atss"] * 4 + ["tal"] * 2
    assert choose_assigner("atss", 10, 4) == "atss"
    assert choose_assigner("tal", 0, 0) == "tal"
    with pytest.raises(ValueError):
        choose_assigner("simota", 5, 4)


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("seed,kind", CASES)
def test_tal_matches_slow_reference(seed, kind):
    alpha, beta, topk = ALPHA_BETA_TOPK[seed % len(ALPHA_BETA_TOPK)]
    problem = random_problem(seed, B=2, G=6, kind=kind)
    scores, pred_boxes, gt_boxes, gt_labels, gt_mask = problem
    asg = run_tal(problem, alpha, beta, topk)
    owners, t_hats, overlaps = [], [], []
    for b in range(2):
        o, th, ov = ref_tal_image(
            scores[b].tolist(), pred_boxes[b].tolist(), POINTS.tolist(), gt_boxes[b].tolist(),
            gt_labels[b].tolist(), gt_mask[b].tolist(), alpha, beta, topk,
        )  # fmt: skip
        owners.append(o), t_hats.append(th), overlaps.append(ov)
    check_against_reference(asg, owners, t_hats, overlaps, gt_boxes, gt_labels, num_classes=4)


@pytest.mark.parametrize("seed,kind", CASES)
def test_atss_matches_slow_reference(seed, kind):
    topk = (9, 4, 2)[seed % 3]
    problem = random_problem(seed, B=2, G=6, kind=kind)
    _, _, gt_boxes, gt_labels, gt_mask = problem
    asg = run_atss(problem, topk=topk)
    owners, scores, overlaps = [], [], []
    for b in range(2):
        o, s, ov = ref_atss_image(
            ANCHORS.tolist(), NUM_PER_LEVEL, gt_boxes[b].tolist(), gt_mask[b].tolist(), topk
        )
        owners.append(o), scores.append(s), overlaps.append(ov)
    check_against_reference(asg, owners, scores, overlaps, gt_boxes, gt_labels, num_classes=4)


def test_parity_cases_are_not_trivial():
    """The random suite exercises positives, conflicts (a prior in several GTs' sets) and padding."""
    n_pos = n_conflict = n_padded = 0
    for seed, kind in CASES:
        problem = random_problem(seed, B=2, G=6, kind=kind)
        asg = run_tal(problem)
        n_pos += int(asg.fg_mask.sum())
        n_padded += int((~problem[4]).sum())
        _, _, gt_boxes, _, gt_mask = problem
        inside_many = (_inside_all(POINTS, gt_boxes) & gt_mask[..., None]).sum(1) > 1  # (B, A)
        n_conflict += int((inside_many & asg.fg_mask).sum())
    assert n_pos > 300 and n_conflict > 20 and n_padded > 50


def _inside_all(points, boxes):
    x, y = points[:, 0], points[:, 1]
    d = torch.stack(
        (x - boxes[..., None, 0], y - boxes[..., None, 1], boxes[..., None, 2] - x, boxes[..., None, 3] - y)
    )
    return d.amin(0) > 0.01  # (B, G, A)


# ------------------------------------------------------------------------------------------ properties


@pytest.mark.parametrize("assign", ["tal", "atss"])
def test_invariants(assign):
    topk = 13 if assign == "tal" else 9
    for seed, kind in CASES[:12]:
        problem = random_problem(100 + seed, B=3, G=7, kind=kind)
        _, _, _, gt_labels, gt_mask = problem
        # eps=0 makes "max t_hat per GT == max IoU" exact; the reference's 1e-7 shrinks t_hat by
        # max_t / (max_t + 1e-7), which is visible when t ~ 1e-4 (beta = 6)
        asg = run_tal(problem, topk=topk, eps=0.0) if assign == "tal" else run_atss(problem, topk=topk)
        b, a = asg.fg_mask.nonzero(as_tuple=True)
        g = asg.gt_index[b, a]
        assert gt_mask[b, g].all(), "a padded GT claimed a prior"
        assert (asg.labels[b, a] == gt_labels[b, g]).all()
        assert (asg.labels[~asg.fg_mask] == 4).all() and (asg.gt_index[~asg.fg_mask] == 0).all()
        box = asg.target_boxes[b, a]  # positives lie inside their GT with the 0.01 margin
        assert (torch.cat((POINTS[a] - box[:, :2], box[:, 2:] - POINTS[a]), 1).amin(1) > 0.01).all()
        counts = torch.zeros(3, 7, dtype=torch.long).index_put_((b, g), torch.ones_like(g), accumulate=True)
        if assign == "tal":  # <= m positives per GT; max t_hat per GT == max IoU among its positives
            assert counts.max() <= topk
            max_t_hat, max_iou = torch.zeros(3, 7), torch.zeros(3, 7)
            for bi, gi, th, ov in zip(
                b.tolist(), g.tolist(), asg.target_scores[b, a].tolist(), asg.overlaps[b, a].tolist()
            ):
                max_t_hat[bi, gi] = max(max_t_hat[bi, gi].item(), th)
                max_iou[bi, gi] = max(max_iou[bi, gi].item(), ov)
            torch.testing.assert_close(max_t_hat, max_iou, atol=1e-5, rtol=0)
        else:
            assert counts.max() <= topk * len(NUM_PER_LEVEL)
            assert (asg.target_scores[asg.fg_mask] == 1).all()
        for name in ("target_scores", "overlaps", "target_boxes"):
            assert torch.isfinite(getattr(asg, name)).all()


def test_tal_alpha_zero_ignores_scores():
    problem = random_problem(7, B=2, G=6, kind="overlap")
    other = (torch.rand(problem[0].shape, generator=torch.Generator().manual_seed(1)),) + problem[1:]
    assert_same(run_tal(problem, alpha=0.0, beta=6.0), run_tal(other, alpha=0.0, beta=6.0))
    assert run_tal(problem, alpha=0.0).fg_mask.any()


@pytest.mark.parametrize("assign", ["tal", "atss"])
def test_extra_padding_changes_nothing(assign):
    run = run_tal if assign == "tal" else run_atss
    for seed, kind in CASES[:6]:
        scores, pred_boxes, gt_boxes, gt_labels, gt_mask = random_problem(200 + seed, kind=kind)
        pad_boxes = torch.tensor([[float("nan"), 0.0, 1e6, -5.0]]).expand(2, 3, 4)
        padded = (
            scores, pred_boxes, torch.cat((gt_boxes, pad_boxes), 1),
            torch.cat((gt_labels, torch.full((2, 3), 99)), 1), torch.cat((gt_mask, torch.zeros(2, 3, dtype=torch.bool)), 1),
        )  # fmt: skip
        assert_same(run((scores, pred_boxes, gt_boxes, gt_labels, gt_mask)), run(padded))


@pytest.mark.parametrize("assign", ["tal", "atss"])
def test_gt_permutation_relabels_indices_only(assign):
    run = run_tal if assign == "tal" else run_atss
    for seed, kind in CASES[:6]:
        scores, pred_boxes, gt_boxes, gt_labels, gt_mask = random_problem(300 + seed, G=6, kind=kind)
        perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
        base = run((scores, pred_boxes, gt_boxes, gt_labels, gt_mask))
        permuted = run((scores, pred_boxes, gt_boxes[:, perm], gt_labels[:, perm], gt_mask[:, perm]))
        inverse = torch.argsort(perm)  # old index g sits at position inverse[g] after permuting
        assert torch.equal(permuted.gt_index[base.fg_mask], inverse[base.gt_index[base.fg_mask]])
        for name in ("labels", "fg_mask", "target_boxes", "target_scores", "overlaps"):
            torch.testing.assert_close(getattr(permuted, name), getattr(base, name), msg=name)


@pytest.mark.parametrize("assign", ["tal", "atss"])
def test_batched_equals_per_image(assign):
    run = run_tal if assign == "tal" else run_atss
    problem = random_problem(400, B=4, G=6, kind="overlap")
    batched = run(problem)
    for b in range(4):
        single = run(tuple(x[b : b + 1] for x in problem))
        for name in ("labels", "fg_mask", "gt_index", "target_boxes", "target_scores", "overlaps"):
            torch.testing.assert_close(getattr(batched, name)[b : b + 1], getattr(single, name), msg=name)


@pytest.mark.parametrize("assign", ["tal", "atss"])
def test_no_valid_gt_is_all_background(assign):
    run = run_tal if assign == "tal" else run_atss
    for G, num_valid in ((4, 0), (0, 0)):
        problem = random_problem(500, B=2, G=max(G, 1), num_valid=num_valid)
        if G == 0:
            problem = problem[:2] + (
                torch.zeros(2, 0, 4),
                torch.zeros(2, 0, dtype=torch.long),
                torch.zeros(2, 0, dtype=torch.bool),
            )
        asg = run(problem)
        assert not asg.fg_mask.any() and (asg.labels == 4).all()
        assert asg.target_scores.abs().sum() == 0 and asg.target_boxes.abs().sum() == 0
        assert asg.labels.shape == (2, POINTS.shape[0]) and asg.target_boxes.shape == (2, POINTS.shape[0], 4)


@pytest.mark.parametrize("assign", ["tal", "atss"])
def test_anchor_zero_of_every_level_can_be_positive(assign):
    """PaddleDetection#5710 bug class: padding logic must not exclude prior 0 of a level.

    Per level, a GT equal to that level's first anchor (clipped to start just inside the image corner)
    claims it, with padded rows before and after it in the batch.
    """
    starts = [0, NUM_PER_LEVEL[0], NUM_PER_LEVEL[0] + NUM_PER_LEVEL[1]]
    for level, start in enumerate(starts):
        s = STRIDES[level]
        gt = torch.tensor([-0.5 * s, -0.5 * s, 0.6 * s, 0.6 * s]) if assign == "tal" else ANCHORS[start] + 0.5
        gt_boxes = torch.stack((torch.full((4,), 7.0), gt, torch.zeros(4)))[None].repeat(2, 1, 1)
        gt_mask = torch.tensor([[False, True, False]]).repeat(2, 1)
        labels = torch.tensor([[0, 1, 0]]).repeat(2, 1)
        pred = torch.zeros(2, POINTS.shape[0], 4)
        pred[:, start] = gt
        scores = torch.full((2, POINTS.shape[0], 4), 0.5)
        problem = (scores, pred, gt_boxes, labels, gt_mask)
        asg = run_tal(problem) if assign == "tal" else run_atss(problem)
        assert asg.fg_mask[:, start].all(), f"level {level}: prior {start} not assigned"
        assert (asg.gt_index[:, start] == 1).all() and (asg.labels[:, start] == 1).all()
