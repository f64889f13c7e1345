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

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "check_output_dir",
    "check_writable",
    "replace_dir",
    "staged_dir",
    "staging_dir",
]


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


def check_writable(directory: str | os.PathLike, *, owner: str = "output_dir") -> Path:
    """Check that files can be created in ``directory`` (or, if it does not exist yet, in the
    nearest existing folder above it) by creating and removing a probe file; call it before any
    expensive work. Nothing is left behind and no folder is created.

    Raises:
        FileExistsError: if ``directory`` or a folder above it is a file.
        PermissionError: if no file can be created there, naming the folder.
    """
    target = Path(directory).expanduser()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == target else f"lies under the file '{existing}'"
        raise FileExistsError(f"{owner} '{target}' {where}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        where = "" if existing == target else f" (it does not exist and cannot be created in '{existing}')"
        raise PermissionError(
            f"{owner} '{target}' is not writable{where}: {error.strerror or error}; "
            "make it writable or choose another folder"
        ) from None
    return target


def check_output_dir(directory: str | os.PathLike, overwrite: bool = False, *, owner: str = "output_dir") -> Path:
    """Refuse an existing, non-empty ``directory`` unless ``overwrite``, or one that cannot be
    written (:func:`check_writable`: it, and the folder its replacement is staged in); call before
    training.

    Raises:
        FileExistsError: naming the folder.
        PermissionError: naming the folder.
    """
    target = Path(directory).expanduser()
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{owner} '{target}' is a file")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{owner} '{target}' already exists and is not empty; choose another folder or overwrite")
    if target.exists():  # the new folder is staged beside it and renamed onto it
        check_writable(target.parent, owner=f"the folder of {owner}")
    return check_writable(target, owner=owner)


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
