import pytest

from rvos.config import (CONFIG_DIR, Config, base_chain, config_names, load_config, save_config,
                         to_dict)
from rvos.errors import RVOSError
from rvos.models.build import MODEL_KINDS



def test_defaults_follow_the_seed_recipe():
    cfg = Config()
    assert (cfg.loss.baseline.bce, cfg.loss.baseline.dice, cfg.loss.baseline.focal) == (0.3, 0.6, 0.1)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (5e-4, 1e-4)
    assert (cfg.optim.sched_t0, cfg.optim.sched_t_mult) == (5, 2)
    assert (cfg.optim.accumulate_steps, cfg.optim.clip_grad_norm) == (4, 1.0)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1.0e-3\ndata:\n  num_frames: 6\n")
    cfg = load_config(path, ["optim.lr=2e-4", "data.input_size=[96,160]", "model.kind=query"])
    assert cfg.optim.lr == pytest.approx(2e-4)          # "2e-4" is a string to YAML 1.1
    assert cfg.data.num_frames == 6
    assert cfg.data.input_size == (96, 160)
    assert cfg.model.kind == "query"
    assert cfg.optim.weight_decay == 1e-4               # untouched defaults stay


def test_unknown_key_names_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(RVOSError) as e:
        load_config(path)
    assert "bad.yaml" in str(e.value) and "optim.learning_rate" in str(e.value)


@pytest.mark.parametrize("override, key", [("optim.batch_size=two", "optim.batch_size"),
                                           ("data.input_size=[1,2,3]", "data.input_size"),
                                           ("train.epochs=1.5", "train.epochs")])
def test_wrong_types_are_refused(override, key):
    with pytest.raises(RVOSError, match=key):
        load_config(None, [override])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(RVOSError, match="key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(RVOSError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(None, ["optim.lr=3e-4", "data.input_size=[64,96]"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert to_dict(load_config(tmp_path / "run" / "config.yaml")) == to_dict(cfg)


def test_every_shipped_config_is_valid():
    configs = sorted(CONFIG_DIR.rglob("*.yaml"))
    assert configs, "rvos/configs/ is empty"
    for path in configs:
        cfg = load_config(path)
        assert cfg.model.kind in MODEL_KINDS, path
        assert not str(cfg.data.root).startswith("/"), f"{path}: absolute data path"


def test_a_config_inherits_from_its_base_and_overrides_it_key_by_key(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  kind: query\n  query: {dim: 64, heads: 4}\n"
                                        "optim: {lr: 1.0e-3}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel:\n  query: {dim: 32}\n")
    cfg = load_config(tmp_path / "child.yaml", ["optim.batch_size=3"])
    assert (cfg.model.kind, cfg.model.query.dim, cfg.model.query.heads) == ("query", 32, 4)
    assert (cfg.optim.lr, cfg.optim.batch_size) == (1e-3, 3)


def test_config_base_cycles_and_missing_bases_are_one_line_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(RVOSError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(RVOSError, match="nowhere.yaml.*not found|not found.*nowhere.yaml"):
        load_config(tmp_path / "c.yaml")


def test_loss_keys_of_earlier_releases_load_into_the_loss_section(tmp_path):
    (tmp_path / "old.yaml").write_text("model:\n  kind: query\n  query: {loss_class: 3.0, cost_dice: 4.0,"
                                       " aux_loss: false}\nloss: {bce: 0.5}\n")
    cfg = load_config(tmp_path / "old.yaml")
    assert (cfg.loss.query.cls, cfg.loss.query.cost_dice, cfg.loss.query.aux) == (3.0, 4.0, False)
    assert cfg.loss.baseline.bce == 0.5


# ----------------------------------------------------------------------------- packaged configs
def test_a_packaged_config_loads_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_path = load_config(CONFIG_DIR / "baseline_synth.yaml")
    assert load_config("baseline_synth") == by_path
    assert load_config("baseline_synth.yaml") == by_path
    assert load_config("configs/baseline_synth.yaml") == by_path     # command lines of earlier releases
    assert load_config("ablations/soc_without_clusters") == load_config(
        CONFIG_DIR / "ablations" / "soc_without_clusters.yaml")
    assert {"baseline_synth", "grounding_synth", "ablations/soc_without_clusters"} <= set(config_names())


def test_a_file_of_that_name_wins_over_the_packaged_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "baseline_synth.yaml").write_text("optim: {lr: 0.125}\n")
    assert load_config("baseline_synth.yaml").optim.lr == 0.125
    assert load_config("baseline_synth").optim.lr == load_config(CONFIG_DIR / "baseline_synth.yaml").optim.lr


def test_a_users_config_inherits_from_a_packaged_one_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("base: grounding_synth\noptim: {lr: 0.125}\n")
    mine = load_config(tmp_path / "mine.yaml")
    assert mine == load_config("grounding_synth", ["optim.lr=0.125"])
    assert base_chain(tmp_path / "mine.yaml")[0] == (CONFIG_DIR / "grounding_synth.yaml").resolve()


def test_an_unknown_config_name_says_where_it_looked_and_lists_the_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RVOSError) as e:
        load_config("baseline_synht")
    message = str(e.value)
    assert "\n" not in message and "not found" in message
    assert "rvos/configs/baseline_synht.yaml" in message and "baseline_synth," in message
    (tmp_path / "child.yaml").write_text("base: no_such_base\n")
    with pytest.raises(RVOSError, match="child.yaml: base: no_such_base: config not found"):
        load_config(tmp_path / "child.yaml")


def test_rvos_configs_and_train_help_name_the_packaged_configs(capsys):
    from rvos.cli import main

    assert main(["configs"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert set(config_names()) <= set(listed)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "ablations/soc_without_clusters" in capsys.readouterr().out
