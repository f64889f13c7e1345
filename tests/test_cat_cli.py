"""The CAT configs through the real CLI: fit exports a peft adapter, test reports base vs CAT."""

from __future__ import annotations

from pathlib import Path

import pytest
from peft import PeftModel

from lightning_cat.cli import main
from lightning_cat.diffusion import load_vae
from lightning_cat.images import ImageInputError

CONFIGS = Path(__file__).parent.parent / "configs" / "cat"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_cat_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["test" if config.startswith("eval") else "fit", "--config", str(CONFIGS / config), "--print_config"])
    assert exit_info.value.code == 0
    assert "CATAdapterModule" in capsys.readouterr().out


def test_fit_then_test_reports_base_and_cat(photos_dir, tmp_path):
    adapter = tmp_path / "adapter"
    fit = main(
        ["fit", "--config", str(CONFIGS / "both.tiny.yaml"), "--data.root", str(photos_dir)]
        + ["--model.output_dir", str(adapter), "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path)]
        + QUIET
    )
    assert fit.trainer.global_step == 2
    reloaded = PeftModel.from_pretrained(load_vae("tiny"), adapter)
    assert sum("lora_B" in name for name, _ in reloaded.named_parameters()) == 30

    test = main(
        ["test", "--config", str(CONFIGS / "eval.tiny.yaml"), "--data.clean_root", str(photos_dir)]
        + ["--data.protected_root", str(photos_dir), "--trainer.default_root_dir", str(tmp_path / "test")]
        + ["--trainer.callbacks.init_args.cat_adapter", str(adapter)]
        + QUIET
    )
    metrics = test.trainer.callback_metrics
    for vae in ("base", "cat"):
        assert f"test/{vae}/latent_mse_relative" in metrics and f"test/{vae}/recon_psnr" in metrics
    # clean == protected here: no distortion under one encoder, but the adapted encoder moved its latents
    assert metrics["test/base/latent_mse"] == 0 and metrics["test/cat/latent_mse"] == 0
    assert metrics["test/cat/latent_mse_vs_reference"] > 0


def test_bad_variant_rejected_at_parse_time(photos_dir, capsys):
    with pytest.raises(SystemExit):
        main(
            ["fit", "--config", str(CONFIGS / "both.tiny.yaml"), "--data.root", str(photos_dir)]
            + ["--model.adapter_variant", "middle"]
        )
    err = capsys.readouterr().err
    assert "adapter_variant" in err and "encoder" in err and "decoder" in err


def test_empty_protected_set_fails_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageInputError, match="holds no image"):
        main(["fit", "--config", str(CONFIGS / "both.tiny.yaml"), "--data.root", str(tmp_path / "empty")])
