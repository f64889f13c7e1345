"""Where ASPL keeps theta's weights while theta' trains in the same modules, and MetaCloak its pool.

ASPL needs theta's weights back after each round's theta' phase, but never both sets at once on
the device: theta' is theta plus a few steps; MetaCloak loads one snapshot of its pool at a time.
A :class:`WeightStash` holds one copy of the trained modules' state

* ``device``: beside the modules (fastest; as much memory as a second model),
* ``cpu``: in host memory (on a GPU, the device then holds one model),
* ``disk``: in a temporary safetensors file (when host memory is short, and on CPU-only machines,
  where ``cpu`` saves nothing),

and :meth:`WeightStash.restore` copies it back into the modules' existing storage, tensor by
tensor, so no second set of weights is allocated there. Copies are exact: a round trip through any
location gives bit-identical weights.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch

from lightning_cat.options import choices

__all__ = ["STASH_LOCATIONS", "StashLocation", "WeightStash"]

StashLocation = Literal["device", "cpu", "disk"]
STASH_LOCATIONS = choices(StashLocation)


class WeightStash:
    """One saved copy of ``modules``' state dicts, at ``location``; reusable across saves.

    Args:
        location: ``device``, ``cpu`` or ``disk``.
        directory: parent folder of the ``disk`` stash's temporary folder (default: the system's).
    """

    def __init__(self, location: StashLocation = "cpu", directory: str | Path | None = None) -> None:
        if location not in STASH_LOCATIONS:
            raise ValueError(f"stash location must be one of {list(STASH_LOCATIONS)}, got {location!r}")
        self.location = location
        self._directory = directory
        self._folder: Path | None = None
        self._saved: dict[str, dict[str, torch.Tensor]] = {}

    def save(self, modules: dict[str, torch.nn.Module]) -> None:
        """Copy the current state of ``modules`` into the stash (replacing what it held)."""
        if self.location == "disk":
            from safetensors.torch import save_file

            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="lightning-cat-stash-", dir=self._directory))
            for name, module in modules.items():
                state = {key: value.detach().to("cpu").contiguous() for key, value in module.state_dict().items()}
                save_file(state, self._folder / f"{name}.safetensors")
            return
        for name, module in modules.items():
            target = self._saved.get(name)
            if target is None:
                device = None if self.location == "device" else "cpu"
                self._saved[name] = {
                    key: value.detach().to(device or value.device, copy=True)
                    for key, value in module.state_dict().items()
                }
            else:  # reuse the buffers of the previous save
                for key, value in module.state_dict().items():
                    target[key].copy_(value.detach())

    @torch.no_grad()
    def restore(self, modules: dict[str, torch.nn.Module]) -> None:
        """Copy the stashed state back into ``modules``' existing tensors."""
        for name, module in modules.items():
            state = module.state_dict()
            if self.location == "disk":
                from safetensors import safe_open

                if self._folder is None:
                    raise RuntimeError("restore() before save()")
                with safe_open(str(self._folder / f"{name}.safetensors"), framework="pt", device="cpu") as file:
                    for key in file.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        state[key].copy_(file.get_tensor(key))
            else:
                if name not in self._saved:
                    raise RuntimeError("restore() before save()")
                for key, value in self._saved[name].items():
                    state[key].copy_(value)

    def close(self) -> None:
        """Free the stash (removes the ``disk`` stash's folder)."""
        self._saved.clear()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> WeightStash:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
