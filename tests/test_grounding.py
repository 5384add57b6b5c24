"""The track-grounding model's parts: segmenter targets and grouping, track linking through
occlusion / entering / leaving, the scorer fitting a tiny set, the model's output contract."""

import json

import numpy as np
import pytest
import torch

from rvos.data.synthetic import SynthConfig, generate_benchmark
from rvos.data.ytvos import RefYTVOSLayout
from rvos.models.grounding.model import pad_tracks
from rvos.models.grounding.objective import grounding_loss, segmenter_loss, segmenter_targets
from rvos.models.grounding.scorer import TrackScorer, pair_geometry
from rvos.models.grounding.segmenter import SegmenterOutput, group_instances
from rvos.models.grounding.tracks import (TrackSet, appearance_dim, geometry, link_tracks,
                                          silhouettes, track_set)


def _square_labels() -> torch.Tensor:
    labels = torch.zeros(1, 32, 32, dtype=torch.uint8)
    labels[0, 4:12, 4:12] = 1          # centroid (7.5, 7.5)
    labels[0, 18:30, 16:28] = 2        # centroid (23.5, 21.5)
    return labels


def _perfect_output(labels: torch.Tensor) -> SegmenterOutput:
    t = segmenter_targets(labels)
    return SegmenterOutput((t.fg[:, None] * 2 - 1) * 10, torch.logit(t.heatmap.clamp(1e-4, 1 - 1e-4)),
                           t.offsets)


def test_segmenter_targets_put_centres_and_offsets_on_each_object():
    t = segmenter_targets(_square_labels())
    assert t.fg.sum() == 64 + 144
    peaks = torch.nonzero(t.heatmap[0, 0] == 1).tolist()
    assert sorted(peaks) == [[1, 1], [5, 5]]           # cells holding (7.5, 7.5), (23.5, 21.5)
    # a cell centre plus its offset lands on its object's centroid
    ys, xs = torch.nonzero(t.on_object[0], as_tuple=True)
    landing_y = ys * 4 + 1.5 + t.offsets[0, 0, ys, xs]
    landing_x = xs * 4 + 1.5 + t.offsets[0, 1, ys, xs]
    targets = {(7.5, 7.5), (23.5, 21.5)}
    assert {(round(float(a), 3), round(float(b), 3)) for a, b in zip(landing_y, landing_x)} == targets


def test_perfect_outputs_have_zero_offset_loss_and_group_into_the_objects():
    labels = _square_labels()
    out = _perfect_output(labels)
    losses = segmenter_loss(out, segmenter_targets(labels))
    assert float(losses["offset"]) == 0 and float(losses["fg_dice"]) < 1e-3
    assign, scores = group_instances(out, threshold=0.5, min_area=4)
    assert len(scores[0]) == 2
    for obj in (1, 2):
        ids = assign[0][labels[0] == obj].unique()
        assert len(ids) == 1 and ids.item() >= 0
    assert (assign[0][labels[0] == 0] == -1).all()


def test_grouping_drops_tiny_objects_and_empty_frames():
    labels = torch.zeros(2, 32, 32, dtype=torch.uint8)
    labels[0, 10:20, 10:20] = 1
    out = _perfect_output(labels)
    assign, scores = group_instances(out, threshold=0.5, min_area=200)
    assert (assign == -1).all() and len(scores[0]) == 0 and len(scores[1]) == 0


# ----------------------------------------------------------------------------- linking


def _link(centres, appearances=None, areas=None):
    """centres: per frame a list of (y, x) -> tracks as lists of (frame, index)."""
    c = [np.asarray(f, dtype=float).reshape(-1, 2) for f in centres]
    a = [np.full(len(f), 100.0) for f in c] if areas is None else areas
    f = ([np.ones((len(x), 4)) for x in c] if appearances is None else
         [np.asarray(x, dtype=float).reshape(len(cc), -1) for x, cc in zip(appearances, c)])
    return [sorted(tr.items()) for tr in link_tracks(c, a, f)]


def test_linking_keeps_an_object_through_an_occlusion():
    # object A moves right 3 px/frame and is hidden in frames 4-6; B stands still
    centres = []
    for t in range(10):
        frame = [(60.0, 60.0)]
        if not 4 <= t <= 6:
            frame.insert(0, (20.0, 10.0 + 3 * t))
        centres.append(frame)
    tracks = _link(centres)
    assert len(tracks) == 2
    a = next(tr for tr in tracks if tr[0] == (0, 0))
    assert [t for t, _ in a] == [0, 1, 2, 3, 7, 8, 9]


def test_linking_starts_a_track_for_an_entering_object_and_ends_a_leaving_one():
    centres = []
    for t in range(8):
        frame = []
        if t <= 3:
            frame.append((30.0, 100.0 + 6 * t))     # leaves after frame 3
        if t >= 4:
            frame.append((90.0, -5.0 + 6 * (t - 4)))  # enters at frame 4 from the left
        centres.append(frame)
    tracks = _link(centres)
    assert [[t for t, _ in tr] for tr in tracks] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_linking_keeps_identical_look_alikes_apart_when_they_cross():
    # same appearance, opposite horizontal motion, 12 px apart vertically: velocities decide
    centres = [[(50.0, 20.0 + 5 * t), (62.0, 80.0 - 5 * t)] for t in range(12)]
    tracks = _link(centres)
    assert len(tracks) == 2
    for tr in tracks:
        ys = {centres[t][k][0] for t, k in tr}
        assert len(ys) == 1                          # each track stays on one object


def test_linking_on_synthetic_videos_gives_one_track_per_object(tmp_path):
    root = tmp_path / "data"
    generate_benchmark(root, SynthConfig(train_videos=12, valid_videos=1, test_videos=1,
                                         compositional_videos=1, num_frames=12, seed=11),
                       progress=False)
    layout = RefYTVOSLayout(root, "train")
    scenes = json.loads((root / "train" / "scenes.json").read_text())["videos"]
    events = {"occluded": 0, "enters": 0, "leaves": 0}
    for video, record in layout.videos.items():
        frames, labels = layout.load_clip(video, record.frames)
        ids = [int(i) for i in np.unique(labels) if i]
        per_frame = []
        for t in range(len(labels)):
            present = [i for i in ids if (labels[t] == i).sum() >= 6]
            per_frame.append(present)
        centres, areas, apps = [], [], []
        for t, present in enumerate(per_frame):
            masks = [labels[t] == i for i in present]
            centres.append(np.array([np.argwhere(m).mean(0) for m in masks]).reshape(-1, 2))
            areas.append(np.array([m.sum() for m in masks], dtype=float))
            apps.append(np.array([frames[t][m].mean(0) for m in masks]).reshape(-1, 3))
        tracks = link_tracks(centres, areas, apps)
        for i in ids:
            seen = [t for t, p in enumerate(per_frame) if i in p]
            if not seen:
                continue
            holders = [tr for tr in tracks if any(per_frame[t][k] == i for t, k in tr.items())]
            assert len(holders) == 1, f"{video}: object {i} split over {len(holders)} tracks"
            assert all(per_frame[t][k] == i for t, k in holders[0].items()), f"{video}: mixed track"
            obj = scenes[video]["objects"][str(i)]
            hidden = np.array(obj["visible_area"]) < 0.6 * np.array(obj["in_frame_area"])
            events["occluded"] += int(hidden.any())
            events["enters"] += int(seen[0] > 0)
            events["leaves"] += int(seen[-1] < len(labels) - 1)
    # the scenes really exercised each case
    assert all(n > 0 for n in events.values()), events


# ----------------------------------------------------------------------------- scorer


def _random_tracks(rng: torch.Generator, q: int, t: int = 6, d: int = 16) -> TrackSet:
    masks = torch.zeros(q, t, 32, 32, dtype=torch.bool)
    for k in range(q):
        y, x = torch.randint(0, 24, (2,), generator=rng).tolist()
        masks[k, :, y:y + 8, x:x + 8] = True
    maps = [torch.randn(t, d, 8, 8, generator=rng)]
    return track_set(maps, torch.randn(t, 3, 32, 32, generator=rng), masks)


def test_geometry_and_pair_geometry_describe_positions():
    masks = torch.zeros(2, 3, 20, 40, dtype=torch.bool)
    masks[0, :, 0:4, 0:4] = True
    masks[1, :2, 10:20, 30:40] = True               # hidden in the last frame
    g = geometry(masks)
    assert torch.allclose(g[0, 0, :2], torch.tensor([2 * 2 / 40 - 1, 2 * 2 / 20 - 1]))
    assert g[1, 2].abs().sum() == 0 and g[1, 0, -1] == 1
    pair = pair_geometry(g[None], masks.flatten(2).any(-1)[None])
    assert pair[0, 0, 1, 0] > 0 and pair[0, 1, 0, 0] < 0       # j right of i: dx > 0
    assert torch.isclose(pair[0, 0, 1, 6], torch.tensor(2 / 3))  # shares 2 of 3 frames


def test_scorer_fits_a_tiny_set():
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    sets = [_random_tracks(rng, q) for q in (2, 3, 4, 3)]
    referred_index = [1, 2, 0, 2]
    words = torch.randn(4, 5, 24, generator=rng)
    padding = torch.tensor([[False] * 3 + [True] * 2, [False] * 4 + [True], [False] * 4 + [True],
                            [False] * 3 + [True] * 2])
    scorer = TrackScorer(appearance_dim=appearance_dim([16]), text_dim=24, dim=32, heads=4)
    batch = pad_tracks(sets)
    referred = torch.zeros_like(batch.valid)
    referred[torch.arange(4), referred_index] = True
    opt = torch.optim.Adam(scorer.parameters(), lr=3e-3)
    for _ in range(150):
        loss = grounding_loss(scorer(batch, words, padding), referred)
        opt.zero_grad()
        loss.backward()
        opt.step()
    logits = scorer(batch, words, padding)
    assert logits.argmax(-1).tolist() == referred_index
    assert float(loss.detach()) < 0.05
    assert torch.isinf(logits[0, 2:]).all()         # padded tracks are never chosen


def test_grounding_loss_takes_the_union_of_several_referred_tracks():
    logits = torch.tensor([[0.0, 0.0, 0.0, float("-inf")]])
    one = grounding_loss(logits, torch.tensor([[True, False, False, False]]))
    two = grounding_loss(logits, torch.tensor([[True, True, False, False]]))
    assert torch.isclose(one, torch.log(torch.tensor(3.0)))
    assert torch.isclose(two, torch.log(torch.tensor(1.5)))
    assert grounding_loss(logits, torch.zeros(1, 4, dtype=torch.bool)) == 0


def test_pad_tracks_pads_tracks_and_frames():
    rng = torch.Generator().manual_seed(1)
    a, b = _random_tracks(rng, 2, t=4), _random_tracks(rng, 3, t=6)
    batch = pad_tracks([a, b])
    assert batch.appearance.shape[:2] == (2, 3) and batch.geometry.shape[:3] == (2, 3, 6)
    assert batch.valid.tolist() == [[True, True, False], [True, True, True]]
    assert not batch.visible[0, :, 4:].any()
    assert len(pad_tracks([TrackSet(a.appearance[:0], a.geometry[:0], a.visible[:0],
                                    a.area[:0])]).valid[0]) == 1


@pytest.fixture(scope="module")
def tiny_model(text_encoder):
    from rvos.config import load_config
    from rvos.models.build import build_criterion, build_model

    cfg = load_config("grounding_synth",
                      ["model.grounding.backbone_weights=none", "model.grounding.dim=32",
                       "model.grounding.seg_dim=16", "model.grounding.refine_dim=8"])
    model = build_model(cfg)
    assert build_criterion(cfg) is None
    return model.eval()


def test_model_output_has_one_query_per_track_and_shares_the_clip(tiny_model):
    torch.manual_seed(0)
    frames = torch.randn(2, 3, 3, 32, 32)
    texts = ["the red circle", "the blue square", "the leftmost object"]
    with torch.no_grad():
        out = tiny_model(frames, texts, torch.tensor([0, 1, 0]))
    b, t, q, h, w = out.mask_logits.shape
    assert (b, t, h, w) == (3, 3, 32, 32) and out.scores.shape == (3, 3, q)
    # the score is the same in every frame: a track is chosen for the whole clip
    assert torch.equal(out.scores[:, 0], out.scores[:, 2])
    # sentences 0 and 2 share clip 0: the same tracks and masks
    assert torch.equal(out.mask_logits[0], out.mask_logits[2])


def test_silhouettes_describe_shape_not_position_or_colour():
    masks = torch.zeros(3, 1, 64, 64, dtype=torch.bool)
    masks[0, 0, 5:15, 5:15] = True                  # a square
    masks[1, 0, 40:50, 30:40] = True                # the same square elsewhere
    masks[2, 0, 20:40, 20:25] = True                # a tall bar
    s = silhouettes(masks)
    assert s.shape == (3, 1, 144)
    torch.testing.assert_close(s[0], s[1])
    assert (s[0] - s[2]).abs().max() > 0.5
    assert silhouettes(torch.zeros(1, 2, 8, 8, dtype=torch.bool)).abs().sum() == 0


def test_predicted_tracks_take_the_id_of_the_object_they_overlap():
    from rvos.engine.grounding_trainer import _match_ids

    gt = torch.zeros(2, 2, 16, 16, dtype=torch.bool)
    gt[0, :, 0:8, 0:8] = True
    gt[1, :, 8:16, 8:16] = True
    tracks = torch.zeros(3, 2, 16, 16, dtype=torch.bool)
    tracks[0, :, 8:16, 8:15] = True                 # most of object 7
    tracks[1, :, 0:8, 0:3] = True                   # a sliver of object 4: a distractor
    tracks[2, 0, 0:8, 0:8] = True                   # object 4 in one frame of two: IoU 0.5
    assert _match_ids(tracks, gt, [4, 7]) == [7, 0, 4]
    assert _match_ids(tracks[:0], gt, [4, 7]) == []
