"""Multi-scale deformable attention: the grid_sample path against a scalar, loop-based
evaluation of the formula, plus the layer's shape and behaviour."""

import math

import pytest
import torch

from rvos.models.deform_attn import (MSDeformAttn, ms_deform_attn, ms_deform_attn_direct,
                                     ms_deform_attn_gather)

SHAPES = [(6, 7), (3, 4), (2, 2)]


def scalar_reference(value, shapes, locations, weights):
    """out[n, q, m*D:(m+1)*D] = sum_l sum_p A * bilinear(V_l, loc), one sample at a time in
    plain Python arithmetic (align_corners=False convention, zeros outside the map)."""
    n_, s_, m_, d_ = value.shape
    _, lq_, _, l_, p_, _ = locations.shape
    out = torch.zeros(n_, lq_, m_ * d_, dtype=torch.float64)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)

    def pixel(n, m, level, yy, xx):
        h, w = shapes[level]
        if 0 <= yy < h and 0 <= xx < w:
            return value[n, starts[level] + yy * w + xx, m].double()
        return torch.zeros(d_, dtype=torch.float64)

    for n in range(n_):
        for q in range(lq_):
            for m in range(m_):
                acc = torch.zeros(d_, dtype=torch.float64)
                for level, (h, w) in enumerate(shapes):
                    for p in range(p_):
                        x = float(locations[n, q, m, level, p, 0]) * w - 0.5
                        y = float(locations[n, q, m, level, p, 1]) * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        fx, fy = x - x0, y - y0
                        sample = ((1 - fx) * (1 - fy) * pixel(n, m, level, y0, x0)
                                  + fx * (1 - fy) * pixel(n, m, level, y0, x0 + 1)
                                  + (1 - fx) * fy * pixel(n, m, level, y0 + 1, x0)
                                  + fx * fy * pixel(n, m, level, y0 + 1, x0 + 1))
                        acc += float(weights[n, q, m, level, p]) * sample
                out[n, q, m * d_:(m + 1) * d_] = acc
    return out


def random_inputs(seed=0, n=2, lq=5, m=2, d=3, p=3, shapes=SHAPES, spread=0.2):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=g)
    # include locations slightly outside [0, 1] to exercise the zero padding
    locations = torch.rand(n, lq, m, len(shapes), p, 2, generator=g) * (1 + 2 * spread) - spread
    weights = torch.rand(n, lq, m, len(shapes), p, generator=g)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, locations, weights


@pytest.mark.parametrize("seed", [0, 1])
def test_grid_sample_path_matches_scalar_formula(seed):
    value, loc, w = random_inputs(seed)
    expected = scalar_reference(value, SHAPES, loc, w)
    got = ms_deform_attn(value, SHAPES, loc, w)
    assert got.shape == (2, 5, 2 * 3)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_direct_path_matches_scalar_formula():
    value, loc, w = random_inputs(3)
    expected = scalar_reference(value, SHAPES, loc, w)
    torch.testing.assert_close(ms_deform_attn_direct(value, SHAPES, loc, w).double(), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_gather_path_matches_scalar_formula(seed):
    value, loc, w = random_inputs(seed, spread=0.6)   # many corners outside the maps
    expected = scalar_reference(value, SHAPES, loc, w)
    torch.testing.assert_close(ms_deform_attn_gather(value, SHAPES, loc, w).double(), expected,
                               atol=1e-5, rtol=1e-5)


def test_paths_have_the_same_gradients():
    value, loc, w = random_inputs(4)
    grads = []
    for fn in (ms_deform_attn, ms_deform_attn_direct, ms_deform_attn_gather):
        v, l_, a = (t.clone().requires_grad_(True) for t in (value, loc, w))
        (fn(v, SHAPES, l_, a) ** 2).sum().backward()
        grads.append((v.grad, l_.grad, a.grad))
    for other in grads[1:]:
        for g1, g2 in zip(grads[0], other):
            torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-4)


def test_sampling_at_a_pixel_centre_returns_that_pixel():
    h, w = 4, 5
    value = torch.arange(h * w, dtype=torch.float32).view(1, h * w, 1, 1)
    yy, xx = 2, 3
    loc = torch.tensor([(xx + 0.5) / w, (yy + 0.5) / h]).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn(value, [(h, w)], loc, torch.ones(1, 1, 1, 1, 1))
    assert out.item() == pytest.approx(yy * w + xx)


def test_far_outside_samples_give_zero():
    value, loc, w = random_inputs(5)
    loc = loc + 5.0
    assert ms_deform_attn(value, SHAPES, loc, w).abs().max() == 0
    assert ms_deform_attn_gather(value, SHAPES, loc, w).abs().max() == 0


def test_shape_errors_are_clear():
    value, loc, w = random_inputs(6)
    with pytest.raises(ValueError, match="spatial shapes"):
        ms_deform_attn(value, SHAPES[:2], loc, w)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, SHAPES, loc, w[..., :1])


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_layer_shapes_and_direct_equivalence(ref_dim):
    torch.manual_seed(0)
    layer = MSDeformAttn(dim=16, num_levels=3, num_heads=4, num_points=2)
    with torch.no_grad():  # non-trivial offsets and weights
        layer.sampling_offsets.weight.normal_(0, 0.1)
        layer.attention_weights.weight.normal_(0, 0.1)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(2, s, 16)
    query = torch.randn(2, 7, 16)
    ref = torch.rand(2, 7, 3, ref_dim) * 0.8 + 0.1
    out = layer(query, ref, value, SHAPES)
    assert out.shape == (2, 7, 16)
    layer.use_direct = True
    torch.testing.assert_close(layer(query, ref, value, SHAPES), out, atol=1e-5, rtol=1e-5)
    layer.use_direct, layer.use_gather = False, True
    torch.testing.assert_close(layer(query, ref, value, SHAPES), out, atol=1e-5, rtol=1e-5)


def test_layer_locations_follow_the_reference_box():
    layer = MSDeformAttn(dim=8, num_levels=1, num_heads=2, num_points=2)
    query = torch.randn(1, 1, 8)
    small = torch.tensor([[[[0.5, 0.5, 0.1, 0.1]]]])
    large = torch.tensor([[[[0.5, 0.5, 0.4, 0.4]]]])
    loc_small, _ = layer.sampling(query, small, [(8, 8)])
    loc_large, _ = layer.sampling(query, large, [(8, 8)])
    # offsets scale with the box size around the same centre
    torch.testing.assert_close((loc_large - 0.5), 4 * (loc_small - 0.5))


def test_padding_mask_hides_tokens():
    torch.manual_seed(1)
    layer = MSDeformAttn(dim=8, num_levels=1, num_heads=2, num_points=4)
    value = torch.randn(1, 16, 8)
    query = torch.randn(1, 3, 8)
    ref = torch.rand(1, 3, 1, 2)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 8:] = True  # bottom half of the 4x4 map is padding
    changed = value.clone()
    changed[0, 8:] = 100.0
    a = layer(query, ref, value, [(4, 4)], mask)
    b = layer(query, ref, changed, [(4, 4)], mask)
    torch.testing.assert_close(a, b)
