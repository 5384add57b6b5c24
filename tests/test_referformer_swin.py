"""ReferFormer's Swin backbones: shapes, chunked attention, variant names, and (when an official
ReferFormer checkout is named by RVOS_REFERFORMER_OFFICIAL) numerical parity with it."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from rvos.models.referformer import swin, video_swin
from rvos.models.referformer.swin import SwinBackbone, shift_region_labels
from rvos.models.referformer.video_swin import VideoSwinBackbone

OFFICIAL_ENV = "RVOS_REFERFORMER_OFFICIAL"
OFFICIAL_PREFIX = "backbone.0.body."


def _frames(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- shapes and names


@pytest.mark.parametrize("make, expected_channels", [
    (lambda: VideoSwinBackbone("video_swin_t"), [96, 192, 384, 768]),
    (lambda: SwinBackbone("swin_t"), [96, 192, 384, 768]),
])
def test_shapes_strides_channels(make, expected_channels):
    torch.manual_seed(0)
    model = make().eval()
    assert model.strides == [4, 8, 16, 32]
    assert model.num_channels == expected_channels
    frames = _frames(2 * 2, 64, 96)  # B=2 clips of T=2
    with torch.no_grad():
        outs = model(frames, 2)
    assert len(outs) == 4
    for out, stride, channels in zip(outs, model.strides, model.num_channels):
        assert out.shape == (4, channels, 64 // stride, 96 // stride)
        assert torch.isfinite(out).all()


def test_odd_sizes_round_up():
    torch.manual_seed(0)
    model = VideoSwinBackbone("video_swin_t").eval()
    with torch.no_grad():
        outs = model(_frames(3, 50, 70), 3)
    assert [tuple(o.shape[-2:]) for o in outs] == [(13, 18), (7, 9), (4, 5), (2, 3)]


def test_video_frames_interact_only_within_a_clip():
    """Clips are independent: running two clips together equals running them apart."""
    torch.manual_seed(0)
    model = VideoSwinBackbone("video_swin_t").eval()
    frames = _frames(4, 64, 64)
    with torch.no_grad():
        together = model(frames, 2)
        first = model(frames[:2], 2)
        changed = frames.clone()
        changed[1] += 1.0  # a change in frame 1 reaches frame 0 of the same clip
        moved = model(changed, 2)
    for t, f, m in zip(together, first, moved):
        torch.testing.assert_close(t[:2], f, atol=1e-5, rtol=0)
        assert (m[0] - t[0]).abs().max() > 1e-3
        torch.testing.assert_close(m[2:], t[2:], atol=0, rtol=0)


def test_state_dict_names():
    v = VideoSwinBackbone("video_swin_t").state_dict()
    assert "layers.0.blocks.0.attn.qkv.weight" in v
    assert v["layers.0.blocks.1.attn.relative_position_index"].shape == (392, 392)
    assert v["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (15 * 13 * 13, 3)
    assert v["patch_embed.proj.weight"].shape == (96, 3, 1, 4, 4)
    assert {k.split(".")[1] for k in v if k.startswith("downsamples.")} == {"0", "1", "2"}
    assert not any(k.startswith("norm") or ".downsample." in k for k in v)
    s = SwinBackbone("swin_t").state_dict()
    assert {"norm0.weight", "norm3.bias", "layers.2.downsample.reduction.weight"} <= set(s)
    assert s["layers.0.blocks.0.attn.relative_position_index"].shape == (49, 49)
    assert not any(k.startswith("layers.3.downsample") for k in s)


@pytest.mark.parametrize("cls, name", [(VideoSwinBackbone, "video_swin_x"),
                                       (SwinBackbone, "swin_xl")])
def test_bad_variant_names_the_known_ones(cls, name):
    with pytest.raises(ValueError) as err:
        cls(name)
    message = str(err.value)
    assert name in message
    known = video_swin.VARIANTS if cls is VideoSwinBackbone else swin.VARIANTS
    for variant, settings in known.items():
        assert variant in message and settings.official_name in message


def test_official_names_are_accepted():
    assert swin.resolve_variant("swin_l_p4w7", swin.VARIANTS, "Swin").embed_dim == 192
    assert video_swin.resolve_variant(
        "video_swin_b_p4w7", video_swin.VARIANTS, "Video Swin").num_heads == (4, 8, 16, 32)


# --------------------------------------------------------------------------- chunked attention


@pytest.mark.parametrize("make, frames, num_frames", [
    (lambda: VideoSwinBackbone("video_swin_t"), (10, 60, 100), 10),
    (lambda: SwinBackbone("swin_t"), (3, 60, 100), 1),
])
def test_chunked_window_attention_equals_unchunked(make, frames, num_frames):
    torch.manual_seed(0)
    model = make().eval()
    x = _frames(*frames)
    with torch.no_grad():
        model.window_chunk = 10 ** 9
        whole = model(x, num_frames)
        model.window_chunk = 3
        chunked = model(x, num_frames)
        model.window_chunk = None
        auto = model(x, num_frames)
    for a, b, c in zip(whole, chunked, auto):
        assert (a - b).abs().max() < 1e-5
        assert (a - c).abs().max() < 1e-5


def test_shift_region_labels_match_official_slices():
    """The region ids reproduce the official img_mask construction (slices per axis)."""
    padded, window, shift = (16, 14, 21), (8, 7, 7), (4, 0, 3)
    img = torch.zeros(padded)
    cnt = 0
    axes = []
    for size, w, s in zip(padded, window, shift):
        axes.append((slice(-w), slice(-w, -s), slice(-s, None)))
    for a in axes[0]:
        for b in axes[1]:
            for c in axes[2]:
                img[a, b, c] = cnt
                cnt += 1
    official = swin.window_partition(img[None, ..., None], window).squeeze(-1)
    ours = shift_region_labels(padded, window, shift)
    same_official = official[:, :, None] == official[:, None, :]
    same_ours = ours[:, :, None] == ours[:, None, :]
    assert torch.equal(same_official, same_ours)


# --------------------------------------------------------------------------- official parity


def _official_root(module: str) -> Path:
    value = os.environ.get(OFFICIAL_ENV)
    if not value:
        pytest.skip(f"{OFFICIAL_ENV} is not set (point it at a ReferFormer checkout to compare)")
    root = Path(value).expanduser()
    if not (root / "models" / f"{module}.py").is_file():
        pytest.skip(f"{OFFICIAL_ENV}={root} holds no models/{module}.py")
    return root


def _load_official(module: str):
    """Import ``models.<module>`` from the official checkout by file path, without running
    ``models/__init__.py`` (which needs the compiled deformable-attention op); ``sys.path`` and
    ``sys.modules`` are restored afterwards so nothing official leaks into other tests."""
    root = _official_root(module)
    saved_path = list(sys.path)
    saved_modules = dict(sys.modules)
    try:
        sys.path.insert(0, str(root))
        for name in list(sys.modules):
            if name.split(".")[0] in ("models", "util"):
                del sys.modules[name]
        package = types.ModuleType("models")
        package.__path__ = [str(root / "models")]
        sys.modules["models"] = package
        spec = importlib.util.spec_from_file_location(
            f"models.{module}", root / "models" / f"{module}.py")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = loaded
        spec.loader.exec_module(loaded)
        return loaded
    finally:
        sys.path[:] = saved_path
        for name in list(sys.modules):
            if name.split(".")[0] in ("models", "util"):
                del sys.modules[name]
        sys.modules.update({k: v for k, v in saved_modules.items()
                            if k.split(".")[0] in ("models", "util")})


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Perturb every norm/bias/position-bias parameter so none sits at its trivial init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "relative_position_bias_table" in name:
                p.copy_(noise)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)


def _compare(official: torch.nn.Module, ours: torch.nn.Module, frames: torch.Tensor,
             num_frames: int, official_outputs, label: str) -> list[float]:
    # The official body's own keys are the checkpoint keys less OFFICIAL_PREFIX.
    state = {OFFICIAL_PREFIX + k: v for k, v in official.state_dict().items()}
    ours.load_state_dict({k[len(OFFICIAL_PREFIX):]: v for k, v in state.items()}, strict=True)
    with torch.no_grad():
        expected = official_outputs(frames)
        got = ours(frames, num_frames)
    assert len(got) == len(expected) == 4
    diffs = []
    for i, (e, g) in enumerate(zip(expected, got)):
        assert e.shape == g.shape, (i, e.shape, g.shape)
        diffs.append((e - g).abs().max().item())
        print(f"{label} {tuple(frames.shape)} T={num_frames} level {i} {tuple(g.shape)}: "
              f"max|diff|={diffs[-1]:.3g} (max|out|={e.abs().max().item():.3g})")
    assert max(diffs) < 1e-4, diffs
    return diffs


# (B*T, H, W, T): T > 8 pads and shifts time; T <= 8 shrinks the time window; sizes not divisible
# by 4 / 7 exercise patch and window padding; the coarse stages shrink the spatial window.
VIDEO_CASES = [(10, 72, 120, 10), (6, 98, 150, 3)]
IMAGE_CASES = [(4, 98, 150), (2, 40, 52)]


@pytest.mark.parametrize("variant", ["video_swin_t", "video_swin_b"])
def test_video_swin_matches_official(variant):
    official_module = _load_official("video_swin_transformer")
    cfg = dict(official_module.configs[video_swin.VARIANTS[variant].official_name])
    torch.manual_seed(1)
    # (pretrained=False, path=None: random weights, nothing loaded)
    official = official_module.VideoSwinTransformerBackbone(False, None, False, **cfg)
    official.eval()
    _randomise(official, seed=2)
    ours = VideoSwinBackbone(variant, window_chunk=7).eval()
    assert set(official.state_dict()) == set(ours.state_dict())
    for n, h, w, t in VIDEO_CASES:
        frames = _frames(n, h, w, seed=n + h)

        def run(x, t=t):
            out = official(x, t)
            return [out[k] for k in sorted(out)]  # the Joiner's order

        _compare(official, ours, frames, t, run, variant)


@pytest.mark.parametrize("variant", ["swin_t", "swin_b"])
def test_image_swin_matches_official(variant):
    official_module = _load_official("swin_transformer")
    cfg = dict(official_module.configs[swin.VARIANTS[variant].official_name])
    torch.manual_seed(1)
    official = official_module.SwinTransformer(**cfg)  # no init_weights(): no checkpoint
    official.eval()  # (its train() override returns None, so no chaining)
    _randomise(official, seed=3)
    ours = SwinBackbone(variant, window_chunk=5).eval()
    assert set(official.state_dict()) == set(ours.state_dict())
    for n, h, w in IMAGE_CASES:
        frames = _frames(n, h, w, seed=n + h)

        def run(x):
            out = official(x)
            return [out[k] for k in sorted(out)]

        _compare(official, ours, frames, 1, run, variant)
