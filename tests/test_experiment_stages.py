"""StageCommand: the stage's console output goes to its log; a failure names the log and shows its end."""

from __future__ import annotations

import pytest

from lightning_cat.experiment.stages import StageCommand


def test_failing_stage_names_its_log_and_prints_its_end(tmp_path, capsys):
    config = {"model": {"class_path": "NoSuchModule"}, "data": {"class_path": "ImageFolderDataModule"}}
    log = tmp_path / "stage.log"
    with pytest.raises(RuntimeError, match="full log: .*stage.log"):
        StageCommand("fit", config, tmp_path, log_file=log).run()
    assert "NoSuchModule" in log.read_text()
    assert "NoSuchModule" in capsys.readouterr().err
    assert (tmp_path / "stage_config.yaml").is_file()


def test_stage_output_goes_to_the_log(tmp_path, photos_dir, capsys):
    config = {
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 1,
            "logger": False,
            "enable_checkpointing": False,
            "default_root_dir": str(tmp_path),  # where LightningCLI saves its config.yaml
        },
        "model": {"class_path": "CATAdapterModule", "init_args": {"lora_rank": 2}},
        "data": {"class_path": "ImageFolderDataModule", "init_args": {"root": str(photos_dir), "resolution": 32}},
    }
    log = tmp_path / "stage.log"
    StageCommand("fit", config, tmp_path, log_file=log).run()
    captured = capsys.readouterr()
    assert "Epoch 0" in log.read_text()  # Lightning's progress bar
    assert "Epoch 0" not in captured.out + captured.err


def test_output_redirect_survives_last_resort_and_shared_handlers(tmp_path, monkeypatch):
    """torch attaches ``logging.lastResort`` (read-only ``stream``) to some loggers, as when accelerate is
    installed; a handler may also sit on two loggers. Both must redirect and restore cleanly."""
    import logging
    import sys

    from lightning_cat.experiment.stages import _output_to

    shared = logging.StreamHandler(sys.stderr)
    console = shared.stream
    first, second, last_resort_owner = (logging.getLogger(f"lc-test-{name}") for name in ("a", "b", "c"))
    for logger, handler in ((first, shared), (second, shared), (last_resort_owner, logging.lastResort)):
        logger.addHandler(handler)
        monkeypatch.setattr(logger, "propagate", False)
    try:
        log = tmp_path / "stage.log"
        with _output_to(log) as stream:
            assert shared.stream is stream
            first.warning("from a shared handler")
            last_resort_owner.warning("from the last-resort handler")
        assert shared.stream is console
        text = log.read_text()
        assert "from a shared handler" in text and "from the last-resort handler" in text
    finally:
        for logger, handler in ((first, shared), (second, shared), (last_resort_owner, logging.lastResort)):
            logger.removeHandler(handler)
