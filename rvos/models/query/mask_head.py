"""Masks of the query-based model: a stride-4 mask feature map (an FPN over the encoder
memory and the backbone's stride-4 map) and dynamic mask heads (per-query generated 1x1
convolutions, CondInst / ReferFormer style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos.models.query.layers import MLP


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups where the width allows, fewer for tiny widths."""
    for groups in (32, 16, 8, 4, 2, 1):
        if channels % groups == 0:
            return nn.GroupNorm(groups, channels)
    raise AssertionError("unreachable")


def conv_norm_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         group_norm(cout), nn.ReLU(inplace=True))


class MaskFeatureDecoder(nn.Module):
    """Top-down FPN from the coarsest encoder map to stride 4, gated by the sentence.

    forward(maps: feature maps finest first, each (N, C, h_i, w_i) with the finest at
    stride 4 (the backbone's, projected, or the encoder's), sentence (N, C))
    -> mask features (N, mask_dim, H/4, W/4)

    ``in_channels[i]`` is the width of ``maps[i]``. The sentence multiplies the stride-4
    features channel-wise (sigmoid gate), so the map the dynamic heads read already
    emphasises what the sentence is about.
    """

    def __init__(self, in_channels: list[int], dim: int, mask_dim: int):
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1, bias=False), group_norm(dim)) for c in in_channels)
        self.smooth = nn.ModuleList(conv_norm_relu(dim, dim) for _ in in_channels[:-1])
        self.text_gate = nn.Linear(dim, dim)
        self.out = nn.Conv2d(dim, mask_dim, 3, padding=1)

    def forward(self, maps: list[Tensor], sentence: Tensor) -> Tensor:
        x = self.lateral[-1](maps[-1])
        for i in range(len(maps) - 2, -1, -1):
            lateral = self.lateral[i](maps[i])
            x = lateral + F.interpolate(x, size=lateral.shape[-2:], mode="bilinear",
                                        align_corners=False)
            x = self.smooth[i](x)
        x = x * self.text_gate(sentence).sigmoid()[:, :, None, None]
        return self.out(x)


class DynamicMaskHead(nn.Module):
    """Each query generates the weights of a small per-query conv net (1x1 convs, ReLU
    between) that runs over the shared mask features, plus, optionally, two channels of
    coordinates relative to the query's box centre.

    forward(queries (N, Q, C), mask_features (N, M, h, w), centres (N, Q, 2) normalised
    (x, y)) -> mask logits (N, Q, h, w), or (N, Q, out_channels, h, w) when the last layer
    has ``out_channels`` > 1 (SgMg's patch masks)

    Relative coordinates are (centre - pixel centre) in normalised units (so in [-1, 1]
    whatever the resolution); ReferFormer uses input pixels, which grow with the image.
    """

    def __init__(self, dim: int, mask_dim: int, num_layers: int = 3, channels: int = 8,
                 rel_coords: bool = True, out_channels: int = 1):
        super().__init__()
        if num_layers < 1:
            raise ValueError("the dynamic mask head needs at least one layer")
        self.rel_coords = rel_coords
        cin = mask_dim + (2 if rel_coords else 0)
        self.shapes = []                        # (out, in) of each dynamic layer
        for i in range(num_layers):
            cout = out_channels if i == num_layers - 1 else channels
            self.shapes.append((cout, cin))
            cin = cout
        self.mask_dim, self.out_channels = mask_dim, out_channels
        self.num_params = sum(o * i + o for o, i in self.shapes)
        self.controller = MLP(dim, dim, self.num_params, 3)
        for layer in self.controller.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def split_params(self, params: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(N, Q, P) -> per layer (weight (N, Q, out, in), bias (N, Q, out))."""
        sizes = [o * i for o, i in self.shapes] + [o for o, _ in self.shapes]
        chunks = params.split(sizes, dim=-1)
        n, q = params.shape[:2]
        k = len(self.shapes)
        return [(chunks[j].view(n, q, o, i), chunks[k + j]) for j, (o, i) in enumerate(self.shapes)]

    def forward(self, queries: Tensor, mask_features: Tensor, centres: Tensor) -> Tensor:
        n, _, h, w = mask_features.shape
        q = queries.shape[1]
        layers = self.split_params(self.controller(queries))
        feats = mask_features.flatten(2)                                   # (N, M, hw)
        weight, bias = layers[0]
        x = torch.einsum("nqoc,nck->nqok", weight[..., :self.mask_dim], feats)
        if self.rel_coords:
            ys = (torch.arange(h, device=feats.device, dtype=feats.dtype) + 0.5) / h
            xs = (torch.arange(w, device=feats.device, dtype=feats.dtype) + 0.5) / w
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            locations = torch.stack([grid_x.flatten(), grid_y.flatten()])   # (2, hw)
            rel = centres.to(feats.dtype)[..., None] - locations            # (N, Q, 2, hw)
            x = x + torch.einsum("nqoc,nqck->nqok", weight[..., self.mask_dim:], rel)
        x = x + bias[..., None]
        for weight, bias in layers[1:]:
            x = torch.einsum("nqoc,nqck->nqok", weight, F.relu(x)) + bias[..., None]
        return x.view(n, q, h, w) if self.out_channels == 1 else x.view(n, q, self.out_channels, h, w)
