"""Outputs are whole or absent: files through a temporary file and a rename, folders staged beside
their final place and renamed into it.

A reader never sees a half-written file or folder: a crash leaves the previous version (or
nothing) plus a hidden leftover that the next writer ignores. Results get the mode the umask
gives, not ``mkstemp``'s private 0600 / 0700.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "check_output_dir", "replace_dir", "staged_dir", "staging_dir"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the group
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def staging_dir(target: str | os.PathLike) -> Path:
    """A new hidden folder beside ``target`` with a normal folder's mode, to be renamed onto it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o777 & ~_umask())
    return staging


def replace_dir(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename the finished folder ``staging`` to ``target``; an existing ``target`` is moved aside
    first and deleted after, so ``target`` is always either the old or the new folder."""
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.rename(staging, target)
        return target
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.rename(target, aside / target.name)
    os.rename(staging, target)
    shutil.rmtree(aside, ignore_errors=True)
    return target


def check_output_dir(directory: str | os.PathLike, overwrite: bool = False, *, owner: str = "output_dir") -> Path:
    """Refuse an existing, non-empty ``directory`` unless ``overwrite`` (call before training).

    Raises:
        FileExistsError: naming the folder.
    """
    target = Path(directory).expanduser()
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{owner} '{target}' is a file")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{owner} '{target}' already exists and is not empty; choose another folder or overwrite")
    return target


@contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder for ``target``; when the block finishes it replaces ``target``
    (:func:`replace_dir`), when it raises it is removed and ``target`` is left as it was."""
    staging = staging_dir(target)
    try:
        yield staging
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
