"""The quality benchmark's pure parts: aggregation over training seeds, the mean ± std table,
the grouped bar chart, the bench command line, and the seed override reaching the config.
Nothing here trains a model."""

import json
import math
from pathlib import Path

import pytest

from rvos.bench import aggregate_runs, format_quality_aggregate, plot_quality
from rvos.cli import build_parser
from rvos.demo import BASELINE_CONFIG, DEMO_CONFIG, REPO_ROOT, demo_config

TYPES = ("attribute", "spatial", "relational", "motion", "temporal")


def _entry(jf, obj=math.nan):
    return {"J": jf, "F": jf, "JF": jf, "count": 4, "object_accuracy": obj}


def _summary(split, jf_by_type, obj_by_type=None, overall=None):
    obj_by_type = obj_by_type or {}
    by_type = {t: _entry(v, obj_by_type.get(t, math.nan)) for t, v in jf_by_type.items()}
    overall = overall if overall is not None else sum(jf_by_type.values()) / len(jf_by_type)
    return {"split": split, "overall": _entry(overall, obj_by_type.get("overall", math.nan)),
            "by_type": by_type}


def _run(config, seed, test, comp):
    return {"config": config, "seed": seed, "results": {"test": test, "test_compositional": comp}}


@pytest.fixture
def runs():
    full = dict.fromkeys(TYPES, 0.5)
    return [
        _run("baseline_synth", 0,
             _summary("test", {**full, "attribute": 0.25}, {"attribute": 0.5, "overall": 0.75}),
             _summary("test_compositional", full, {"attribute": math.nan})),
        _run("baseline_synth", 1,
             _summary("test", {**full, "attribute": 0.75}, {"attribute": 1.0, "overall": math.nan}),
             _summary("test_compositional", full)),
        _run("query_synth", 0, _summary("test", {"attribute": 1.0, "spatial": 0.0}),
             _summary("test_compositional", {"attribute": 0.125})),
        _run("query_synth", 1, _summary("test", {"attribute": 0.5, "spatial": 0.0}),
             _summary("test_compositional", {"attribute": 0.375})),
        _run("query_synth", 2, _summary("test", {"attribute": 0.0, "spatial": 0.0}),
             _summary("test_compositional", {"attribute": 0.625})),
    ]


def test_aggregate_has_exact_mean_population_std_min_max(runs):
    agg = aggregate_runs(runs)
    assert list(agg) == ["baseline_synth", "query_synth"]
    assert list(agg["baseline_synth"]) == ["test", "test_compositional"]
    assert list(agg["baseline_synth"]["test"]) == [*TYPES, "overall"]
    jf = agg["baseline_synth"]["test"]["attribute"]["JF"]
    assert jf == {"mean": 0.5, "std": 0.25, "min": 0.25, "max": 0.75, "n": 2,
                  "values": [0.25, 0.75], "seeds": [0, 1]}
    spatial = agg["baseline_synth"]["test"]["spatial"]["JF"]
    assert (spatial["mean"], spatial["std"], spatial["min"], spatial["max"]) == (0.5, 0.0, 0.5, 0.5)
    q = agg["query_synth"]["test"]["attribute"]["JF"]        # values 1.0, 0.5, 0.0
    assert q["mean"] == pytest.approx(0.5)
    assert q["std"] == pytest.approx(math.sqrt(1 / 6))      # population std, not the sample one
    assert (q["min"], q["max"], q["seeds"]) == (0.0, 1.0, [0, 1, 2])
    comp = agg["query_synth"]["test_compositional"]["attribute"]["JF"]
    assert comp["mean"] == pytest.approx(0.375) and comp["std"] == pytest.approx(math.sqrt(1 / 24))
    overall = agg["query_synth"]["test"]["overall"]["JF"]    # overall from the summary itself
    assert overall["values"] == [0.5, 0.25, 0.0]
    assert list(agg["query_synth"]["test"]) == ["attribute", "spatial", "overall"]


def test_aggregate_leaves_out_nan_object_accuracy(runs):
    agg = aggregate_runs(runs)
    obj = agg["baseline_synth"]["test"]["attribute"]["object_accuracy"]
    assert (obj["mean"], obj["std"], obj["min"], obj["max"], obj["n"]) == (0.75, 0.25, 0.5, 1.0, 2)
    overall = agg["baseline_synth"]["test"]["overall"]["object_accuracy"]   # one seed NaN
    assert (overall["mean"], overall["std"], overall["n"]) == (0.75, 0.0, 1)
    assert overall["values"][0] == 0.75 and math.isnan(overall["values"][1])
    none = agg["baseline_synth"]["test_compositional"]["attribute"]["object_accuracy"]
    assert none["n"] == 0 and all(math.isnan(none[k]) for k in ("mean", "std", "min", "max"))
    json.loads(json.dumps(agg))             # NaN survives Python's JSON round trip


def test_aggregate_counts_a_missing_type_as_missing_for_that_run_only():
    agg = aggregate_runs([
        _run("a", 0, _summary("test", {"attribute": 0.2, "motion": 0.4}), _summary("test_compositional", {"attribute": 0.1})),
        _run("a", 1, _summary("test", {"attribute": 0.6}), _summary("test_compositional", {"attribute": 0.3})),
    ])
    motion = agg["a"]["test"]["motion"]["JF"]
    assert (motion["values"], motion["seeds"], motion["n"]) == ([0.4], [0], 1)
    assert agg["a"]["test"]["attribute"]["JF"]["mean"] == pytest.approx(0.4)


def test_table_names_every_config_split_and_type(runs):
    text = format_quality_aggregate(aggregate_runs(runs))
    for name in ("baseline_synth/test", "baseline_synth/comp", "query_synth/test", "query_synth/comp"):
        assert name in text
    for t in (*TYPES, "overall"):
        assert any(line.split()[:1] == [t] for line in text.splitlines())
    assert "J&F" in text and "object accuracy" in text and "seeds 0, 1, 2" in text
    jf_block = text.split("object accuracy")[0]
    attribute = next(line for line in jf_block.splitlines() if line.startswith("attribute"))
    assert "0.500 ± 0.250" in attribute                      # baseline test: 0.25, 0.75
    motion = next(line for line in jf_block.splitlines() if line.startswith("motion"))
    assert motion.split()[-1] == "-"                         # query_synth has no motion type
    obj_block = text.split("object accuracy")[1]
    attribute = next(line for line in obj_block.splitlines() if line.startswith("attribute"))
    assert "0.750 ± 0.250" in attribute and "n/a" in attribute


@pytest.mark.parametrize("error", ["minmax", "std"])
def test_plot_writes_a_png(runs, tmp_path, error):
    png = plot_quality(aggregate_runs(runs), tmp_path / "sub" / "quality.png", error=error)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    from PIL import Image

    with Image.open(png) as image:
        width, height = image.size
    assert width >= 600 and height >= 600
    assert [p.name for p in png.parent.iterdir()] == ["quality.png"]    # no temporary left


def test_plot_refuses_unknown_error_bars(runs, tmp_path):
    with pytest.raises(ValueError):
        plot_quality(aggregate_runs(runs), tmp_path / "q.png", error="sem")


def test_bench_command_line_defaults_and_seeds():
    args = build_parser().parse_args(["bench", "--what", "quality"])
    assert args.seeds == [0, 1] and args.budget_s is None and args.error_bars == "minmax"
    args = build_parser().parse_args(["bench", "--what", "quality", "--config", "a.yaml", "b.yaml",
                                      "--seeds", "3", "4", "5", "--budget-s", "60"])
    assert args.config == ["a.yaml", "b.yaml"] and args.seeds == [3, 4, 5] and args.budget_s == 60.0


def test_seed_override_reaches_the_config(tmp_path):
    cfg = demo_config(tmp_path / "data", tmp_path / "run", 60.0, BASELINE_CONFIG, ["train.seed=7"])
    assert cfg.train.seed == 7 and cfg.train.time_budget_s == 60.0
    assert cfg.data.root == str(tmp_path / "data")
    assert demo_config(tmp_path / "data", tmp_path / "run", 60.0, BASELINE_CONFIG).train.seed == 0


def test_demo_config_finds_the_backbone_weights_from_any_folder(tmp_path, monkeypatch, assets):
    monkeypatch.chdir(tmp_path)                       # configs name weights from the repo root
    cfg = demo_config(tmp_path / "data", tmp_path / "run", 60.0, DEMO_CONFIG)
    weights = cfg.model.grounding.backbone_weights
    assert weights.startswith(str(REPO_ROOT)) and Path(weights).is_file()


def test_demo_config_names_missing_backbone_weights(tmp_path, monkeypatch):
    from rvos.errors import RVOSError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RVOSError, match="backbone weights not found"):
        demo_config(tmp_path / "data", tmp_path / "run", 60.0, DEMO_CONFIG,
                    ["model.grounding.backbone_weights=../no/such/weights.pt"])
