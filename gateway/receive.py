"""Receive: one instance from the network -> the spool (durable) -> the database.

Called by the Storage SCP (``gateway.dicom.scp``) for every C-STORE. It validates the UIDs,
writes the bytes as received, records the instance, and returns. It never waits for inference.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway.errors import InvalidInput
from gateway.spool import Spool
from gateway.store import InstanceRecord, Store
from gateway.uids import is_valid_uid

log = logging.getLogger(__name__)

# Series-level attributes kept for routing and series selection (no patient data).
SERIES_KEYWORDS = (
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "BodyPartExamined",
    "ProtocolName",
    "ImageType",
    "SequenceName",
    "ScanningSequence",
    "EchoTime",
    "RepetitionTime",
    "SliceThickness",
    "MagneticFieldStrength",
    "Manufacturer",
    "ManufacturerModelName",
    "SOPClassUID",
)
GEOMETRY_KEYWORDS = (
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "InstanceNumber",
    "NumberOfFrames",
)


def _plain(value: Any) -> Any:
    """A JSON-safe copy of a pydicom value (DS -> float, IS -> int, UI -> str)."""
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return str(value)


def _get(ds: Dataset, keyword: str) -> Any:
    try:
        elem = ds.get(keyword)
    except Exception:  # a malformed element must not take the handler down
        return None
    if elem is None or elem == "":
        return None
    return _plain(elem)


def describe_instance(ds: Dataset, path: str = "") -> InstanceRecord:
    """Pick the UIDs, series attributes and geometry of a received dataset.

    Raises InvalidInput when a required UID is missing or not a valid UID.
    """
    uids = {}
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = _get(ds, kw)
        if not is_valid_uid(value):
            raise InvalidInput(f"{kw} is missing or not a valid UID")
        uids[kw] = value
    return InstanceRecord(
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        path=path,
        series_attributes={k: v for k in SERIES_KEYWORDS if (v := _get(ds, k)) is not None},
        geometry={k: v for k in GEOMETRY_KEYWORDS if (v := _get(ds, k)) is not None},
    )


class Receiver:
    """Turns received instances into spool files and database rows."""

    def __init__(self, spool: Spool, store: Store, on_study: Callable[[str], None]):
        self.spool = spool
        self.store = store
        self.on_study = on_study  # called with a Study UID when its instances may be complete

    def accept(self, ds: Dataset, encoded: bytes, calling_ae: str, called_ae: str) -> str:
        """Store one instance durably and record it; return its Study UID.

        Raises InvalidInput (the data is unusable: answer a failure status) or OSError /
        SQLAlchemyError (out of resources: answer 0xA700).
        """
        rec = describe_instance(ds)
        path = self.spool.write(rec.study_uid, rec.series_uid, rec.sop_instance_uid, encoded)
        rec = dataclasses.replace(rec, path=str(path))
        self.store.record_instance(rec, calling_ae=calling_ae, called_ae=called_ae)
        return rec.study_uid

    def recover_spool(self) -> int:
        """Record spool files that have no database row (rows lost to a power cut after the
        instance was acknowledged); return how many. The spool is the durable record."""
        from pydicom import dcmread

        known = self.store.known_instances()
        studies: set[str] = set()
        for path in self.spool.root.glob("*/*/*.dcm"):
            if path.stem in known:
                continue
            try:
                rec = describe_instance(dcmread(path, stop_before_pixels=True), str(path))
            except Exception as exc:  # keep the file; report, do not crash the start-up
                log.error("spool file %s could not be re-recorded: %s", path.name, exc)
                continue
            self.store.record_instance(rec, calling_ae="", called_ae="")
            studies.add(rec.study_uid)
        if studies:
            log.warning("re-recorded instances of %d study(ies) from the spool", len(studies))
            self.studies_complete(studies)
        return len(studies)

    def studies_complete(self, study_uids: set[str]) -> None:
        """An association ended: its studies may be complete once quiet."""
        for uid in sorted(study_uids):
            self.on_study(uid)
