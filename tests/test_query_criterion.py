"""The query models' criterion: matching, named losses, what each loss counts."""

import pytest
import torch

from rvos.data.batch import ClipBatch, ClipMeta, masks_to_boxes_cxcywh
from rvos.losses import sigmoid_focal_loss
from rvos.models.query.matcher import ClipMatcher
from rvos.models.outputs import RVOSOutput
from rvos.models.query.criterion import LOSS_NAMES, QueryCriterion

WEIGHTS = {"class": 2.0, "bbox": 5.0, "giou": 2.0, "mask": 2.0, "dice": 5.0}
T, Q, SIZE = 3, 4, 16


def make_batch(valid=(True, True, False)):
    valid = torch.tensor(valid)
    masks = torch.zeros(1, T, SIZE, SIZE)
    masks[0, :, 4:12, 4:12] = 1   # aligned with the stride-4 grid of the predictions
    masks = masks * valid[None, :, None, None]
    boxes, _ = masks_to_boxes_cxcywh(masks)
    meta = ClipMeta("v", "0", [f"{i:05d}" for i in range(T)], (SIZE, SIZE))
    return ClipBatch(torch.zeros(1, T, 3, SIZE, SIZE), masks, valid[None], boxes, ["x"], [meta])


def make_output(batch, good_query=2, quality=8.0):
    """Query ``good_query`` predicts the target at stride 4; the others predict nothing."""
    small = torch.nn.functional.interpolate(batch.masks, scale_factor=0.25, mode="area")
    logits = torch.full((1, T, Q, SIZE // 4, SIZE // 4), -quality)
    logits[0, :, good_query] = (small[0] * 2 - 1) * quality
    scores = torch.full((1, T, Q), -quality)
    scores[0, :, good_query] = torch.where(batch.valid[0], quality, -quality)
    boxes = torch.full((1, T, Q, 4), 0.5)
    boxes[0, :, good_query] = torch.where(batch.valid[0, :, None], batch.boxes[0], 0.5)
    return RVOSOutput(mask_logits=logits, scores=scores, boxes=boxes)


def criterion(num_aux=0):
    return QueryCriterion(ClipMatcher(), WEIGHTS, num_aux=num_aux)


def test_good_prediction_scores_low_and_beats_a_wrong_one():
    batch = make_batch()
    good = criterion()(make_output(batch), batch)
    assert set(good) == set(LOSS_NAMES)
    assert good["bbox"] < 1e-6 and good["giou"] < 1e-5
    assert good["class"] < 0.01 and good["dice"] < 0.1
    wrong = make_output(batch)
    wrong.mask_logits = wrong.mask_logits.roll(2, -1)    # masks shifted by 8 pixels
    bad = criterion()(wrong, batch)
    assert bad["dice"] > good["dice"] + 0.3 and bad["mask"] > good["mask"]


def test_class_target_is_the_matched_query_in_visible_frames_only():
    batch = make_batch(valid=(True, False, True))
    output = make_output(batch, good_query=1)
    g = torch.Generator().manual_seed(0)
    output.scores = torch.randn(1, T, Q, generator=g)
    output.scores[0, :, 1] += 4          # make query 1 clearly the match by score as well
    losses = criterion()(output, batch)
    target = torch.zeros(1, T, Q)
    target[0, :, 1] = batch.valid[0].float()
    expected = sigmoid_focal_loss(output.scores, target) * Q
    assert losses["class"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_box_losses_ignore_frames_without_the_object():
    batch = make_batch(valid=(True, True, False))
    output = make_output(batch)
    base = criterion()(output, batch)
    output.boxes[0, 2, 2] = torch.tensor([0.1, 0.9, 0.05, 0.05])   # frame 2: object absent
    moved = criterion()(output, batch)
    assert moved["bbox"].item() == pytest.approx(base["bbox"].item(), abs=1e-6)
    assert moved["giou"].item() == pytest.approx(base["giou"].item(), abs=1e-6)
    output.boxes[0, 0, 2] = torch.tensor([0.1, 0.9, 0.05, 0.05])   # frame 0: visible
    assert criterion()(output, batch)["bbox"] > base["bbox"] + 0.1


def test_aux_layers_get_their_own_names_and_weights():
    batch = make_batch()
    output = make_output(batch)
    output.aux = [make_output(batch, good_query=0), make_output(batch, good_query=3)]
    crit = criterion(num_aux=2)
    losses = crit(output, batch)
    assert set(losses) == set(crit.weights)
    assert crit.weights["dice_1"] == WEIGHTS["dice"]
    # each layer is matched on its own: aux layer 0's good query is 0, and it scores low
    assert losses["bbox_0"] < 1e-6 and losses["bbox_1"] < 1e-6
    with pytest.raises(ValueError, match="aux"):
        criterion(num_aux=3)(output, batch)


def test_unknown_loss_names_are_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        QueryCriterion(ClipMatcher(), {"ce": 1.0})


def test_losses_backpropagate_to_predictions():
    batch = make_batch()
    output = make_output(batch, quality=0.5)
    for t in (output.mask_logits, output.scores, output.boxes):
        t.requires_grad_(True)
    losses = criterion()(output, batch)
    sum(WEIGHTS[k] * losses[k] for k in WEIGHTS).backward()
    assert output.mask_logits.grad[0, :, 2].abs().sum() > 0     # the matched query's masks
    assert output.mask_logits.grad[0, :, 0].abs().sum() == 0    # unmatched: no mask loss
    assert output.scores.grad.abs().sum() > 0
    assert output.boxes.grad[0, 2, 2].abs().sum() == 0          # invisible frame: no box loss
