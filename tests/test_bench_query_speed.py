"""``rvos bench --what query_speed``: the query-family speed benchmark's JSON and table at a
tiny size (the real figures, 360x640 with T=5 and T=36, come from the command itself)."""

import json

import pytest

from rvos.bench import against_base, format_query_speed, published_configs, query_speed_benchmark
from rvos.config import CONFIG_DIR, base_chain
from rvos.cli import main
from rvos.errors import RVOSError

TINY = CONFIG_DIR / "query_synth_mobilenetv2.yaml"


def test_default_configs_are_the_published_ones():
    assert published_configs() and all(("_ytvos_" in p.name or "_a2d_" in p.name)
                                       for p in published_configs())


def test_query_speed_writes_one_measurement_per_config_and_clip_length(tmp_path, capsys):
    code = main(["bench", "--what", "query_speed", "--config", str(TINY), "--size", "64x64",
                 "--frames", "1", "2", "--repeats", "2", "1", "--device", "cpu",
                 "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "query_speed.json").read_text())
    assert result["complete"] and result["size"] == [64, 64] and result["frames"] == [1, 2]
    assert result["repeats"] == {"1": 2, "2": 1}
    assert result["machine"]["device"] == "cpu" and result["machine"]["threads"] >= 1
    runs = result["results"]["query_synth_mobilenetv2"]
    assert list(runs) == ["T1", "T2"]
    for t, r in zip((1, 2), runs.values()):
        assert "error" not in r, r
        assert r["frames"] == t and r["frames_per_s"] > 0
        assert r["frames_per_s"] == pytest.approx(t / r["seconds_per_clip"])
        assert r["peak_memory_mb"] >= r["model_memory_mb"] > 0
        assert r["params"] > r["params_text"] > 0
        assert r["mask_logits_shape"] == [1, t, 5, 16, 16]
        assert r["text_tokenizer_stand_in"] is False          # MiniLM's tokenizer ships offline
    table = capsys.readouterr().out
    assert "query_synth_mobilenetv2" in table and "frames/s" in table
    assert format_query_speed(result).count("query_synth_mobilenetv2") == 2


def test_a_failed_measurement_is_reported_and_the_rest_goes_on(tmp_path):
    result = query_speed_benchmark(tmp_path, [TINY], device="cpu", size=(64, 64), frames=[1],
                                   repeats=[1], overrides=["model.text.name=someone/unknown"])
    r = result["results"]["query_synth_mobilenetv2"]["T1"]
    assert result["complete"] and r["frames"] == 1
    assert "no architecture known offline" in r["error"]
    assert "error" in format_query_speed(result)


@pytest.mark.parametrize("args, message", [
    (["--config", "no/such.yaml"], "config not found"),
    (["--frames", "5", "36", "--repeats", "1", "2", "3"], "--repeats takes one positive count"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    code = main(["bench", "--what", "query_speed", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_earlier_results_are_kept_without_overwrite(tmp_path):
    (tmp_path / "query_speed.json").write_text("{}")
    with pytest.raises(RVOSError, match="already exists"):
        query_speed_benchmark(tmp_path, [TINY], size=(64, 64), frames=[1])
    assert (tmp_path / "query_speed.json").read_text() == "{}"


def test_a_method_is_compared_with_the_nearest_measured_config_it_is_based_on(tmp_path):
    (tmp_path / "core.yaml").write_text("model: {kind: query}\n")
    (tmp_path / "method.yaml").write_text("base: core.yaml\nmodel: {query: {dim: 64}}\n")
    (tmp_path / "method_big.yaml").write_text("base: method.yaml\n")
    configs = [tmp_path / n for n in ("core.yaml", "method.yaml", "method_big.yaml")]
    assert base_chain(configs[2]) == [configs[1].resolve(), configs[0].resolve()]

    def run(fps, cpu, mem):
        return {"frames_per_s": fps, "cpu_seconds_per_clip": cpu, "peak_memory_mb": mem}
    result = {"results": {"core": {"T5": run(2.0, 10.0, 1000.0), "T36": {"error": "killed"}},
                          "method": {"T5": run(3.0, 5.0, 500.0), "T36": run(1.0, 1.0, 1.0)},
                          "method_big": {"T5": run(1.5, 10.0, 1000.0)}}}
    comparison = against_base(result, configs)
    assert "core" not in comparison                              # it has no base
    assert comparison["method"] == {"base": "core", "T5": {          # T36: the core failed
        "frames_per_s_ratio": 1.5, "cpu_seconds_ratio": 0.5, "peak_memory_ratio": 0.5}}
    assert comparison["method_big"]["base"] == "method"           # the nearest one measured
    assert comparison["method_big"]["T5"]["frames_per_s_ratio"] == 0.5
