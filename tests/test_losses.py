import torch
import torch.nn.functional as F

from rvos.config import DenseLossConfig
from rvos.data.batch import ClipBatch
from rvos.losses import dice_loss, sigmoid_focal_loss, weighted_total
from rvos.models.baseline.objective import DenseMaskCriterion
from rvos.models.outputs import RVOSOutput


def test_dice_is_zero_for_a_confident_perfect_mask_and_high_for_the_complement():
    target = torch.zeros(2, 8, 8)
    target[:, 2:5, 2:6] = 1
    perfect = (target * 2 - 1) * 50
    assert dice_loss(perfect, target) < 1e-3
    assert dice_loss(-perfect, target) > 0.9


def test_focal_matches_bce_when_gamma_zero_and_alpha_off():
    logits, target = torch.randn(3, 5, 5), (torch.rand(3, 5, 5) > 0.5).float()
    ref = F.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(sigmoid_focal_loss(logits, target, alpha=-1, gamma=0), ref)
    # easy examples are down-weighted
    assert sigmoid_focal_loss(logits, target, alpha=-1, gamma=2) < ref


def test_criterion_returns_named_losses_weighted_by_config():
    crit = DenseMaskCriterion(DenseLossConfig())
    assert crit.weights == {"bce": 0.3, "dice": 0.6, "focal": 0.1}
    logits = torch.randn(2, 3, 1, 16, 16, requires_grad=True)
    masks = (torch.rand(2, 3, 32, 32) > 0.7).float()          # resized to the logits' size
    batch = ClipBatch(torch.zeros(2, 3, 3, 32, 32), masks, torch.ones(2, 3, dtype=torch.bool),
                      torch.zeros(2, 3, 4), ["a", "b"], [None, None])
    losses = crit(RVOSOutput(mask_logits=logits, scores=torch.zeros(2, 3, 1)), batch)
    assert set(losses) == {"bce", "dice", "focal"}
    total = weighted_total(losses, crit.weights)
    expected = 0.3 * losses["bce"] + 0.6 * losses["dice"] + 0.1 * losses["focal"]
    assert torch.allclose(total, expected)
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
