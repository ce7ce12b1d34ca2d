"""Atomic file writes: write a temporary file next to the target, flush it to disk, rename it over the target.

A reader (or a job resumed after kill -9) sees either the old file or the new one, never a half-written one.
:func:`check_output_path` says, before any work starts, whether an output file or directory can be written at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """The one atomic writer: ``write(tmp)`` writes the whole file at a temporary path next to ``path`` (any writer
    that takes a path: ``torch.save(obj, tmp)``, ``ase.io.write(tmp, frames, format=...)``), which is then flushed
    to disk and renamed over ``path``. The temporary file is removed when the write or the rename fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no stray temporary file when the write or the rename fails
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def atomic_append(path: str | Path, text: str) -> None:
    """Append ``text``: old content + text written to a temporary file renamed over ``path``."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    atomic_write_bytes(path, old + text.encode())


def _can_create_in(directory: Path) -> bool:
    """Whether a file can be created in the existing ``directory`` (a probe file, removed at once: permission bits
    alone do not tell for root, read-only mounts or sysfs)."""
    import tempfile

    if not os.access(directory, os.W_OK | os.X_OK):
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".limace-probe-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def check_output_path(path: str | Path, what: str = "output", directory: bool = False) -> Path:
    """Raise :class:`limace.core.errors.LimaceInputError` (one line naming ``what`` and the path) unless ``path`` can be
    written: an output ``directory`` (``directory=True``, created later if missing) or an output file (written
    atomically, so its directory must take new files). Nothing is created; call it before any work starts.
    """
    from limace.core.errors import LimaceInputError

    path = Path(path).expanduser()
    label = f"{what} {path}"
    if path.exists() or path.is_symlink():
        if directory and not path.is_dir():
            raise LimaceInputError(f"{label}: is a file, not a directory")
        if not directory and path.is_dir():
            raise LimaceInputError(f"{label}: is a directory, not a file")
        if not directory and not path.is_file():
            raise LimaceInputError(f"{label}: is not a regular file")
        where = path if directory else path.parent
        if not _can_create_in(where.resolve()):
            raise LimaceInputError(f"{label}: {where} is not writable")
        return path
    # the nearest existing ancestor: a file there means the path can never be made; else it must take new files
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise LimaceInputError(f"{label}: {parent} is a file, not a directory")
    if not _can_create_in(parent):
        raise LimaceInputError(f"{label}: cannot create it, {parent} is not writable")
    return path
