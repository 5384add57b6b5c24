"""Parts of the query-based model: position encodings, fusion, transformer, mask heads."""

import pytest
import torch
import torch.nn.functional as F

from rvos.models.query.fusion import VisionLanguageFusion
from rvos.models.query.layers import MLP, inverse_sigmoid, sine_position_1d, sine_position_2d
from rvos.models.query.mask_head import DynamicMaskHead, MaskFeatureDecoder
from rvos.models.query.transformer import (DeformableDecoder, DeformableDecoderLayer,
                                           DeformableEncoder, DeformableEncoderLayer)

SHAPES = [(8, 8), (4, 4), (2, 2)]
S = sum(h * w for h, w in SHAPES)


def test_sine_positions_are_distinct_and_bounded():
    pos = sine_position_2d(5, 7, 16)
    assert pos.shape == (35, 16)
    assert pos.abs().max() <= 1
    assert torch.cdist(pos, pos).fill_diagonal_(1).min() > 1e-3    # every pixel differs
    pos1 = sine_position_1d(6, 8)
    assert pos1.shape == (6, 8) and torch.cdist(pos1, pos1).fill_diagonal_(1).min() > 1e-3
    with pytest.raises(ValueError):
        sine_position_2d(2, 2, 6)


def test_inverse_sigmoid_inverts():
    x = torch.linspace(0.01, 0.99, 11)
    torch.testing.assert_close(inverse_sigmoid(x).sigmoid(), x)


def test_fusion_makes_tokens_depend_on_words_and_ignores_padding():
    torch.manual_seed(0)
    for mode in ("add", "multiply"):
        fusion = VisionLanguageFusion(16, 4, mode).eval()
        visual = torch.randn(2, 10, 16)
        words = torch.randn(2, 5, 16)
        padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
        pos = sine_position_1d(5, 16)
        out = fusion(visual, words, padding, pos)
        assert out.shape == visual.shape
        other = words.clone()
        other[0] += 1
        assert not torch.allclose(fusion(visual, other, padding, pos)[0], out[0])
        padded_changed = words.clone()
        padded_changed[1, 3:] = 50.0      # only padding tokens of clip 1 changed
        torch.testing.assert_close(fusion(visual, padded_changed, padding, pos)[1], out[1])
    with pytest.raises(ValueError):
        VisionLanguageFusion(16, 4, "concat")


def test_fusion_of_a_clip_equals_fusion_frame_by_frame():
    torch.manual_seed(1)
    fusion = VisionLanguageFusion(16, 4, "add").eval()
    frames = torch.randn(3, 6, 16)           # T = 3 frames of 6 tokens, one clip
    words = torch.randn(1, 4, 16)
    padding = torch.zeros(1, 4, dtype=torch.bool)
    pos = sine_position_1d(4, 16)
    clip = fusion(frames.reshape(1, 18, 16), words, padding, pos).reshape(3, 6, 16)
    one_by_one = torch.cat([fusion(f[None], words, padding, pos) for f in frames])
    torch.testing.assert_close(clip, one_by_one, atol=1e-5, rtol=1e-5)


def test_encoder_reference_points_are_pixel_centres():
    ref = DeformableEncoder.reference_points([(2, 4)], torch.device("cpu"))
    assert ref.shape == (8, 1, 2)
    torch.testing.assert_close(ref[0, 0], torch.tensor([0.125, 0.25]))
    torch.testing.assert_close(ref[-1, 0], torch.tensor([0.875, 0.75]))


def make_decoder(refine=True, layers=3, dim=16):
    return DeformableDecoder([DeformableDecoderLayer(dim, 32, 0.0, len(SHAPES), 4, 2)
                              for _ in range(layers)], dim, box_refine=refine)


def test_encoder_and_decoder_shapes():
    torch.manual_seed(0)
    encoder = DeformableEncoder([DeformableEncoderLayer(16, 32, 0.0, 3, 4, 2) for _ in range(2)])
    memory = encoder(torch.randn(2, S, 16), torch.randn(1, S, 16), SHAPES)
    assert memory.shape == (2, S, 16)
    decoder = make_decoder()
    hs, scores, boxes = decoder(torch.randn(2, 5, 16), torch.randn(2, 5, 16),
                                torch.rand(2, 5, 2), memory, SHAPES)
    assert hs.shape == (3, 2, 5, 16) and scores.shape == (3, 2, 5) and boxes.shape == (3, 2, 5, 4)
    assert ((boxes > 0) & (boxes < 1)).all()


def test_untrained_decoder_starts_at_its_reference_and_a_low_score():
    torch.manual_seed(0)
    decoder = make_decoder()
    ref = torch.rand(1, 4, 2) * 0.8 + 0.1
    _, scores, boxes = decoder(torch.randn(1, 4, 16), torch.randn(1, 4, 16), ref,
                               torch.randn(1, S, 16), SHAPES)
    # zero-initialised box deltas: first box centred on the reference, size sigmoid(-2)
    torch.testing.assert_close(boxes[0, ..., :2], ref)
    torch.testing.assert_close(boxes[0, ..., 2:], torch.full((1, 4, 2), torch.sigmoid(torch.tensor(-2.0)).item()))
    assert scores.sigmoid().mean() < 0.05   # the class heads start at the 0.01 prior


def test_box_refinement_composes_deltas_across_layers():
    torch.manual_seed(0)
    decoder = make_decoder(refine=True, layers=2)
    with torch.no_grad():
        for head in decoder.box_heads:
            head.layers[-1].bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0]))
    ref = torch.full((1, 1, 2), 0.5)
    _, _, boxes = decoder(torch.randn(1, 1, 16), torch.randn(1, 1, 16), ref,
                          torch.randn(1, S, 16), SHAPES)
    # layer 2 starts from layer 1's box: the x shifts add up in logit space
    assert boxes[1, 0, 0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=1e-5)
    assert boxes[0, 0, 0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(0.5)).item(), abs=1e-5)
    shared = make_decoder(refine=False)
    assert len(shared.box_heads) == 1 and len(shared.class_heads) == 1


def grouped_conv_reference(head, queries, features, centres):
    """ReferFormer's formulation: one grouped 1x1 conv per layer over the stacked
    per-query inputs (features + relative coordinates)."""
    n, q = queries.shape[:2]
    _, m, h, w = features.shape
    params = head.controller(queries)
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    rel = centres[..., None, None] - torch.stack([gx, gy])[None, None]     # (N, Q, 2, h, w)
    x = torch.cat([features[:, None].expand(-1, q, -1, -1, -1), rel], 2).reshape(1, -1, h, w)
    layers = head.split_params(params)
    for i, (weight, bias) in enumerate(layers):
        x = F.conv2d(x, weight.reshape(-1, weight.shape[-1], 1, 1), bias.reshape(-1), groups=n * q)
        if i < len(layers) - 1:
            x = F.relu(x)
    return x.view(n, q, h, w)


def test_dynamic_mask_head_equals_grouped_convolutions():
    torch.manual_seed(0)
    head = DynamicMaskHead(dim=16, mask_dim=6, num_layers=3, channels=5)
    queries, features, centres = torch.randn(2, 3, 16), torch.randn(2, 6, 7, 9), torch.rand(2, 3, 2)
    out = head(queries, features, centres)
    assert out.shape == (2, 3, 7, 9)
    torch.testing.assert_close(out, grouped_conv_reference(head, queries, features, centres),
                               atol=1e-4, rtol=1e-4)
    assert head.num_params == (8 * 5 + 5) + (5 * 5 + 5) + (5 + 1)


def test_relative_coordinates_make_masks_follow_the_centre():
    torch.manual_seed(0)
    head = DynamicMaskHead(dim=8, mask_dim=4, num_layers=1, channels=1)
    with torch.no_grad():  # a head that only reads the coordinates: -(|dx| + |dy|)-ish
        for layer in head.controller.layers:
            layer.weight.zero_()
            layer.bias.zero_()
    queries = torch.zeros(1, 2, 8)
    features = torch.zeros(1, 4, 8, 8)
    # with weights on the coordinate channels only, the logit is linear in (centre - pixel)
    with torch.no_grad():
        head.controller.layers[-1].bias.copy_(torch.tensor([0, 0, 0, 0, 1.0, 0.0, 0.0]))
    centres = torch.tensor([[[0.2, 0.5], [0.8, 0.5]]])
    out = head(queries, features, centres)
    # logit = centre_x - pixel_x: zero crossing at the centre column
    row = out[0, :, 4]
    assert (row[0, :1] > 0).all() and (row[0, 2:] < 0).all()
    assert (row[1, :6] > 0).all() and (row[1, 7:] < 0).all()


def test_mask_feature_decoder_output_and_text_gate():
    torch.manual_seed(0)
    decoder = MaskFeatureDecoder([16, 16, 16], dim=16, mask_dim=4)
    maps = [torch.randn(2, 16, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 16, 4, 4)]
    sentence = torch.randn(2, 16)
    out = decoder(maps, sentence)
    assert out.shape == (2, 4, 16, 16)
    assert not torch.allclose(decoder(maps, sentence + 1), out)


def test_mlp_depth():
    mlp = MLP(4, 8, 2, 3)
    assert len(mlp.layers) == 3 and mlp(torch.randn(5, 4)).shape == (5, 2)
