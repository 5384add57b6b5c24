"""The few-shot benchmark's aggregation: per fold over seeds, the mean over folds per seed,
the margin over the reference config, and its table; and its command line."""

import pytest

from rvos.bench_fewshot import aggregate_fewshot, format_fewshot_aggregate, margins
from rvos.cli import build_parser


def _run(config, fold, seed, jf_by_shots):
    return {"config": config, "fold": fold, "seed": seed,
            "results": [{"shots": k, "overall": {"JF": jf, "J": jf - 0.01, "F": jf + 0.01,
                                                  "object_accuracy": jf}}
                        for k, jf in jf_by_shots.items()]}


@pytest.fixture
def runs():
    out = []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        out += [_run("baseline", 1, seed, {1: 0.40 + shift, 5: 0.40 + shift}),
                _run("baseline", 2, seed, {1: 0.50 + shift, 5: 0.50 + shift}),
                _run("cma", 1, seed, {1: 0.60 + shift, 5: 0.70 + shift}),
                _run("cma", 2, seed, {1: 0.62 + shift, 5: 0.72 + shift})]
    return out


def test_folds_and_the_mean_over_folds_are_taken_over_seeds(runs):
    agg = aggregate_fewshot(runs)
    cell = agg["cma"]["5"]
    assert cell["folds"]["1"]["JF"]["mean"] == pytest.approx(0.71)
    assert cell["folds"]["2"]["JF"]["min"] == pytest.approx(0.72)
    assert cell["folds"]["2"]["JF"]["max"] == pytest.approx(0.74)
    means = cell["mean_over_folds"]["JF"]
    assert means["n"] == 2 and means["min"] == pytest.approx(0.71) and means["max"] == pytest.approx(0.73)
    assert agg["baseline"]["1"]["mean_over_folds"]["J"]["mean"] == pytest.approx(0.45)


def test_margins_over_the_reference_and_the_seed_spread(runs):
    gaps = margins(aggregate_fewshot(runs), "baseline")
    assert set(gaps) == {"cma"}
    assert gaps["cma"]["5"]["JF_margin"] == pytest.approx(0.26)
    assert gaps["cma"]["1"]["JF_margin"] == pytest.approx(0.16)
    assert gaps["cma"]["5"]["seed_spread"] == pytest.approx(0.02)
    assert gaps["cma"]["5"]["beyond_spread"]
    close = [_run("a", 1, 0, {5: 0.5}), _run("a", 1, 1, {5: 0.6}),
             _run("b", 1, 0, {5: 0.52}), _run("b", 1, 1, {5: 0.62})]
    assert not margins(aggregate_fewshot(close), "a")["b"]["5"]["beyond_spread"]


def test_the_table_has_a_row_per_config_and_shot(runs):
    table = format_fewshot_aggregate(aggregate_fewshot(runs), "baseline")
    lines = table.splitlines()
    assert "fold 1" in lines[0] and "fold 2" in lines[0] and "mean J&F" in lines[0]
    assert len(lines) == 2 + 4
    assert "+0.260" in table and "> spread" in table


def test_command_line():
    args = build_parser().parse_args(["bench", "--what", "fewshot"])
    assert args.folds == [1, 2, 3, 4] and args.shots == [1, 5] and args.budget_s is None
    args = build_parser().parse_args(["bench", "--what", "fewshot", "--folds", "2", "--shots", "5",
                                      "--budget-s", "30"])
    assert args.folds == [2] and args.shots == [5] and args.budget_s == 30.0
