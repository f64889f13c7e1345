"""Training checkpoints of the long stages: trainable weights only, plain tensors (``weights_only=True``),
resumable through ``--ckpt_path`` with new command-line options winning over the stored ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from killing import run_and_kill_when  # tests/killing.py
from safetensors.torch import load_file

from lightning_cat.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _cat_fit(photos_dir: Path, root: Path, *extra: str):
    return main(
        ["fit", "--config", str(CONFIGS / "cat/both.tiny.yaml"), "--data.root", str(photos_dir)]
        + ["--data.resolution", "32", "--model.lora_rank", "2", "--trainer.default_root_dir", str(root)]
        + ["--trainer.callbacks.init_args.every_n_train_steps", "2", "--model.output_dir", "null"]
        + QUIET
        + list(extra)
    )


def _bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _trainable(module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def test_cat_checkpoint_holds_the_adapter_and_the_training_state_only(photos_dir, tmp_path):
    cli = _cat_fit(photos_dir, tmp_path / "run", "--trainer.max_steps", "2", "--model.output_dir", str(tmp_path / "a"))
    path = tmp_path / "run/checkpoints/last.ckpt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # one file, no partial left
    checkpoint = torch.load(path, weights_only=True)  # plain tensors, dicts and numbers only
    assert checkpoint["global_step"] == 2
    assert set(checkpoint["state_dict"]) == _trainable(cli.model) and all(
        "lora_" in key for key in checkpoint["state_dict"]
    )
    assert _bytes(checkpoint["state_dict"]) < _bytes(cli.model.state_dict()) / 10  # the frozen VAE is left out
    assert checkpoint["optimizer_states"][0]["state"] and checkpoint["lr_schedulers"]
    assert checkpoint["lightning_cat_rng_states"]["cpu"].dtype == torch.uint8


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_dreambooth_checkpoint_leaves_the_frozen_parts_out(photos_dir, tmp_path, finetune):
    cli = main(
        ["fit", "--config", str(CONFIGS / f"dreambooth/{finetune}.tiny.yaml")]
        + ["--data.instance_root", str(photos_dir), "--data.class_root", str(tmp_path / "class")]
        + ["--data.num_class_images", "2", "--model.class_generation_steps", "2", "--model.output_dir", "null"]
        + ["--trainer.max_steps", "2", "--trainer.callbacks.init_args.every_n_train_steps", "2"]
        + ["--trainer.default_root_dir", str(tmp_path / "run")]
        + QUIET
    )
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    keys = set(checkpoint["state_dict"])
    assert keys == _trainable(cli.model)
    assert not any(key.startswith("vae.") for key in keys)
    if finetune == "lora":  # UNet LoRA; the frozen text encoder is left out
        assert keys and all(key.startswith("unet.") and "lora_" in key for key in keys)
    else:  # the whole UNet and text encoder train here
        assert cli.model.hparams.train_text_encoder
        modules = {"unet": cli.model.unet, "text_encoder": cli.model.text_encoder}
        assert keys == {f"{part}.{name}" for part, module in modules.items() for name, _ in module.named_parameters()}


def test_ckpt_path_resumes_with_new_options_winning(photos_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    _cat_fit(photos_dir, tmp_path / "run", "--trainer.max_steps", "2", "--model.output_dir", str(first))
    checkpoint = tmp_path / "run/checkpoints/last.ckpt"
    with pytest.warns(UserWarning, match=r"differ from the checkpoint's and the new values are used: \['output_dir'\]"):
        cli = _cat_fit(
            photos_dir,
            tmp_path / "run",
            "--trainer.max_steps",
            "4",
            "--model.output_dir",
            str(second),
            "--ckpt_path",
            str(checkpoint),
        )
    assert cli.model.hparams.output_dir == str(second)  # Lightning 2.6 alone would restore `first` here
    assert cli.trainer.global_step == 4
    assert (second / "adapter_model.safetensors").is_file() and (first / "adapter_model.safetensors").is_file()
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 4


def test_a_checkpoint_without_some_trainable_weights_is_refused(photos_dir, tmp_path):
    _cat_fit(photos_dir, tmp_path / "run", "--trainer.max_steps", "2", "--model.adapter_variant", "encoder")
    with pytest.raises(KeyError, match=r"CATAdapterModule: the checkpoint lacks \d+ trainable weights.*decoder"):
        _cat_fit(
            photos_dir,
            tmp_path / "other",
            "--trainer.max_steps",
            "4",
            "--ckpt_path",
            str(tmp_path / "run/checkpoints/last.ckpt"),
        )


def test_every_n_train_steps_below_one_is_refused():
    from lightning_cat.callbacks import TrainingCheckpoint

    with pytest.raises(ValueError, match="TrainingCheckpoint: every_n_train_steps must be >= 1, got 0"):
        TrainingCheckpoint(every_n_train_steps=0)


def test_a_killed_dreambooth_run_resumed_with_ckpt_path_ends_where_an_uninterrupted_one_does(
    photos_dir, tmp_path, tiny_model_path
):
    """DreamBooth draws its noise and timesteps from the global RNG: the checkpoint's RNG states make
    the resumed steps the uninterrupted ones (one batch per epoch, so every checkpoint is at an epoch end)."""
    instance = tmp_path / "instance"
    instance.mkdir()
    for name in ("astronaut", "coffee"):
        shutil.copyfile(photos_dir / f"{name}.png", instance / f"{name}.png")

    def args(root: Path, output: Path) -> list[str]:
        return (
            ["fit", "--config", str(CONFIGS / "dreambooth/lora.tiny.yaml"), "--data.instance_root", str(instance)]
            + ["--data.class_root", str(tmp_path / "class"), "--data.num_class_images", "2", "--data.resolution", "32"]
            + ["--model.class_generation_steps", "2", "--model.lora_rank", "2", "--model.output_dir", str(output)]
            + ["--trainer.max_steps", "16", "--trainer.callbacks.init_args.every_n_train_steps", "2"]
            + ["--trainer.default_root_dir", str(root), "--trainer.logger", "false"]
            + QUIET
        )

    main(args(tmp_path / "uninterrupted", tmp_path / "uninterrupted-model"))  # also writes the class images
    checkpoint = tmp_path / "killed/checkpoints/last.ckpt"
    run_and_kill_when(args(tmp_path / "killed", tmp_path / "unused"), checkpoint.is_file)
    step = torch.load(checkpoint, weights_only=True)["global_step"]
    assert 0 < step < 16 and not (tmp_path / "unused").exists()

    resumed = main(args(tmp_path / "killed", tmp_path / "resumed-model") + ["--ckpt_path", str(checkpoint)])
    assert resumed.trainer.global_step == 16
    weights = {
        run: load_file(tmp_path / f"{run}-model/pytorch_lora_weights.safetensors")
        for run in ("resumed", "uninterrupted")
    }
    assert weights["resumed"].keys() == weights["uninterrupted"].keys()
    for name, value in weights["resumed"].items():
        assert torch.equal(value, weights["uninterrupted"][name]), name
