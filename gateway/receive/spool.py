"""The spool: received instances as durable files, ``<root>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``.

Every path component is a UID checked against the UID grammar, never a raw string from the
network. A write is atomic and durable before it returns (:func:`gateway.durable.durable_write`:
temporary file, fdatasync, rename, fsync of the directory). Only then may the Storage SCP answer
success. A large instance arrives as a file in ``<root>/.incoming/`` (written as it is received,
:mod:`gateway.dicom.incoming`) and is taken by :meth:`Spool.adopt`: fdatasync and rename.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from gateway.durable import durable_rename, durable_write, make_dirs
from gateway.errors import InvalidInput
from gateway.uids import is_valid_uid

log = logging.getLogger(__name__)


class Spool:
    """Durable storage of received instances under one root directory."""

    def __init__(self, root: Path):
        self.root = root
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._free = (0.0, 0.0)  # (when measured, MiB free then)
        self._written = 0  # bytes written since

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
        durable_write(path, data)
        with self._lock:  # concurrent associations write at once
            self._written += len(data)
        return path

    @property
    def incoming(self) -> Path:
        """Where large instances are written as they arrive (same file system as the spool)."""
        return self.root / ".incoming"

    def adopt(self, study_uid: str, series_uid: str, sop_instance_uid: str, source: Path) -> Path:
        """Take the complete file ``source`` (under :attr:`incoming`) durably and atomically, by
        rename; return the final path. Raises OSError (``source`` is then left in place)."""
        path = self.path_for(study_uid, series_uid, sop_instance_uid)
        self._ensure_dir(path.parent)
        size = source.stat().st_size
        durable_rename(source, path)
        with self._lock:
            self._written += size
        return path

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        with self._lock:
            make_dirs(directory)
            self._known_dirs.add(directory)

    def free_mb(self, max_age_s: float = 0.0) -> float:
        """Free space on the file system that holds (or will hold) the spool, in MiB. With
        ``max_age_s``, a measurement that recent, less what this spool wrote since, will do."""
        now = time.monotonic()
        measured_at, free = self._free
        if max_age_s and now - measured_at < max_age_s:
            return free - self._written / 1024**2
        d = self.root
        while not d.exists() and d != d.parent:
            d = d.parent
        self._written = 0
        free = shutil.disk_usage(d).free / 1024**2
        self._free = (now, free)
        return free

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files of writes cut off by a crash (never acknowledged), and
        instances that were still arriving (:attr:`incoming`)."""
        n = 0
        for tmp in [*self.root.glob("*/*/.*.tmp"), *self.incoming.glob(".*.part")]:
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
