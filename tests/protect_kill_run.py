"""Protect a folder with the tiny model, optionally killing the process (SIGKILL) before a batch.

Run as a script (``python tests/protect_kill_run.py ROOT OUTPUT_DIR RUN_DIR --kill-before-batch 1``)
to leave the set a killed run leaves; ``tests/test_kill_resume.py`` re-runs :func:`protect` in its
own process and compares the result with an uninterrupted run. Five photographs in batches of two
(no shuffling): a kill before batch 1 leaves the two images of batch 0 finished.
"""

from __future__ import annotations

import argparse
import os
import signal

BATCH_SIZE = 2


def protect(
    root: str,
    output_dir: str,
    run_dir: str,
    seed: int = 0,
    overwrite: bool = False,
    kill_before_batch: int | None = None,
) -> None:
    """Protect ``root`` into ``output_dir`` (AdvDM+, 32 px, 4 steps); SIGKILL before batch ``kill_before_batch``."""
    from lightning.pytorch import Callback, seed_everything
    from training import quiet_trainer  # tests/training.py (this script's folder is on sys.path)

    from lightning_cat.datamodules import ImageFolderDataModule
    from lightning_cat.modules import ProtectionModule

    class KillBeforeBatch(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == kill_before_batch:
                os.kill(os.getpid(), signal.SIGKILL)

    seed_everything(0)
    data = ImageFolderDataModule(root, resolution=32, batch_size=BATCH_SIZE, shuffle=False)
    model = ProtectionModule(
        method="advdm_plus", output_dir=output_dir, overwrite=overwrite, steps=4, alpha_255=4, seed=seed
    )
    trainer = quiet_trainer(
        run_dir, max_epochs=1, callbacks=[KillBeforeBatch()] if kill_before_batch is not None else []
    )
    trainer.fit(model, data)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("output_dir")
    parser.add_argument("run_dir")
    parser.add_argument("--kill-before-batch", type=int, default=None)
    args = parser.parse_args()
    protect(args.root, args.output_dir, args.run_dir, kill_before_batch=args.kill_before_batch)
