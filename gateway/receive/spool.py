"""The spool: received instances as durable files, ``<root>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``.

Every path component is a UID checked against the UID grammar, never a raw string from the
network. A write is atomic and durable before it returns: temporary file, fsync, rename, fsync of
the directory. Only then may the Storage SCP answer success.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

from gateway.errors import InvalidInput
from gateway.uids import is_valid_uid

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable storage of received instances under one root directory."""

    def __init__(self, root: Path):
        self.root = root
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        for name, uid in (
            ("StudyInstanceUID", study_uid),
            ("SeriesInstanceUID", series_uid),
            ("SOPInstanceUID", sop_instance_uid),
        ):
            if not is_valid_uid(uid):
                raise InvalidInput(f"{name} is not a valid UID")
        return self.root / study_uid / series_uid / f"{sop_instance_uid}.dcm"

    def write(self, study_uid: str, series_uid: str, sop_instance_uid: str, data: bytes) -> Path:
        """Write ``data`` durably and atomically; return the final path. Raises OSError."""
        path = self.path_for(study_uid, series_uid, sop_instance_uid)
        self._ensure_dir(path.parent)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return path

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        with self._lock:
            created = []
            d = directory
            while not d.exists():
                created.append(d)
                d = d.parent
            directory.mkdir(parents=True, exist_ok=True)
            # Make the new directory entries themselves durable.
            for c in reversed(created):
                _fsync_dir(c.parent)
            self._known_dirs.add(directory)

    def free_mb(self) -> float:
        """Free space on the file system that holds (or will hold) the spool, in MiB."""
        d = self.root
        while not d.exists() and d != d.parent:
            d = d.parent
        return shutil.disk_usage(d).free / 1024**2

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files of writes cut off by a crash (never acknowledged)."""
        n = 0
        for tmp in self.root.glob("*/*/.*.tmp"):
            tmp.unlink(missing_ok=True)
            n += 1
        if n:
            log.warning("removed %d unfinished spool write(s) left by a crash", n)
        return n

    def series_files(self, study_uid: str, series_uid: str) -> list[Path]:
        d = self.root / study_uid / series_uid
        if not (is_valid_uid(study_uid) and is_valid_uid(series_uid)) or not d.is_dir():
            return []
        return sorted(p for p in d.glob("*.dcm") if not p.name.startswith("."))
