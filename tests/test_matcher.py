"""The clip-level Hungarian matcher, on hand-made costs and hand-made predictions."""

import itertools

import pytest
import torch

from rvos.data.batch import ClipBatch, ClipMeta, masks_to_boxes_cxcywh
from rvos.models.query.matcher import (ClipMatcher, ClipTargets, focal_class_cost, hungarian_match,
                          pairwise_dice_coefficient, pairwise_mask_focal_cost)
from rvos.models.outputs import RVOSOutput
from rvos.models.query.box_ops import cxcywh_to_xyxy, elementwise_generalized_iou


def brute_force(cost):
    q, m = cost.shape
    best, best_rows = float("inf"), None
    for rows in itertools.permutations(range(q), m):
        total = sum(cost[r, c].item() for c, r in enumerate(rows))
        if total < best:
            best, best_rows = total, rows
    return best, best_rows


def test_hungarian_on_a_hand_made_matrix():
    # greedy (take the global minimum 1 first) would cost 1 + 9 = 10; optimum is 2 + 3 = 5
    cost = torch.tensor([[1.0, 2.0],
                         [3.0, 9.0],
                         [4.0, 9.5]])
    rows, cols = hungarian_match(cost)
    assert cols.tolist() == [0, 1]
    assert rows.tolist() == [1, 0]


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_is_optimal_on_random_costs(seed):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(5, 3, generator=g)
    rows, cols = hungarian_match(cost)
    best, _ = brute_force(cost)
    assert cost[rows, cols].sum().item() == pytest.approx(best)
    assert len(set(rows.tolist())) == 3


def test_hungarian_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        hungarian_match(torch.tensor([[float("nan")], [1.0]]))


def test_focal_class_cost_prefers_confident_queries():
    costs = focal_class_cost(torch.tensor([-4.0, 0.0, 4.0]))
    assert costs[0] > costs[1] > costs[2]


def test_pairwise_mask_costs_equal_their_per_pair_definitions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 30, generator=g)
    targets = (torch.rand(2, 30, generator=g) > 0.5).float()
    focal = pairwise_mask_focal_cost(logits, targets)
    dice = pairwise_dice_coefficient(logits, targets)
    for i in range(4):
        for j in range(2):
            p = logits[i].sigmoid()
            t = targets[j]
            ce = torch.nn.functional.binary_cross_entropy_with_logits(logits[i], t, reduction="none")
            p_t = p * t + (1 - p) * (1 - t)
            expected = ((0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2).mean()
            assert focal[i, j].item() == pytest.approx(expected.item(), rel=1e-5)
            assert dice[i, j].item() == pytest.approx(((2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)).item(),
                                                      rel=1e-5)


def square_mask(t, size, x0, y0, side):
    m = torch.zeros(t, size, size)
    m[:, y0:y0 + side, x0:x0 + side] = 1
    return m


def make_batch(masks, valid):
    boxes, _ = masks_to_boxes_cxcywh(masks)
    boxes = boxes * valid[..., None]
    t, h, w = masks.shape
    meta = ClipMeta(video="v", exp_id="0", frame_names=[f"{i:05d}" for i in range(t)],
                    orig_size=(h, w))
    return ClipBatch(frames=torch.zeros(1, t, 3, h, w), masks=masks[None], valid=valid[None],
                     boxes=boxes[None], texts=["x"], meta=[meta])


def test_matcher_picks_the_query_whose_masks_and_boxes_fit():
    t, size = 3, 16
    target = square_mask(t, size, 2, 2, 6)
    batch = make_batch(target, torch.ones(t, dtype=torch.bool))
    # three queries: one on the object, one elsewhere, one everywhere
    q_masks = torch.stack([square_mask(t, size, 9, 9, 6), target, torch.ones(t, size, size)], 1)
    logits = (q_masks * 2 - 1) * 8                              # (T, Q, h, w)
    boxes = torch.stack([masks_to_boxes_cxcywh(q_masks[:, q])[0] for q in range(3)], 1)
    output = RVOSOutput(mask_logits=logits[None], scores=torch.zeros(1, t, 3), boxes=boxes[None])
    for weights in [dict(cost_class=0, cost_bbox=0, cost_giou=0, cost_mask=0, cost_dice=1),
                    dict(cost_class=0, cost_bbox=0, cost_giou=0, cost_mask=1, cost_dice=0),
                    dict(cost_class=0, cost_bbox=1, cost_giou=0, cost_mask=0, cost_dice=0),
                    dict(cost_class=0, cost_bbox=0, cost_giou=1, cost_mask=0, cost_dice=0),
                    {}]:
        (rows, cols), = ClipMatcher(**weights)(output, batch)
        assert rows.tolist() == [1] and cols.tolist() == [0], weights


def test_class_cost_counts_only_frames_where_the_object_is_visible():
    t = 4
    valid = torch.tensor([True, True, False, False])
    target = square_mask(t, 8, 1, 1, 3) * valid[:, None, None]
    batch = make_batch(target, valid)
    scores = torch.full((t, 2), -5.0)
    scores[:2, 0] = 5.0      # query 0: confident where the object is visible
    scores[2:, 1] = 9.0      # query 1: very confident only where it is absent
    output = RVOSOutput(mask_logits=torch.zeros(1, t, 2, 8, 8), scores=scores[None],
                        boxes=torch.full((1, t, 2, 4), 0.5))
    matcher = ClipMatcher(cost_class=1, cost_bbox=0, cost_giou=0, cost_mask=0, cost_dice=0)
    (rows, _), = matcher(output, batch)
    assert rows.tolist() == [0]


def test_box_costs_have_the_documented_values():
    t = 2
    tgt_boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([True, False])
    pred = torch.tensor([[[0.6, 0.5, 0.2, 0.2]], [[0.1, 0.9, 0.3, 0.3]]])   # (T, Q=1, 4)
    target = ClipTargets(masks=torch.zeros(1, t, 4, 4), valid=valid[None], boxes=tgt_boxes[None])
    l1 = ClipMatcher(cost_class=0, cost_bbox=1, cost_giou=0, cost_mask=0, cost_dice=0)
    cost = l1.cost_matrix(torch.zeros(t, 1), pred, torch.zeros(t, 1, 4, 4), target)
    assert cost.item() == pytest.approx(0.1 / t)     # only the visible frame, divided by T
    giou = ClipMatcher(cost_class=0, cost_bbox=0, cost_giou=1, cost_mask=0, cost_dice=0)
    cost = giou.cost_matrix(torch.zeros(t, 1), pred, torch.zeros(t, 1, 4, 4), target)
    expected = -elementwise_generalized_iou(cxcywh_to_xyxy(pred[0, 0]), cxcywh_to_xyxy(tgt_boxes[0]))
    assert cost.item() == pytest.approx(expected.item() / t, rel=1e-5)


def test_giou_known_values():
    a = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert elementwise_generalized_iou(a, a).item() == pytest.approx(1.0, abs=1e-6)
    b = torch.tensor([2.0, 0.0, 3.0, 1.0])  # disjoint, hull area 3, union 2
    assert elementwise_generalized_iou(a, b).item() == pytest.approx(0 - 1 / 3, abs=1e-6)


def test_all_zero_weights_are_refused():
    with pytest.raises(ValueError):
        ClipMatcher(0, 0, 0, 0, 0)
