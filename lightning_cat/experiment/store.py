"""Stage outputs in a run directory: resumable, fingerprinted, never half-written.

Every stage of an experiment writes into its own folder of the run directory. A stage runs in
``<folder>.partial`` and is renamed into place only after it returned, with a ``.stage.json``
marker holding its fingerprint (a hash of everything that determines its outputs: options, the
content of its config file, the fingerprints of the stages it reads). Re-running skips a stage
whose marker matches, redoes one whose fingerprint changed, and discards leftovers of a stage
that was interrupted, except what lets the same stage resume: its training checkpoints
(``checkpoints/``, with its logs) and image sets with a per-image journal (a protection's finished
images, see :data:`lightning_cat.imageset.JOURNAL`). A finished stage keeps its outputs, not its
checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_cat.atomic import atomic_write_json, replace_dir
from lightning_cat.imageset import JOURNAL

__all__ = ["CHECKPOINTS", "MARKER", "StageResult", "StageStore", "fingerprint", "file_fingerprint"]

MARKER = ".stage.json"
#: Marker of a stage's ``.partial`` folder: the fingerprint of the run that writes it.
STARTED = ".stage-started.json"
#: Folder of a stage's training checkpoints; a re-run of the same stage resumes from them.
CHECKPOINTS = "checkpoints"
#: What an interrupted run of a stage keeps for the one that resumes it.
RESUMABLE = (CHECKPOINTS, "logs", "stage.log", STARTED)


def fingerprint(value: Any) -> str:
    """A short, stable hash of a JSON-serializable value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_fingerprint(path: str | os.PathLike) -> str:
    """Hash of a file's bytes (a config's content, not its path, decides whether a stage reruns)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass
class StageResult:
    """Where a stage's outputs are, whether it was skipped, and what it reported."""

    path: Path
    fingerprint: str
    skipped: bool
    info: dict[str, Any] = field(default_factory=dict)


class StageStore:
    """Runs stages into folders of ``run_dir`` with completion markers.

    Args:
        run_dir: the experiment's run directory.
        overwrite: redo every stage even when its marker matches.
    """

    def __init__(self, run_dir: str | os.PathLike, overwrite: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.overwrite = overwrite

    def path(self, *key: str) -> Path:
        return self.run_dir.joinpath(*key)

    def marker(self, *key: str) -> dict[str, Any] | None:
        """The completion marker of a stage, or ``None`` when it has not finished."""
        path = self.path(*key) / MARKER
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def is_complete(self, key: tuple[str, ...], stage_fingerprint: str) -> bool:
        marker = self.marker(*key)
        return marker is not None and marker.get("fingerprint") == stage_fingerprint

    def run(
        self,
        key: tuple[str, ...],
        stage_fingerprint: str,
        work: Callable[[Path], dict[str, Any] | None],
    ) -> StageResult:
        """Run ``work(folder)`` unless the stage already finished with this fingerprint.

        ``work`` writes its outputs into the folder it is given (a ``.partial`` sibling of the
        final one) and may return a JSON-serializable dict kept in the marker.
        """
        final = self.path(*key)
        if not self.overwrite and self.is_complete(key, stage_fingerprint):
            return StageResult(final, stage_fingerprint, skipped=True, info=self.marker(*key).get("info", {}))
        partial = final.with_name(final.name + ".partial")
        self._prepare(partial, stage_fingerprint)
        started = time.time()
        info = work(partial) or {}
        shutil.rmtree(partial / CHECKPOINTS, ignore_errors=True)  # the outputs are the result
        (partial / STARTED).unlink()
        atomic_write_json(
            partial / MARKER,
            {"fingerprint": stage_fingerprint, "seconds": round(time.time() - started, 3), "info": info},
        )
        replace_dir(partial, final)
        return StageResult(final, stage_fingerprint, skipped=False, info=info)

    def _prepare(self, partial: Path, stage_fingerprint: str) -> None:
        """An empty ``partial`` folder, or, when an interrupted run of the same stage left checkpoints
        or journaled images there, the folder with only those (and the logs) kept: the run resumes.
        The stage itself still checks what it resumes (checkpoint keys, each image's identity)."""
        started = partial / STARTED
        same = (
            not self.overwrite
            and started.is_file()
            and json.loads(started.read_text()).get("fingerprint") == stage_fingerprint
            and any(_resumable(entry) for entry in partial.iterdir())
        )
        if not same:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        for entry in partial.iterdir():
            if entry.name in RESUMABLE or _resumable(entry):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        atomic_write_json(started, {"fingerprint": stage_fingerprint})


def _resumable(entry: Path) -> bool:
    """Whether a leftover of an interrupted stage lets its re-run resume (checkpoints, journaled images)."""
    if not entry.is_dir() or entry.is_symlink():
        return False
    return entry.name == CHECKPOINTS or (entry / JOURNAL).is_dir()
