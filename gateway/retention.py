"""Retention: delete studies older than ``storage.retention_days`` whose work is all delivered.

A study qualifies when its last instance arrived before the cut-off, none of its jobs is
waiting, queued, running, delivering or failed (a failed job may still be resent), and every
delivery of its jobs was delivered, and no structure set sent back for it waits to be compared.
A cancelled job and its cancelled deliveries count as done.
Its spool files, RTSTRUCT files (ours and those sent back), contour previews and
instance/series/study rows go; jobs, deliveries, structure-set rows, QA results and the audit
trail stay. Each purge is audited.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.config import StorageConfig
from gateway.db.database import Store

log = logging.getLogger(__name__)

DAY_S = 86400.0


@dataclass(frozen=True)
class PurgeReport:
    studies: int
    files: int


def purge(
    store: Store, storage: StorageConfig, roots: tuple[Path, ...], now: float | None = None
) -> PurgeReport:
    """Purge what retention allows; only files under ``roots`` (spool, output, returned) are
    deleted."""
    now = time.time() if now is None else now
    cutoff = now - storage.retention_days * DAY_S
    resolved = tuple(r.resolve() for r in roots)
    studies = files = 0
    for study_uid in store.purgeable_studies(cutoff):
        paths = store.delete_study(study_uid, cutoff)
        removed = 0
        for p in map(Path, paths):
            target = p.resolve()
            if not any(target.is_relative_to(r) for r in resolved):
                log.error("purge: %s is outside the spool and output folders; kept", p)
                continue
            try:
                target.unlink(missing_ok=True)
                removed += 1
            except OSError as exc:
                log.error("purge: could not delete %s: %s", p.name, exc)
            _remove_empty_parents(target.parent, resolved)
        studies += 1
        files += removed
        store.audit(
            "purge",
            "deleted",
            now=now,
            study_uid=study_uid,
            instances=removed,
            detail=f"older than {storage.retention_days:g} days, delivered",
        )
        log.info("purged study %s (%d files)", study_uid, removed)
    return PurgeReport(studies, files)


def _remove_empty_parents(folder: Path, roots: tuple[Path, ...]) -> None:
    while folder not in roots and any(folder.is_relative_to(r) for r in roots):
        try:
            folder.rmdir()
        except OSError:
            return  # not empty
        folder = folder.parent
