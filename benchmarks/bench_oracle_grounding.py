"""How well can a sentence pick its object when the object masks are given? An upper bound
on grounding for a synthetic benchmark of a given size, apart from mask quality.

    python benchmarks/bench_oracle_grounding.py --data demo_output/data [--steps 1000]
        [--weights ../shared/assets/weights/mobilenetv2_imagenet_features.pt]
        [--out benchmarks/results/oracle_grounding.json]

Every annotated object of a frame becomes one token: its mask-pooled features from a frozen
backbone (MobileNetV2, strides 8/16/32) plus its centroid and size. A small scorer (the
sentence modulates the tokens, the tokens attend to the words and to each other, a linear
read-out) is trained with cross-entropy over the frame's objects on the train split, and
the share of test expressions whose top-scoring object is the referred one is reported per
expression type after a growing number of steps. Only frame-level expression types are used
(attribute, spatial, relational); motion and temporal need more than one frame.

A dense RVOS model must learn this choice and the masks together, so these figures bound
what it can reach on the same data within the same number of sentence presentations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
FRAME_LEVEL_TYPES = ("attribute", "spatial", "relational")


@dataclass
class Choice:
    """One (frame, expression): object tokens (K, C), which of them are referred (K,) bool."""

    objects: Tensor
    referred: Tensor
    text: str
    exp_type: str


@torch.no_grad()
def object_tokens(backbone: nn.Module, image: np.ndarray, labels: np.ndarray) -> tuple[Tensor, list[int]]:
    """image (H, W, 3) uint8, labels (H, W) ids -> tokens (K, C) of the K objects present."""
    from rvos.data.transforms import normalize_frames

    maps = backbone(normalize_frames(image[None]))[1:]                  # strides 8, 16, 32
    lab = torch.from_numpy(labels.astype(np.int64))
    ids = [int(o) for o in torch.unique(lab) if o > 0]
    h, w = labels.shape
    tokens = []
    for o in ids:
        mask = (lab == o).float()[None, None]
        pooled = []
        for fmap in maps:
            weight = F.adaptive_avg_pool2d(mask, fmap.shape[-2:])[0]      # (1, h_i, w_i)
            pooled.append((fmap[0] * weight).sum((1, 2)) / weight.sum().clamp(min=1e-6))
        ys, xs = torch.nonzero(lab == o, as_tuple=True)
        geometry = torch.tensor([2 * xs.float().mean() / w - 1, 2 * ys.float().mean() / h - 1,
                                 float(mask.sum() ** 0.5) / max(h, w)])
        tokens.append(torch.cat([*pooled, geometry]))
    return torch.stack(tokens), ids


def collect(backbone: nn.Module, root: Path, split: str, frames_per_video: int) -> list[Choice]:
    from rvos.data.ytvos import RefYTVOSLayout, evenly_spaced_indices

    layout = RefYTVOSLayout(root, split)
    choices = []
    for video, record in sorted(layout.videos.items()):
        names = [record.frames[i] for i in evenly_spaced_indices(len(record.frames), frames_per_video)]
        images, labels = layout.load_clip(video, names)
        if labels is None:
            raise SystemExit(f"{root / split}: no Annotations to take object masks from")
        for image, label in zip(images, labels):
            tokens, ids = object_tokens(backbone, image, label)
            for e in record.expressions.values():
                if e.exp_type in FRAME_LEVEL_TYPES and any(o in ids for o in e.obj_ids) and len(ids) > 1:
                    choices.append(Choice(tokens, torch.tensor([o in e.obj_ids for o in ids]),
                                          e.text, e.exp_type))
    return choices


class ObjectScorer(nn.Module):
    """tokens (K, C), sentence (D,), words (L, D) -> one logit per object (K,)."""

    def __init__(self, token_dim: int, text_dim: int, dim: int = 128, heads: int = 4):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(token_dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.film = nn.Linear(text_dim, 2 * dim)
        self.words = nn.Linear(text_dim, dim)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.context = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
        self.sentence = nn.Linear(text_dim, dim)
        self.read_out = nn.Linear(dim, 1)

    def forward(self, tokens: Tensor, sentence: Tensor, words: Tensor) -> Tensor:
        scale, shift = self.film(sentence).chunk(2, -1)
        x = (self.embed(tokens) * (1 + scale) + shift)[None]             # (1, K, dim)
        w = self.words(words)[None]
        x = self.context(x + self.cross(x, w, w, need_weights=False)[0])[0]
        return self.read_out(x)[:, 0] + (x * self.sentence(sentence)).sum(-1) / x.shape[-1] ** 0.5


def accuracy_by_type(model: ObjectScorer, choices: list[Choice], text) -> dict[str, float]:
    hits: dict[str, list[float]] = {}
    model.eval()
    with torch.no_grad():
        for c in choices:
            best = int(model(c.objects, *text[c.text]).argmax())
            hits.setdefault(c.exp_type, []).append(float(c.referred[best]))
    model.train()
    return {t: float(np.mean(v)) for t, v in sorted(hits.items())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="synthetic benchmark root (rvos data synth)")
    ap.add_argument("--weights", default=str(REPO.parent / "shared/assets/weights/mobilenetv2_imagenet_features.pt"),
                    help="MobileNetV2 features weights file, or 'none'")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16, help="expressions per step")
    ap.add_argument("--frames-per-video", type=int, default=3, help="frames per video, spread evenly")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/oracle_grounding.json"))
    args = ap.parse_args(argv)

    from rvos.models.backbones import build_backbone
    from rvos.models.text import TextEncoder

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.monotonic()
    backbone = build_backbone("mobilenet_v2", args.weights).eval()
    root = Path(args.data)
    train = collect(backbone, root, "train", args.frames_per_video)
    test = collect(backbone, root, "test", args.frames_per_video)
    if not train or not test:
        raise SystemExit(f"{root}: no frame-level expressions in train or test")
    encoder = TextEncoder()
    sentences = sorted({c.text for c in train + test})
    features = encoder(sentences)
    text = {s: (features.sentence[i], features.words[i][~features.padding_mask[i]])
            for i, s in enumerate(sentences)}
    model = ObjectScorer(train[0].objects.shape[1], encoder.dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    report_at = sorted({s for s in (50, 100, 200, 500, 1000, 2000, args.steps) if s <= args.steps})
    curve = []
    for step in range(1, args.steps + 1):
        batch = rng.choice(len(train), min(args.batch, len(train)), replace=False)
        loss = torch.stack([
            -(F.log_softmax(model(train[i].objects, *text[train[i].text]), 0)[train[i].referred]).mean()
            for i in batch]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in report_at:
            acc = accuracy_by_type(model, test, text)
            curve.append({"step": step, "train_loss": loss.item(), "test_accuracy": acc})
            print(f"step {step:>5}  loss {loss.item():.3f}  test pick accuracy " +
                  "  ".join(f"{t} {v:.2f}" for t, v in acc.items()), flush=True)
    result = {"data": str(root), "weights": args.weights, "train_choices": len(train),
              "test_choices": len(test), "batch": args.batch, "lr": args.lr,
              "chance": float(np.mean([1 / len(c.referred) for c in test])),
              "curve": curve, "seconds": time.monotonic() - start}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{len(train)} train and {len(test)} test choices, chance {result['chance']:.2f}, "
          f"{result['seconds']:.0f} s; wrote {out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
