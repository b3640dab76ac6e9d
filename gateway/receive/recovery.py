"""Start-up recovery: files whose database rows were lost to a power cut after the instance was
acknowledged are recorded again. The spool (and the folder of structure sets sent back) is the
durable record; the rows follow it."""

from __future__ import annotations

import dataclasses
import logging
import time

from pydicom import dcmread

from gateway.db.database import Store
from gateway.errors import UidConflict
from gateway.receive.receiver import describe_instance
from gateway.receive.spool import Spool
from gateway.receive.structure_sets import describe_structure_set

log = logging.getLogger(__name__)


def recover_spool(spool: Spool, store: Store) -> int:
    """Record spool files that have no database row; return how many studies they touch (each
    gets a readiness check)."""
    known = store.known_instances()
    studies: set[str] = set()
    for path in spool.root.glob("*/*/*.dcm"):
        if path.stem in known:
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
            rec = describe_instance(ds, str(path), salt=store.patient_salt)
        except Exception as exc:  # keep the file; report, do not crash the start-up
            log.error("spool file %s could not be re-recorded: %s", path.name, exc)
            continue
        try:
            store.record_instance(rec, calling_ae="", called_ae="")
        except UidConflict as exc:  # another study holds its UIDs: never join it
            log.error("spool file %s not re-recorded: %s", path.name, exc)
            continue
        studies.add(rec.study_uid)
    if studies:
        log.warning("re-recorded instances of %d study(ies) from the spool", len(studies))
        now = time.time()
        for uid in sorted(studies):
            store.schedule_check(uid, now)
    return len(studies)


def recover_returned(returned: Spool, store: Store) -> int:
    """Record returned structure-set files that have no database row; return how many."""
    known = store.known_structure_sets()
    n = 0
    for path in returned.root.glob("*/*/*.dcm"):
        if path.stem in known:
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
            rec = describe_structure_set(ds, calling_ae="", path=str(path))
        except Exception as exc:  # keep the file; report, do not crash the start-up
            log.error("returned file %s could not be re-recorded: %s", path.name, exc)
            continue
        size = path.stat().st_size
        rec = dataclasses.replace(rec, size=size, received_at=path.stat().st_mtime)
        # Its row was lost: who sent it is unknown, so it is not compared unless sent again.
        store.record_structure_set(rec, "sender unknown after a restart: send it again")
        n += 1
    if n:
        log.warning("re-recorded %d returned structure set(s) from disk", n)
    return n
