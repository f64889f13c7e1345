"""2-process DreamBooth-LoRA fit and sampling on CPU (gloo), run by tests/test_dreambooth_ddp.py.

    python tests/ddp_dreambooth_run.py --photos DIR --out DIR [--devices 2]

Writes ``OUT/model`` (the exported LoRA, class images generated in ``OUT/class`` by one
process), ``OUT/lora_checksums.json`` (every rank's sum of its LoRA weights after training) and
``OUT/samples`` (the sample set written by all processes).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402

from lightning_cat.callbacks import SampleWriter  # noqa: E402
from lightning_cat.customization.lora import lora_parameters
from lightning_cat.datamodules import DreamBoothDataModule, PromptDataModule  # noqa: E402
from lightning_cat.modules import DreamBoothModule, SamplingModule  # noqa: E402

PROMPTS = [
    "a photo of {instance_token} {class}",
    "a dslr portrait of {instance_token} {class}",
    "{instance_token} {class}",
]


class LoraChecksums(Callback):
    """Gathers each rank's LoRA weight sum at the end of training (DDP must keep them equal)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        total = torch.stack([p.detach().double().sum() for p in lora_parameters(pl_module.unet)]).sum()
        gathered = trainer.strategy.all_gather(total.float())
        if trainer.is_global_zero:
            with open(self.path, "w") as handle:
                json.dump([float(v) for v in gathered.flatten()], handle)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, default=2)
    args = parser.parse_args()
    common = {"accelerator": "cpu", "devices": args.devices, "strategy": "ddp", "logger": False}
    common.update(enable_progress_bar=False, enable_model_summary=False, default_root_dir=args.out)

    datamodule = DreamBoothDataModule(
        args.photos,
        class_root=os.path.join(args.out, "class"),
        num_class_images=2,
        resolution=64,
        batch_size=1,
    )
    module = DreamBoothModule(
        lora_rank=4, learning_rate=1e-3, class_generation_steps=2, output_dir=os.path.join(args.out, "model")
    )
    checksums = LoraChecksums(os.path.join(args.out, "lora_checksums.json"))
    Trainer(max_steps=2, enable_checkpointing=False, callbacks=[checksums], **common).fit(module, datamodule)

    sampler = SamplingModule(os.path.join(args.out, "model"), num_inference_steps=2)
    prompts = PromptDataModule(PROMPTS, images_per_prompt=1, batch_size=1)
    writer = SampleWriter(os.path.join(args.out, "samples"))
    Trainer(callbacks=[writer], **common).predict(sampler, prompts, return_predictions=False)


if __name__ == "__main__":
    main()
