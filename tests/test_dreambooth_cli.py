"""The shipped DreamBooth configs: all parse; the tiny ones customize and sample end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline

from lightning_cat.cat.adapter import add_cat_adapter, cat_lora_config, save_cat_adapter
from lightning_cat.cli import main
from lightning_cat.diffusion import load_vae

CONFIGS = Path(__file__).parents[1] / "configs" / "dreambooth"


@pytest.mark.parametrize("name", ["full.tiny", "lora.tiny", "sample.tiny", "full.sd21", "lora.sd21", "sample.sd21"])
def test_config_parses(name, capsys):
    subcommand = "predict" if name.startswith("sample") else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(CONFIGS / f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].endswith(("DreamBoothModule", "SamplingModule"))


def test_reference_protocol_values():
    full = yaml.safe_load((CONFIGS / "full.sd21.yaml").read_text())
    lora = yaml.safe_load((CONFIGS / "lora.sd21.yaml").read_text())
    sample = yaml.safe_load((CONFIGS / "sample.sd21.yaml").read_text())
    assert full["model"]["init_args"]["learning_rate"] == 5e-7 and full["model"]["init_args"]["train_text_encoder"]
    assert full["data"]["init_args"]["batch_size"] == 2 and full["data"]["init_args"]["num_class_images"] == 200
    assert 1000 <= full["trainer"]["max_steps"] <= 2000 and full["trainer"]["gradient_clip_val"] == 1.0
    assert lora["model"]["init_args"]["lora_rank"] == 16 and lora["model"]["init_args"]["learning_rate"] == 5e-5
    assert sample["model"]["init_args"]["num_inference_steps"] == 100
    assert sample["model"]["init_args"]["guidance_scale"] == 7.5
    assert sample["data"]["init_args"]["prompts"] == [
        "a photo of {instance_token} {class}",
        "a dslr portrait of {instance_token} {class}",
    ]


def _config(name: str, tmp_path: Path, edit) -> str:
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    edit(config)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_tiny_lora_fit_then_predict_with_cat_and_cdl(photos_dir, tmp_path, tiny_model_path, monkeypatch):
    adapter = add_cat_adapter(load_vae("tiny"), cat_lora_config("both", rank=2))
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    adapter_dir = save_cat_adapter(adapter, tmp_path / "cat")

    def fit_edit(config):
        config["trainer"].update(max_steps=2, default_root_dir=str(tmp_path / "logs"), logger=False)
        config["model"]["init_args"].update(
            output_dir=str(tmp_path / "model"), cat_adapter=str(adapter_dir), cdl=True, class_generation_steps=2
        )
        config["data"]["init_args"].update(
            instance_root=str(photos_dir), class_root=str(tmp_path / "class"), num_class_images=2
        )

    main(["fit", "--config", _config("lora.tiny", tmp_path, fit_edit)])
    assert len(list((tmp_path / "class").glob("class_*.png"))) == 2
    record = json.loads((tmp_path / "model" / "customization.json").read_text())
    assert record["cdl"]["instance_suffix"] and record["cat_adapter"] == "cat_adapter"
    pipeline = StableDiffusionPipeline.from_pretrained(str(tiny_model_path), safety_checker=None)
    pipeline.load_lora_weights(str(tmp_path / "model"))

    def predict_edit(config):
        config["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(tmp_path / "samples")
        config["trainer"]["default_root_dir"] = str(tmp_path / "sample-logs")
        config["model"]["init_args"].update(
            pretrained_model_name_or_path=str(tmp_path / "model"), num_inference_steps=2
        )
        config["data"]["init_args"].update(images_per_prompt=2, batch_size=2)

    # As the console script runs it: sys.exit(main()) must exit with status 0.
    monkeypatch.setattr(
        sys, "argv", ["lightning-cat", "predict", "--config", _config("sample.tiny", tmp_path, predict_edit)]
    )
    assert main() is None
    samples = tmp_path / "samples"
    assert len(list((samples / "a_photo_of_sks_person").glob("*.png"))) == 2
    assert len(list((samples / "a_dslr_portrait_of_sks_person").glob("*.png"))) == 2
    index = json.loads((samples / "samples.json").read_text())
    assert index["prompts"][0]["sampling_prompt"] == "a photo of sks person, without bhj noisy pattern"
    assert index["settings"]["negative_prompt"] == "noisy, lowres, artifact, pattern"
    assert (samples / "grid.png").is_file()


def test_bad_finetune_rejected_at_parse_time(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "lora.tiny.yaml"), "--model.finetune", "partial"])
    err = capsys.readouterr().err
    assert "finetune" in err and "full" in err and "lora" in err
