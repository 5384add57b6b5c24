import numpy as np
import pytest
import torch

from rvos.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, ClipTransform, denormalize,
                                  normalize_frames, preprocess_frames, resize_frames,
                                  resize_masks, swap_left_right)


@pytest.mark.parametrize("text, expected", [
    ("the dog on the left", "the dog on the right"),
    ("the man to the right of the car", "the man to the left of the car"),
    ("Left duck", "Right duck"),
    ("the LEFT one", "the RIGHT one"),
    ("the leftmost cow and the rightmost horse", "the rightmost cow and the leftmost horse"),
    ("the left-most person", "the right-most person"),
    ("a bird flying leftward", "a bird flying rightward"),
    ("left, right.", "right, left."),
    ("a bright lamp", "a bright lamp"),
    ("a lefty pitcher", "a lefty pitcher"),
    ("a copyright sign on the left", "a copyright sign on the right"),
    ("", ""),
])
def test_swap_left_right(text, expected):
    assert swap_left_right(text) == expected
    assert swap_left_right(swap_left_right(text)) == text


def test_normalize_denormalize_roundtrip():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    x = normalize_frames(frames)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32
    # A pure mean-coloured pixel normalises to zero.
    mean_pixel = np.array(IMAGENET_MEAN) * 255
    assert torch.allclose(normalize_frames(np.broadcast_to(mean_pixel, (1, 1, 1, 3)).astype(np.float32)),
                          torch.zeros(1, 3, 1, 1), atol=1e-6)
    back = denormalize(x).permute(0, 2, 3, 1).numpy() * 255
    assert np.abs(back - frames).max() < 1e-3
    assert len(IMAGENET_STD) == 3


def _clip(t=3, h=32, w=48, box=(8, 20, 4, 16)):
    """Frames whose red channel marks the object mask exactly; other channels random."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 100, size=(t, h, w, 3), dtype=np.uint8)
    masks = np.zeros((t, h, w), dtype=bool)
    y0, y1, x0, x1 = box
    for i in range(t):
        masks[i, y0:y1, x0 + 2 * i:x1 + 2 * i] = True
    frames[..., 0] = np.where(masks, 255, 0)
    return frames, masks


def test_eval_transform_resizes_and_keeps_alignment():
    frames, masks = _clip()
    tf = ClipTransform((16, 24), train=False, hflip_prob=1.0, scale_jitter=0.5, color_jitter=0.5)
    x, m, text, flipped = tf(frames, masks, "the left cat", rng=None)
    assert x.shape == (3, 3, 16, 24) and x.dtype == torch.float32
    assert m.shape == (3, 16, 24) and m.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    # No augmentation at evaluation, whatever the probabilities say.
    assert text == "the left cat" and flipped is False
    red = denormalize(x)[:, 0] > 0.5
    assert (red == (m > 0.5)).float().mean() > 0.95


def test_flip_flips_frames_masks_and_text():
    frames, masks = _clip()
    plain = ClipTransform((16, 24), train=False)
    flip = ClipTransform((16, 24), train=True, hflip_prob=1.0)
    x0, m0, _, _ = plain(frames, masks, "x")
    x1, m1, text, flipped = flip(frames, masks, "the cat to the left of the dog",
                                 rng=np.random.default_rng(0))
    assert flipped is True
    assert text == "the cat to the right of the dog"
    assert torch.allclose(x1, x0.flip(-1)) and torch.equal(m1, m0.flip(-1))


def test_augmentation_is_the_same_for_every_frame():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    mask = np.zeros((32, 48), dtype=bool)
    mask[10:20, 5:30] = True
    frames = np.stack([frame] * 4)
    masks = np.stack([mask] * 4)
    tf = ClipTransform((24, 24), train=True, hflip_prob=0.5, scale_jitter=0.5, color_jitter=0.4)
    outputs = set()
    for seed in range(6):
        x, m, _, _ = tf(frames, masks, "a", rng=np.random.default_rng(seed))
        for t in range(1, 4):  # identical input frames stay identical: one crop/flip/jitter
            assert torch.equal(x[t], x[0]) and torch.equal(m[t], m[0])
        outputs.add(round(float(x.sum()), 3))
    assert len(outputs) > 1  # but the parameters do change from clip to clip


def test_scale_jitter_keeps_masks_aligned_and_objects_in_view():
    frames, masks = _clip(t=3, box=(2, 6, 1, 5))  # a small object near the top-left corner
    tf = ClipTransform((32, 48), train=True, scale_jitter=0.6)
    for seed in range(20):
        x, m, _, _ = tf(frames, masks, "a", rng=np.random.default_rng(seed))
        assert m.sum() > 0, f"seed {seed}: the crop removed the referred object"
        red = denormalize(x)[:, 0] > 0.5
        agree = (red == (m > 0.5)).float().mean()
        assert agree > 0.97, f"seed {seed}: mask and frame disagree on {1 - agree:.1%} of pixels"


def test_same_rng_same_output():
    frames, masks = _clip()
    tf = ClipTransform((16, 16), train=True, hflip_prob=0.5, scale_jitter=0.3, color_jitter=0.3)
    a = tf(frames, masks, "left", rng=np.random.default_rng(7))
    b = tf(frames, masks, "left", rng=np.random.default_rng(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]


def test_bad_arguments():
    with pytest.raises(ValueError):
        ClipTransform((0, 10))
    with pytest.raises(ValueError):
        ClipTransform((8, 8), hflip_prob=1.5)
    tf = ClipTransform((8, 8), train=True, hflip_prob=0.5)
    frames, masks = _clip()
    with pytest.raises(ValueError, match="rng"):
        tf(frames, masks, "a")
    with pytest.raises(ValueError, match="match"):
        tf(frames, masks[:, :10], "a", rng=np.random.default_rng(0))


@pytest.mark.parametrize("source, size", [((72, 128), (36, 64)), ((48, 40), (64, 64)),
                                          ((30, 50), (30, 50))])
def test_training_transform_and_inference_preprocessing_give_the_same_tensor(source, size):
    """One preprocessing path: without augmentation, a frame becomes bit for bit the same
    input for training (ClipTransform) as for inference and the feature cache."""
    from rvos.inference import Predictor

    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, size=(3, *source, 3), dtype=np.uint8)
    masks = np.zeros(frames.shape[:3], dtype=bool)
    for train in (False, True):    # training without augmentation draws nothing
        x, _, _, _ = ClipTransform(size, train=train)(frames, masks, "the cat")
        assert torch.equal(x, preprocess_frames(frames, size))
    predictor = Predictor(torch.nn.Identity(), size, window=3)
    assert torch.equal(predictor._prepare(list(frames))[0], x)


def test_resize_is_bilinear_antialiased_and_masks_nearest_at_pixel_centres():
    from PIL import Image

    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, size=(2, 60, 90, 3), dtype=np.uint8)
    x = resize_frames(frames, (20, 30))
    assert x.dtype == torch.uint8 and x.shape == (2, 3, 20, 30)
    want = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(),
                                           size=(20, 30), mode="bilinear", antialias=True)
    assert (x.float() - want).abs().max() <= 1.0          # the float result, within a grey level
    labels = rng.integers(0, 4, size=(2, 61, 89), dtype=np.uint8)
    box = (5, 7, 40, 50)
    pil = np.stack([np.asarray(Image.fromarray(m).resize((30, 20), Image.NEAREST,
                                                          box=(7, 5, 57, 45))) for m in labels])
    np.testing.assert_array_equal(resize_masks(labels, (20, 30), box).numpy(), pil)
