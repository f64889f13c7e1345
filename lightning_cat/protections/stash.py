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

An :class:`OptimizerStateStash` does the same for a surrogate's optimizer states between its
steps (``optimizer_state_stash``): they are only needed inside ``optimizer.step()``, so the
forward and backward passes run without them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lightning_cat.options import choices

__all__ = ["STASH_LOCATIONS", "OptimizerStateStash", "StashLocation", "WeightStash"]

StashLocation = Literal["device", "cpu", "disk"]
STASH_LOCATIONS = choices(StashLocation)


class _Stash:
    """A stash ``location`` and, for ``disk``, its temporary folder (made on first use, removed by
    :meth:`close`)."""

    _prefix = "lightning-cat-stash-"

    def __init__(self, location: StashLocation, directory: str | Path | None = None) -> None:
        if location not in STASH_LOCATIONS:
            raise ValueError(f"stash location must be one of {list(STASH_LOCATIONS)}, got {location!r}")
        self.location = location
        self._directory = directory
        self._folder: Path | None = None

    def _file(self, name: str) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix=self._prefix, dir=self._directory))
        return self._folder / name

    def close(self) -> None:
        """Free the stash (removes the ``disk`` stash's folder)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WeightStash(_Stash):
    """One saved copy of ``modules``' state dicts, at ``location``; reusable across saves.

    Args:
        location: ``device``, ``cpu`` or ``disk``.
        directory: parent folder of the ``disk`` stash's temporary folder (default: the system's).
    """

    def __init__(self, location: StashLocation = "cpu", directory: str | Path | None = None) -> None:
        super().__init__(location, directory)
        self._saved: dict[str, dict[str, torch.Tensor]] = {}

    def save(self, modules: dict[str, torch.nn.Module]) -> None:
        """Copy the current state of ``modules`` into the stash (replacing what it held)."""
        if self.location == "disk":
            from safetensors.torch import save_file

            for name, module in modules.items():
                state = {key: value.detach().to("cpu").contiguous() for key, value in module.state_dict().items()}
                save_file(state, self._file(f"{name}.safetensors"))
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
        self._saved.clear()
        super().close()


def _is_state_tensor(value) -> bool:
    """Whether an optimizer state entry moves: tensors, not scalars (step counts stay where the
    optimizer keeps them, e.g. torch's fused AdamW on the parameters' device)."""
    return isinstance(value, torch.Tensor) and value.dim() > 0


def _move_states(optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter], to_host: bool) -> None:
    """Move the state tensors of ``parameters`` to host memory or back to each parameter's device."""
    for parameter in parameters:
        state = optimizer.state.get(parameter, {})
        for key, value in state.items():
            if _is_state_tensor(value):
                state[key] = value.to("cpu" if to_host else parameter.device)


class OptimizerStateStash(_Stash):
    """Moves an optimizer's per-parameter state tensors out between its steps and back before them.

    ``put(optimizer, parameters)`` after the step that updated ``parameters`` (their state tensors
    leave the device; scalar step counts stay), ``take(optimizer, parameters)`` before the next one
    (they come back, bit for bit, on the parameters' device). ``device`` keeps them in place (no copies); ``cpu`` holds them in host
    memory (on a CPU-only machine the same as ``device``); ``disk`` writes each set to a temporary
    file, tensor by tensor, so no second copy of a set is ever in memory.

    Args:
        location: ``device``, ``cpu`` or ``disk``.
        directory: parent folder of the ``disk`` stash's temporary folder (default: the system's).
    """

    _prefix = "lightning-cat-optimizer-"

    def __init__(self, location: StashLocation = "device", directory: str | Path | None = None) -> None:
        super().__init__(location, directory)
        # set index -> [(parameter, key, dtype, shape)] of the tensors written to that set's file
        self._on_disk: dict[int, list[tuple[torch.nn.Parameter, str, torch.dtype, torch.Size]]] = {}
        self._sets: list[list[torch.nn.Parameter]] = []

    def _set_index(self, parameters: list[torch.nn.Parameter]) -> int:
        for index, known in enumerate(self._sets):
            if len(known) == len(parameters) and all(a is b for a, b in zip(known, parameters, strict=True)):
                return index
        self._sets.append(parameters)
        return len(self._sets) - 1

    def put(self, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Move the state tensors of ``parameters`` out of ``optimizer.state``."""
        if self.location == "device":
            return
        parameters = list(parameters)
        if self.location == "cpu":
            _move_states(optimizer, parameters, to_host=True)
            return
        index = self._set_index(parameters)
        written = []
        with open(self._file(f"{index}.bin"), "wb") as file:
            for parameter in parameters:
                state = optimizer.state.get(parameter, {})
                for key in [k for k, v in state.items() if _is_state_tensor(v)]:
                    value = state.pop(key)
                    value.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tofile(file)
                    written.append((parameter, key, value.dtype, value.shape))
                    del value
        self._on_disk[index] = written

    @torch.no_grad()
    def take(self, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Bring the state tensors of ``parameters`` back (nothing to do before their first step)."""
        if self.location == "device":
            return
        parameters = list(parameters)
        if self.location == "cpu":
            _move_states(optimizer, parameters, to_host=False)
            return
        index = self._set_index(parameters)
        written = self._on_disk.pop(index, [])
        if not written:
            return
        with open(self._file(f"{index}.bin"), "rb") as file:
            for parameter, key, dtype, shape in written:
                size = shape.numel() * torch.empty((), dtype=dtype).element_size()
                data = torch.from_numpy(np.fromfile(file, dtype=np.uint8, count=size))
                optimizer.state[parameter][key] = data.view(dtype).reshape(shape).to(parameter.device)

    def close(self) -> None:
        self._on_disk.clear()
        self._sets.clear()
        super().close()
