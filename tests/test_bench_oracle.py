"""The oracle-mask grounding benchmark runs end to end and reports accuracies per type."""

import importlib.util
import json
import sys
from pathlib import Path

from rvos.data.synthetic import SynthConfig, generate_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_oracle_grounding.py"


def test_oracle_grounding_benchmark_writes_a_curve_per_expression_type(tmp_path):
    generate_benchmark(tmp_path / "data", SynthConfig(train_videos=4, valid_videos=0, test_videos=3,
                                                      compositional_videos=0, num_frames=5, height=64,
                                                      width=64, min_objects=3, seed=1), progress=False)
    spec = importlib.util.spec_from_file_location("bench_oracle_grounding", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench          # its dataclass looks its module up
    spec.loader.exec_module(bench)
    out = tmp_path / "oracle.json"
    result = bench.main(["--data", str(tmp_path / "data"), "--weights", "none", "--steps", "3",
                         "--batch", "4", "--frames-per-video", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [point["step"] for point in result["curve"]] == [3]
    accuracy = result["curve"][0]["test_accuracy"]
    assert set(accuracy) <= {"attribute", "spatial", "relational"} and accuracy
    assert all(0.0 <= v <= 1.0 for v in accuracy.values())
    assert 0.0 < result["chance"] < 1.0
