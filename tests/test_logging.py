"""Logging: rvos's messages go through the ``rvos`` logger, the command installs one handler
on it alone, no other library's log settings change, and the optional extras (TensorBoard,
matplotlib) are skipped with one warning when absent."""

import logging
import sys

import pytest

from rvos import extras
from rvos.cli import install_log_handler, main


@pytest.fixture
def rvos_logger():
    """The ``rvos`` logger's handlers and level restored after the test."""
    logger = logging.getLogger("rvos")
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_the_command_installs_one_handler_on_the_rvos_logger_only(rvos_logger, capsys):
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    other_level = logging.getLogger("transformers").level
    install_log_handler()
    install_log_handler()                       # a second command in one process: still one
    assert len([h for h in rvos_logger.handlers if isinstance(h, logging.StreamHandler)]) == 1
    assert rvos_logger.level == logging.INFO
    assert (list(root.handlers), root.level) == (root_handlers, root_level)
    assert logging.getLogger("transformers").level == other_level
    logging.getLogger("rvos.demo").info("[1/4] a step")
    logging.getLogger("rvos.bench").warning("something is off")
    assert capsys.readouterr().err == "[1/4] a step\nwarning: something is off\n"


def test_quiet_keeps_warnings_only(rvos_logger, capsys):
    install_log_handler(quiet=True)
    logging.getLogger("rvos.demo").info("a step")
    logging.getLogger("rvos.demo").warning("a problem")
    assert capsys.readouterr().err == "warning: a problem\n"


def test_a_command_logs_its_steps_to_stderr_and_prints_its_result(rvos_logger, capsys):
    assert main(["configs"]) == 0
    out, err = capsys.readouterr()
    assert "baseline_synth" in out and err == ""


def test_building_a_text_encoder_leaves_transformers_log_settings_alone():
    from transformers.utils import logging as hf_logging

    from rvos.models.text import TextEncoder

    hf_logging.set_verbosity_info()
    try:
        TextEncoder()                                    # the offline MiniLM
        assert hf_logging.get_verbosity() == hf_logging.INFO
        assert hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.set_verbosity_warning()


def test_a_missing_extra_is_skipped_with_one_warning(monkeypatch, tmp_path, caplog):
    from rvos.engine.trainer import MetricsLogger, plot_run_curves

    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib: ImportError
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setattr(extras, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="rvos"):
        for _ in range(2):
            metrics = MetricsLogger(tmp_path)
            metrics.log(1, 0.5, "train", {"loss": 1.0})
            metrics.close()
            plot_run_curves(tmp_path)
    assert (tmp_path / "metrics.csv").is_file()
    assert not (tmp_path / "curves.png").exists() and not (tmp_path / "tensorboard").exists()
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2, warned
    assert "rvos[plots]" in " ".join(warned) and "rvos[tensorboard]" in " ".join(warned)
