"""Multi-scale backbones: shapes, strides, frame order, weight loading."""

from pathlib import Path

import pytest
import torch
import torchvision

from rvos.errors import RVOSError
from rvos.models.backbones import (MobileNetV2Backbone, VideoSwinBackbone, build_backbone,
                                   clip_features)

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
MOBILENET = ASSETS / "weights" / "mobilenetv2_imagenet_features.pt"


@pytest.mark.parametrize("name", ["resnet18", "swin_t", "video_swin_t", "mobilenet_v2"])
def test_maps_have_the_declared_channels_and_strides(name):
    torch.manual_seed(0)
    backbone = build_backbone(name).eval()
    h, w = 64, 96
    with torch.no_grad():
        maps = clip_features(backbone, torch.randn(2, 3, 3, h, w))
    assert len(maps) == len(backbone.channels) == len(backbone.strides) == 4
    for m, c, s in zip(maps, backbone.channels, backbone.strides):
        assert m.shape == (6, c, h // s, w // s)
        assert torch.isfinite(m).all()


def test_sizes_that_are_not_multiples_of_32_still_work():
    backbone = build_backbone("swin_t").eval()
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 70, 50))
    # patch embedding floors (70/4 -> 17), each patch merging rounds up (17/2 -> 9)
    assert [tuple(m.shape[-2:]) for m in maps] == [(17, 12), (9, 6), (5, 3), (3, 2)]


def test_image_backbones_see_frames_independently_in_clip_order():
    torch.manual_seed(0)
    backbone = build_backbone("mobilenet_v2").eval()
    clip = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        maps = clip_features(backbone, clip)
        single = backbone(clip[1, 2:3])
    torch.testing.assert_close(maps[-1][1 * 3 + 2:1 * 3 + 3], single[-1])


def test_video_swin_mixes_neighbouring_frames():
    torch.manual_seed(0)
    backbone = build_backbone("video_swin_t").eval()
    clip = torch.randn(1, 3, 3, 32, 32)
    changed = clip.clone()
    changed[0, 0] += 1.0
    with torch.no_grad():
        a = backbone(clip)[-1]
        b = backbone(changed)[-1]
    # frame 2 was not touched, yet its features change: attention spans the frames
    assert not torch.allclose(a[2], b[2])
    with pytest.raises(ValueError, match="clips"):
        backbone(clip[0])


def test_video_swin_patch_embedding_keeps_a_static_clip_response(tmp_path):
    torch.manual_seed(0)
    original = torchvision.models.video.swin3d_t()
    file = tmp_path / "swin3d_t.pt"
    torch.save(original.state_dict(), file)
    backbone = VideoSwinBackbone("t", str(file))
    frame = torch.randn(1, 3, 1, 16, 16)
    with torch.no_grad():
        two_frames = original.patch_embed.proj(frame.repeat(1, 1, 2, 1, 1))   # (1, C, 1, 4, 4)
        one_frame = backbone.patch_embed.proj(frame)                           # (1, C, 1, 4, 4)
    torch.testing.assert_close(one_frame, two_frames, atol=1e-5, rtol=1e-5)


def test_unknown_backbone_and_weights_are_clear_errors(tmp_path):
    with pytest.raises(RVOSError, match="unknown backbone"):
        build_backbone("vgg16")
    with pytest.raises(RVOSError, match="not found"):
        build_backbone("mobilenet_v2", str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"features.0.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(RVOSError, match="do not fit"):
        MobileNetV2Backbone(str(bad))


def test_mobilenet_features_load_from_bare_or_prefixed_names(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v2().features
    bare = tmp_path / "bare.pt"
    torch.save(source.state_dict(), bare)
    loaded = MobileNetV2Backbone(str(bare))
    torch.testing.assert_close(loaded.features[5].conv[0][0].weight, source[5].conv[0][0].weight)


@pytest.mark.skipif(not MOBILENET.is_file(), reason="offline assets (../shared/assets) absent")
def test_offline_imagenet_mobilenet_loads_every_tensor():
    backbone = MobileNetV2Backbone(str(MOBILENET)).eval()
    state = torch.load(MOBILENET, weights_only=True)
    # the asset's names differ from torchvision's; its tensors map 1:1 in order
    ours = torchvision.models.mobilenet_v2().features.state_dict()
    assert len(state) == len(ours)
    for (name, _), tensor in list(zip(ours.items(), state.values()))[-12:]:
        index = int(name.split(".")[0])
        if index < 18:
            torch.testing.assert_close(backbone.features.state_dict()[name], tensor)
    # pretrained BN statistics: features of a real-looking input stay in a sane range
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 64) * 0.5)
    assert all(torch.isfinite(m).all() and m.abs().max() < 1e3 for m in maps)
