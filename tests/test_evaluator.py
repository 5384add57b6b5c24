import math

import numpy as np
import pytest

from rvos.data.synthetic import SynthConfig, generate_benchmark
from rvos.data.ytvos import RefYTVOSLayout
from rvos.engine.evaluator import evaluate_layout, format_table, object_hit
from rvos.inference import FramePrediction


def test_object_hit_asks_whether_the_referred_object_got_most_of_the_mask():
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, :4, :4] = 1          # 32 pixels
    labels[:, 4:, 4:] = 2          # 32 pixels
    labels[:, :2, 6:] = 3          # 8 pixels
    on_1 = labels == 1
    assert object_hit(labels, on_1, [1]) == 1.0
    assert object_hit(labels, on_1, [2]) == 0.0
    every_object = labels > 0      # ties between objects 1 and 2 are not a hit
    assert object_hit(labels, every_object, [1]) == 0.0
    assert object_hit(labels, every_object, [3]) == 0.0
    assert object_hit(labels, np.zeros_like(on_1), [1]) == 0.0
    assert object_hit(labels, labels > 0, [1, 2]) == 1.0   # several referred ids count together
    assert math.isnan(object_hit(np.where(labels == 1, 1, 0), on_1, [1]))


class GroundTruthPredictor:
    """Stands in for a model: segments, for each sentence, the object it names in
    ``chosen`` (video -> {sentence: object id}), reading the layout's label maps."""

    def __init__(self, layout: RefYTVOSLayout, chosen: dict[str, dict[str, int]]):
        self.layout, self.chosen = layout, chosen
        self.videos = iter(dict.fromkeys(v for v, _ in layout.samples()))

    def predict(self, frames, texts):
        video = next(self.videos)
        for name, frame in frames:
            labels = self.layout.load_label_maps(video, [name])[0]
            probs = np.stack([(labels == self.chosen[video][t]).astype(np.float32) for t in texts])
            yield FramePrediction(name=name, frame=frame, probs=probs)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_benchmark(root, SynthConfig(train_videos=0, valid_videos=0, test_videos=3,
                                         compositional_videos=0, num_frames=5, height=48,
                                         width=48, min_objects=3, seed=5), progress=False)
    return RefYTVOSLayout(root, "test")


def test_the_referred_object_scores_one_and_another_object_scores_zero(layout):
    referred = {v: {e.text: e.obj_ids[0] for e in r.expressions.values()}
                for v, r in layout.videos.items()}
    right = evaluate_layout(GroundTruthPredictor(layout, referred), layout, progress=False).summary()
    assert right["overall"]["JF"] == pytest.approx(1.0)
    assert right["overall"]["object_accuracy"] == 1.0

    def another_object(video, obj_id):
        ids = np.unique(layout.load_label_maps(video, layout.videos[video].frames))
        return int(next(o for o in ids if o not in (0, obj_id)))

    wrong = {v: {t: another_object(v, o) for t, o in m.items()} for v, m in referred.items()}
    result = evaluate_layout(GroundTruthPredictor(layout, wrong), layout, progress=False)
    summary = result.summary()
    assert summary["overall"]["object_accuracy"] == 0.0
    assert summary["overall"]["J"] < 0.5
    assert all(row.object_hit == 0.0 for row in result.rows)
    assert "obj 0.00" in format_table([summary])
