"""The papers' protocols: every paper config parses, and every value its protocol card pins is the config's.

``docs/protocols/*.md`` list each setting with its source; a row whose config column names
``file: key`` is checked here against the config as LightningCLI parses it (defaults filled,
types and choices validated, nothing instantiated), so a card and a config cannot drift apart.
"""

from __future__ import annotations

import math
import os
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CARDS = sorted((ROOT / "docs" / "protocols").glob("*.md"))
PAPER_CONFIGS = sorted(CONFIGS.rglob("*.sd21.yaml"))
SUBCOMMANDS = {
    "ProtectionModule": "fit",
    "CATAdapterModule": "fit",
    "DreamBoothModule": "fit",
    "SamplingModule": "predict",
    "PurificationModule": "predict",
    "EvaluationModule": "test",
}
_ROW = re.compile(r"^\|(?P<setting>[^|]+)\|(?P<value>[^|]+)\|\s*`(?P<file>[^`:]+): (?P<key>[^`]+)`\s*\|")


@cache
def parsed(path: Path) -> dict[str, Any]:
    """The config as ``lightning-cat <subcommand>`` parses it, without instantiating anything."""
    from lightning.pytorch import LightningDataModule, LightningModule

    from lightning_cat.lightning_cli import LightningCatCLI, register_classes

    class ParseOnly(LightningCatCLI):
        def instantiate_classes(self) -> None:
            pass

        def _run_subcommand(self, subcommand: str) -> None:
            pass

    register_classes()  # short class names resolve
    raw = yaml.safe_load(path.read_text())
    subcommand = SUBCOMMANDS[str(raw["model"]["class_path"]).rsplit(".", 1)[-1]]
    argv, sys.argv = sys.argv, [sys.argv[0]]  # no pytest arguments for LightningCLI to see
    try:
        cli = ParseOnly(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,
            args=[subcommand, "--config", str(path)],
        )
    finally:
        sys.argv = argv
    return cli.config[subcommand].as_dict()


def _lookup(config: Any, key: str) -> Any:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        config = config[int(part[1:-1])] if part.startswith("[") else config[part]
    return config


def _expected(cell: str) -> Any:
    text = cell.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if text in ("true", "false", "null"):
        return yaml.safe_load(text)
    if text.startswith("[") and text.endswith("]"):  # items separated by ", " (prompts hold braces)
        return [_expected(item) for item in text[1:-1].split(", ")]
    return text


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, float) and isinstance(actual, int | float) and not isinstance(actual, bool):
        return math.isclose(actual, expected, rel_tol=1e-9)
    if isinstance(expected, list) and isinstance(actual, list | tuple):
        return len(actual) == len(expected) and all(_same(a, e) for a, e in zip(actual, expected, strict=True))
    return actual == expected or (isinstance(expected, str) and str(actual) == expected)


def _pinned_rows() -> list[tuple[str, str, Any, str, str]]:
    rows = []
    for card in CARDS:
        for line in card.read_text().splitlines():
            match = _ROW.match(line)
            if match:
                rows.append(
                    (card.stem, match["setting"].strip(), _expected(match["value"]), match["file"], match["key"])
                )
    return rows


PINNED = _pinned_rows()


def test_each_paper_has_a_card_that_pins_its_configs():
    assert {card.stem for card in CARDS} == {"cat", "liu", "anti-dreambooth"}
    for card in CARDS:
        assert len([row for row in PINNED if row[0] == card.stem]) >= 15, card


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_paper_config_parses(path):
    config = parsed(path)
    assert config["model"]["class_path"].rsplit(".", 1)[-1] in SUBCOMMANDS


@pytest.mark.parametrize(("card", "setting", "value", "file", "key"), PINNED, ids=lambda v: str(v)[:40])
def test_the_card_pins_the_config_value(card, setting, value, file, key):
    path = CONFIGS / file
    assert path.is_file(), f"{card}.md: {setting}: no config {file}"
    if file.startswith("experiment/"):
        actual = _lookup(yaml.safe_load(path.read_text()), key)
    else:
        actual = _lookup(parsed(path), key)
    assert _same(actual, value), f"{card}.md pins {setting} = {value!r}; {file}: {key} is {actual!r}"


@pytest.mark.parametrize("name", ["cat_sd21", "liu_sd21"])
def test_the_paper_experiments_validate_and_reference_the_carded_configs(name):
    from lightning_cat.experiment import load_experiment_config

    config = load_experiment_config(CONFIGS / "experiment" / f"{name}.yaml", require_subjects=False)
    files = {Path(f) for group in config.stage_files.values() for f in group.values()}
    assert files <= set(map(Path, map(os.path.realpath, PAPER_CONFIGS)))  # every stage is a paper config


@pytest.mark.parametrize("method", ["mist", "sdst"])
def test_a_missing_reference_target_texture_is_a_clear_error(method, tmp_path):
    """The paper configs of Mist and SDST name the reference's MIST.png, which the user supplies."""
    from lightning_cat.modules import ProtectionModule

    with pytest.raises(ValueError, match=rf"'{method}': target_image must be an existing image file"):
        ProtectionModule(method=method, target_image=str(tmp_path / "MIST.png"))
