"""Run from the repository root: python benchmarks/bench_query_sharing.py [OUT.json].

How much of a cached query-family step is the per-sentence encoder (what a text-free,
per-clip encoder would share)? Times forward+backward of the fused encoder and of the whole
step for 4 clips x 8 sentences x T=4 (the query_synth_frozen config sizes, 128x128)."""
import json
import sys
import time
from pathlib import Path

import torch

from rvos.config import load_config
from rvos.models.build import build_model
torch.manual_seed(0)
cfg = load_config("query_synth_frozen", ["model.query.backbone_weights=none"])
m = build_model(cfg).train()
clips, sents, t = 4, 8, 4
frames = torch.randn(clips * t, 3, 128, 128)
with torch.no_grad():
    maps = [x for x in m.backbone(frames)]
idx = torch.arange(clips * t).view(clips, 1, t).expand(clips, sents, t).reshape(-1)
texts = [f"the red circle number {i}" for i in range(clips * sents)]
m.text_encoder(texts, torch.device("cpu"))          # memoise
def full():
    out = m.forward_maps([x.index_select(0, idx) for x in maps], texts, t)
    loss = out.mask_logits.float().sigmoid().mean() + out.scores.mean() + out.boxes.mean()
    loss.backward()
def encoder(n_frames):
    lv = m.levels([x[:n_frames] if n_frames <= x.shape[0] else x.index_select(0, idx[:n_frames]) for x in maps])
    src, pos, shapes = m.flatten_levels(lv)
    mem = m.encoder(src, pos, shapes)
    mem.mean().backward()
seconds = {}
for name, fn in (("full step, 32 sentence-clips", full), ("encoder on 128 sentence-frames", lambda: encoder(128)),
                 ("encoder on 16 clip-frames (shared)", lambda: encoder(16))):
    fn(); m.zero_grad()
    t0 = time.perf_counter()
    for _ in range(3):
        fn(); m.zero_grad()
    seconds[name] = (time.perf_counter() - t0) / 3
    print(f"{name}: {seconds[name]:.2f} s")
out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/query_sharing.json")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"seconds_forward_backward": seconds, "clips": clips,
                           "sentences_per_clip": sents, "frames": t,
                           "threads": torch.get_num_threads()}, indent=1))
print(f"wrote {out}")
