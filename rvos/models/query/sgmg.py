"""SgMg (Miao et al., "Spectrum-guided Multi-granularity Referring Video Object
Segmentation", ICCV 2023) on the query core: its two modules and the loss of its coarse masks.

What is taken from the paper and the official code (bo-miao/SgMg at commit 728333c:
models/modules.py, models/decoder.py, models/sgmg.py, models/criterion.py), as facts:

* Spectrum-guided cross-modal fusion (SCF). Every transformer level passes a residual
  spectral filter, is fused with the words (the core's cross-attention), and passes a
  second filter. A filter takes the 2-D FFT of the features, damps a Gaussian band around
  the centre of the (unshifted) spectrum, that is the highest frequencies, by a strength in
  (0, 1) predicted per frame from the features (3x3 conv, global average, two linear layers,
  sigmoid), mixes real and imaginary parts with 1x1 conv, ReLU, 1x1 conv, returns to space
  with the inverse FFT and adds the result to its input: a global, frequency-selective
  interaction within each frame. The Gaussian has sigma 7 bins at the finest level and the
  same relative shape at the coarser ones. The sentence guides the second filter through the
  fused features it reads (the official filter does not read the sentence embedding).
* Multi-granularity segment-and-optimize (MSO). The dynamic kernels segment the encoder
  memory itself (its levels up to stride 32 summed at stride 8, no FPN decoder): each
  query's last dynamic conv gives P^2 = 16 channels per stride-8 position, a P x P block of
  the coarse mask (pixel shuffle, stride 2). The optimizer then refines them with visual
  details: concatenate the stride-8 backbone map, ReLU, 3x3 conv, ReLU, 3x3 conv, add (a
  residual step); upsample to stride 4 and do the same with the stride-4 backbone map; pixel
  shuffle to stride 1. Both the coarse and the refined masks are supervised (focal + Dice,
  the coarse ones against the target sampled at stride 2), with the same weights.
* Inference: only the referred query (highest mean score over the clip) is refined on
  Ref-YouTube-VOS / Ref-DAVIS; every query on A2D / JHMDB / RefCOCO (``refine: all``).

Why inference is cheaper than ReferFormer's (the paper's claim of faster inference): no
FPN decoder at stride 4 (the masks come from the encoder memory at stride 8), the dynamic
convs run at stride 8 (a quarter of the positions) for every query and layer, and the
detail optimizer, 16-channel convs, runs once per clip and frame for the one referred
query of the final layer. SCF adds back part of it (two 3x3 full-width convs and two
spectral 1x1 convs per level, plus FFTs). Counted post-backbone (forward_maps, Video-Swin-T
widths, 360x640, 5 frames, 5 queries, conv/matmul only): 491 GFLOP for the core, 380 for
SgMg, 274 with the head alone, 597 with SCF alone.

Where this differs: the official model matches before refining and so refines only the
matched query in training; here the criterion matches after the model, so every query is
refined in training (same losses on the matched one, more compute). The strength conv pads
by 1 (the official one does not), so that the 2x2 maps of small inputs work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos.errors import RVOSError
from rvos.losses import dice_loss, labelled_frames, no_loss, sigmoid_focal_loss
from rvos.models.outputs import RVOSOutput
from rvos.models.query.config import QueryModelConfig

SGMG_LOSS_NAMES = ("sgmg_coarse_mask", "sgmg_coarse_dice")
REFINE_MODES = ("best", "all")


# --------------------------------------------------------------------------- SCF
def centre_gaussian(h: int, w: int, sigma_h: float, sigma_w: float,
                    device: torch.device | None = None) -> Tensor:
    """(h, w) Gaussian with peak 1 at (h // 2, w // 2): on an unshifted FFT grid, the
    highest frequencies."""
    ys = torch.arange(h, device=device, dtype=torch.float32) - h // 2
    xs = torch.arange(w, device=device, dtype=torch.float32) - w // 2
    return torch.exp(-(ys[:, None] ** 2) / (2 * sigma_h ** 2) - xs[None, :] ** 2 / (2 * sigma_w ** 2))


def damp_high_frequencies(spectrum: Tensor, strength: Tensor, gaussian: Tensor) -> Tensor:
    """spectrum (N, C, h, w) complex, strength (N,) in [0, 1], gaussian (h, w) in [0, 1]
    -> spectrum * (1 - strength * gaussian): strength 0 passes everything."""
    return spectrum * (1 - strength[:, None, None, None] * gaussian)


class SpectralFilter(nn.Module):
    """One residual spectral filter of SCF.

    forward(x (N, C, h, w), gaussian (h, w)) -> (N, C, h, w) = x + iFFT(mix(damp(FFT(x))))

    ``strength(x)`` -> (N,) in (0, 1), how much the frame's highest frequencies are damped.
    Runs in float32 (complex half precision is not supported everywhere).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
            nn.Linear(dim, dim, bias=False), nn.ReLU(inplace=True),
            nn.Linear(dim, 1, bias=False), nn.Sigmoid())
        self.mix = nn.Sequential(nn.Conv2d(2 * dim, 2 * dim, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(2 * dim, 2 * dim, 1))

    def strength(self, x: Tensor) -> Tensor:
        return self.gate(x)[:, 0]

    def forward(self, x: Tensor, gaussian: Tensor) -> Tensor:
        dtype, (h, w) = x.dtype, x.shape[-2:]
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            spectrum = damp_high_frequencies(torch.fft.fft2(x), self.strength(x), gaussian)
            real, imag = self.mix(torch.cat([spectrum.real, spectrum.imag], 1)).chunk(2, 1)
            y = torch.fft.ifft2(torch.complex(real, imag), s=(h, w)).real
        return (x + y).to(dtype)


class SpectrumFusion(nn.Module):
    """SCF's filters: ``before_fusion`` and ``after_fusion`` each map the transformer levels
    [(N, C, h_i, w_i)], finest first, to filtered levels of the same shapes; the core's word
    fusion runs between them. One filter per level and side.

    ``sigma`` is the Gaussian's width in frequency bins at the finest level; a coarser level
    gets the same relative shape (sigma scaled by its size over the finest one's).
    """

    def __init__(self, dim: int, num_levels: int, sigma: float = 7.0):
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = sigma
        self.pre = nn.ModuleList(SpectralFilter(dim) for _ in range(num_levels))
        self.post = nn.ModuleList(SpectralFilter(dim) for _ in range(num_levels))

    def gaussians(self, levels: list[Tensor]) -> list[Tensor]:
        h0, w0 = levels[0].shape[-2:]
        return [centre_gaussian(x.shape[-2], x.shape[-1], self.sigma * x.shape[-2] / h0,
                                self.sigma * x.shape[-1] / w0, x.device) for x in levels]

    def before_fusion(self, levels: list[Tensor]) -> list[Tensor]:
        return [f(x, g) for f, x, g in zip(self.pre, levels, self.gaussians(levels))]

    def after_fusion(self, levels: list[Tensor]) -> list[Tensor]:
        return [f(x, g) for f, x, g in zip(self.post, levels, self.gaussians(levels))]


# --------------------------------------------------------------------------- MSO
def encoded_mask_features(memory_maps: list[Tensor]) -> Tensor:
    """The encoder memory levels [(N, C, h_i, w_i)], finest first, summed at the finest
    size (bicubic resizing): what SgMg's dynamic kernels segment. -> (N, C, h_0, w_0)."""
    size = memory_maps[0].shape[-2:]
    out = memory_maps[0]
    for x in memory_maps[1:]:
        out = out + F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    return out


class DetailOptimizer(nn.Module):
    """MSO's optimizer: patch masks refined with the backbone's stride-8 and stride-4 maps.

    forward(patches (N, K, P^2, h, w) at stride 8, map8 (N, C8, h, w), map4 (N, C4, H4, W4))
    -> refined mask logits (N, K, P * H4, P * W4), stride 4 / P (the input size for P = 4)

    N frames, K queries per frame. Each stage is x + conv(relu(conv(relu(cat(x, map))))).
    The first conv is linear in its input, so its frame part is computed once per frame and
    shared by the K queries (equal to convolving the concatenation, K times cheaper).
    """

    def __init__(self, patch_size: int, channels8: int, channels4: int):
        super().__init__()
        self.patch_size = p = patch_size
        self.stage8 = nn.ModuleList([nn.Conv2d(p * p + channels8, p * p, 3, padding=1),
                                     nn.Conv2d(p * p, p * p, 3, padding=1)])
        self.stage4 = nn.ModuleList([nn.Conv2d(p * p + channels4, p * p, 3, padding=1),
                                     nn.Conv2d(p * p, p * p, 3, padding=1)])

    @staticmethod
    def _stage(x: Tensor, frame: Tensor, convs: nn.ModuleList) -> Tensor:
        first, second = convs
        n, k, c, h, w = x.shape
        from_masks = F.conv2d(F.relu(x.flatten(0, 1)), first.weight[:, :c], padding=1)
        from_frame = F.conv2d(F.relu(frame), first.weight[:, c:], first.bias, padding=1)
        y = F.relu(from_masks.view(n, k, c, h, w) + from_frame[:, None])
        return x + second(y.flatten(0, 1)).view(n, k, c, h, w)

    def forward(self, patches: Tensor, map8: Tensor, map4: Tensor) -> Tensor:
        n, k, c = patches.shape[:3]
        x = self._stage(patches, map8, self.stage8)
        x = F.interpolate(x.flatten(0, 1), size=map4.shape[-2:], mode="bilinear", align_corners=False)
        x = self._stage(x.view(n, k, c, *map4.shape[-2:]), map4, self.stage4)
        return F.pixel_shuffle(x, self.patch_size).squeeze(2)


class MultiGranularityHead(nn.Module):
    """Segment-and-optimize over the decoder layers' outputs, rewritten in place.

    forward(outputs: per decoder layer an RVOSOutput whose mask_logits are the patch logits
    (B, T, Q, P^2, h, w) of the dynamic heads at stride 8, map8 (B*T, C8, h, w) and map4
    (B*T, C4, 2h, 2w) backbone maps) -> None. Each output then holds
      extras["sgmg_coarse_logits"] (B, T, Q, P*h, P*w): the coarse masks (stride 8 / P),
      mask_logits (B, T, Q, 2P*h, 2P*w): the refined masks (stride 4 / P),
    in training for every layer and query. At inference only the final layer is refined,
    for the query with the highest mean score over the clip (``refine="best"``, the other
    queries carry their coarse masks upsampled) or for every query (``"all"``); earlier
    layers keep their coarse masks as mask_logits.
    """

    def __init__(self, optimizer: DetailOptimizer, refine: str = "best"):
        super().__init__()
        if refine not in REFINE_MODES:
            raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
        self.optimizer, self.refine = optimizer, refine
        self.patch_size = optimizer.patch_size

    def refine_all(self, patches: Tensor, map8: Tensor, map4: Tensor) -> Tensor:
        """(B, T, Q, P^2, h, w) -> (B, T, Q, H', W') refined."""
        b, t, q = patches.shape[:3]
        refined = self.optimizer(patches.flatten(0, 1), map8, map4)
        return refined.view(b, t, q, *refined.shape[-2:])

    def refine_best(self, patches: Tensor, coarse: Tensor, scores: Tensor, map8: Tensor,
                    map4: Tensor) -> Tensor:
        """The best query of each clip refined, the others' coarse masks upsampled."""
        b, t, q = patches.shape[:3]
        best = scores.float().sigmoid().mean(1).argmax(-1)                  # (B,)
        chosen = patches[torch.arange(b, device=patches.device), :, best]   # (B, T, P^2, h, w)
        refined = self.optimizer(chosen.flatten(0, 1)[:, None], map8, map4)  # (B*T, 1, H', W')
        size = refined.shape[-2:]
        others = F.interpolate(coarse.flatten(0, 2)[:, None], size=size, mode="bilinear",
                               align_corners=False).view(b, t, q, *size)
        is_best = F.one_hot(best, q).bool()[:, None, :, None, None]           # (B, 1, Q, 1, 1)
        return torch.where(is_best, refined.view(b, t, 1, *size), others)

    def forward(self, outputs: list[RVOSOutput], map8: Tensor, map4: Tensor) -> None:
        for i, out in enumerate(outputs):
            patches = out.mask_logits
            if patches.ndim != 6:
                raise ValueError(f"expected patch logits (B, T, Q, P^2, h, w), got {tuple(patches.shape)}")
            coarse = F.pixel_shuffle(patches, self.patch_size).squeeze(3)   # (B, T, Q, Ph, Pw)
            out.extras["sgmg_coarse_logits"] = coarse
            if self.training or (i == len(outputs) - 1 and self.refine == "all"):
                out.mask_logits = self.refine_all(patches, map8, map4)
            elif i == len(outputs) - 1:
                out.mask_logits = self.refine_best(patches, coarse, out.scores, map8, map4)
            else:
                out.mask_logits = coarse


def coarse_mask_losses(coarse: Tensor, targets: Tensor, focal_alpha: float = 0.25,
                       focal_gamma: float = 2.0, labelled: Tensor | None = None) -> dict[str, Tensor]:
    """SgMg's loss of the coarse masks of the matched query.

    coarse (B, T, h, w) logits, targets (B, T, H, W) in {0, 1} -> {"sgmg_coarse_mask": focal,
    "sgmg_coarse_dice": 1 - Dice per frame, averaged}. The target is sampled at the coarse
    grid's pixel centres (the official model takes every second pixel from the second one).
    ``labelled`` (B, T) bool: the frames with ground truth (default: all).
    """
    targets = targets.float()
    if targets.shape[-2:] != coarse.shape[-2:]:
        targets = F.interpolate(targets, size=coarse.shape[-2:], mode="nearest-exact")
    coarse = coarse.float()
    if labelled is not None:
        if not labelled.any():
            zero = no_loss(coarse)
            return {"sgmg_coarse_mask": zero, "sgmg_coarse_dice": zero}
        coarse, targets = labelled_frames(coarse, labelled)[None], labelled_frames(targets, labelled)[None]
    return {"sgmg_coarse_mask": sigmoid_focal_loss(coarse, targets, focal_alpha, focal_gamma),
            "sgmg_coarse_dice": dice_loss(coarse.flatten(0, 1), targets.flatten(0, 1))}


def validate_sgmg_config(q: QueryModelConfig) -> None:
    """RVOSError naming the ``model.query.sgmg`` key that cannot work with the rest of ``q``."""
    s = q.sgmg
    if s.spectrum_fusion and q.fusion == "none":
        raise RVOSError("invalid config: model.query.sgmg.spectrum_fusion needs "
                        "model.query.fusion add or multiply, got 'none'")
    if not s.spectrum_sigma > 0:
        raise RVOSError("invalid config: model.query.sgmg.spectrum_sigma must be > 0, "
                        f"got {s.spectrum_sigma}")
    if s.patch_size < 1:
        raise RVOSError(f"invalid config: model.query.sgmg.patch_size must be >= 1, got {s.patch_size}")
    if s.refine not in REFINE_MODES:
        raise RVOSError(f"invalid config: model.query.sgmg.refine must be one of "
                        f"{', '.join(REFINE_MODES)}, got {s.refine!r}")
    if s.multi_granularity and tuple(q.feature_strides)[:1] != (8,):
        raise RVOSError("invalid config: model.query.sgmg.multi_granularity needs "
                        f"model.query.feature_strides to start at 8, got {list(q.feature_strides)}")
