"""The quality benchmark's side-by-side table of models and splits."""

from rvos.bench import format_quality_table


def _summary(split, jf_by_type):
    return {"split": split, "overall": {"JF": sum(jf_by_type.values()) / len(jf_by_type)},
            "by_type": {t: {"JF": v} for t, v in jf_by_type.items()}}


def test_quality_table_has_a_column_per_model_and_split_and_a_row_per_type():
    result = {"budget_s": 420.0, "runs": {
        "baseline_synth": {"steps": 460, "timings": {"train_s": 421.0}, "results": {
            "test": _summary("test", {"attribute": 0.5, "spatial": 0.25}),
            "test_compositional": _summary("test_compositional", {"attribute": 0.125, "spatial": 0.75})}},
        "query_synth": {"steps": 90, "timings": {"train_s": 430.0}, "results": {
            "test": _summary("test", {"attribute": 1.0})}},
    }}
    lines = format_quality_table(result).splitlines()
    header = lines[0].split()
    assert header == ["J&F", "baseline_synth/test", "baseline_synth/comp", "query_synth/test"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:-1]}
    assert rows["attribute"] == ["0.500", "0.125", "1.000"]
    assert rows["spatial"] == ["0.250", "0.750", "-"]       # a type a split does not have
    assert rows["overall"] == ["0.375", "0.438", "1.000"]
    assert "baseline_synth: 460 steps in 421 s" in lines[-1]
