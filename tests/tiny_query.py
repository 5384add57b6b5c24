"""A tiny query-family model for tests: the overrides and a builder that seeds the weights,
shared by the core's and the methods' test files."""

import torch

from rvos.config import load_config
from rvos.models.build import build_criterion, build_model

TINY_QUERY = ["model.kind=query", "model.query.backbone=mobilenet_v2", "model.query.dim=32",
              "model.query.heads=4", "model.query.enc_layers=1", "model.query.dec_layers=2",
              "model.query.ffn_dim=64", "model.query.num_queries=3", "model.query.mask_dim=8",
              "model.query.dropout=0.0"]


def tiny_overrides(size: int = 64) -> list[str]:
    """TINY_QUERY at size x size frames."""
    return [*TINY_QUERY, f"data.input_size=[{size},{size}]"]


def build_tiny(*extra: str, size: int = 64):
    """(model, criterion) of the tiny config plus ``extra`` overrides, weights seeded with 0."""
    torch.manual_seed(0)
    cfg = load_config(None, tiny_overrides(size) + list(extra))
    return build_model(cfg), build_criterion(cfg)


def train_step_leaves_no_parameter_without_gradient(model, criterion, batch) -> list[str]:
    """One weighted backward pass of ``criterion`` on ``model(batch)`` (losses asserted
    finite); returns the names of trainable parameters that got no gradient (grads kept)."""
    model.train()
    losses = criterion(model(batch.frames, batch.texts), batch)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(criterion.weights[k] * losses[k] for k in criterion.weights).backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
