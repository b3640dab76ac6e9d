"""Durable, atomic file writes: what the spool and the RTSTRUCT output rely on.

A file written here is complete or absent, never partial, and survives a power cut once the call
returns: temporary file beside the target, fdatasync, rename over the target, fsync of the
directory (the rename itself is a directory entry). Pure file-system code, no DICOM: the builders
and the receiving side both use it without depending on each other.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each new entry made durable."""
    created = []
    d = directory
    while not d.exists():
        created.append(d)
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    for c in reversed(created):
        fsync_dir(c.parent)


def durable_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably; the directory must exist.

    The temporary file is ``.<name>.<random>.tmp`` beside ``path`` (unique across threads and
    processes); a crash may leave one behind, never a partial ``path``. Raises OSError, leaving
    no temporary file and any previous ``path`` as it was.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def durable_rename(source: Path, path: Path) -> None:
    """Move the complete file ``source`` to ``path`` (same file system) atomically and durably:
    fdatasync of its data, rename over ``path``, fsync of the directory. Raises OSError,
    leaving ``source`` where it was and any previous ``path`` as it was."""
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(source, path)
    fsync_dir(path.parent)
