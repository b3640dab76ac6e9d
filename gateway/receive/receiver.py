"""Receive: one instance from the network -> the spool (durable) -> the database.

Called by the Storage SCP (``gateway.dicom.scp``) for every C-STORE. It validates the UIDs,
admits the instance against the study limits and the UIDs already recorded
(:mod:`gateway.receive.admission`, from memory), writes the bytes as received, and returns. Its
row is written behind the acknowledgement by the instance writer (:mod:`gateway.receive.writer`)
once :meth:`Receiver.start` started it, else before returning. It never waits for inference.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian

from gateway.config import LimitsConfig, StorageConfig
from gateway.db.database import Store
from gateway.db.reception import Received
from gateway.db.records import InstanceRecord
from gateway.errors import InvalidInput, OutOfResources, UidConflict
from gateway.failpoints import CrashPoints
from gateway.multiframe import describe_frames
from gateway.receive.admission import Admission
from gateway.receive.checks import check_dataset, check_encoding
from gateway.receive.spool import Spool
from gateway.receive.structure_sets import RT_STRUCTURE_SET_STORAGE, describe_structure_set
from gateway.receive.writer import Ended, InstanceWriter
from gateway.uids import is_valid_uid

log = logging.getLogger(__name__)

# Values larger than this stay in the file when a received file is read (accept_file): the
# pixel data, never the functional groups (sequences are read whole). A deflated file is
# inflated in memory whatever this says.
DEFER_BYTES = 1 << 20

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


def key_of(patient_id: str, issuer: str, salt: str) -> str:
    """A salted hash (HMAC-SHA-256, hex) of a PatientID and its IssuerOfPatientID ("" when
    none): equal for the same patient under one installation's salt, and never the clear
    value. The one definition: reception and the console's patient search both use it."""
    who = f"{patient_id}\x00{issuer}"
    return hmac.new(salt.encode(), who.encode(), hashlib.sha256).hexdigest()


def patient_key(ds: Dataset, salt: str) -> str:
    """:func:`key_of` a dataset's PatientID and IssuerOfPatientID."""
    patient_id, issuer = (str(_get(ds, kw) or "") for kw in ("PatientID", "IssuerOfPatientID"))
    return key_of(patient_id, issuer, salt)


def search_key(patient_id: str, issuer: str, salt: str) -> str:
    """The key of a patient typed by an operator ("" for an empty ID): surrounding spaces are
    ignored, as DICOM pads values with them; values longer than DICOM's 64 characters are cut."""
    patient_id, issuer = patient_id.strip()[:64], issuer.strip()[:64]
    return key_of(patient_id, issuer, salt) if patient_id else ""


def studies_of_patient(store: Store, patient_id: str, issuer: str = "") -> list[str]:
    """The studies received for a patient typed by an operator: exact match on PatientID (and
    IssuerOfPatientID, if given) through the salted key, never stored or logged in clear."""
    key = search_key(patient_id, issuer, store.patient_salt)
    return store.studies_for_patient_key(key) if key else []


def _geometry(ds: Dataset) -> dict[str, Any]:
    geometry = {k: v for k in GEOMETRY_KEYWORDS if (v := _get(ds, k)) is not None}
    frames = describe_frames(ds)
    if frames is not None:
        geometry["Frames"] = frames
    return geometry


def describe_instance(ds: Dataset, path: str = "", *, salt: str = "") -> InstanceRecord:
    """Pick the UIDs, series attributes and geometry of a received dataset, and its
    :func:`patient_key` under ``salt`` (none without a salt).

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
        geometry=_geometry(ds),
        patient_key=patient_key(ds, salt) if salt else "",
    )


class Receiver:
    """Turns received instances into spool files and database rows."""

    def __init__(
        self,
        spool: Spool,
        store: Store,
        limits: LimitsConfig | None = None,
        storage: StorageConfig | None = None,
        crash: CrashPoints | None = None,
        returned: Spool | None = None,
        qa_peers: tuple[str, ...] = (),
    ):
        self.spool = spool
        # Structure sets sent to us (approved ones coming back) live apart from the images.
        self.returned = returned or Spool(spool.root.parent / "returned")
        self.qa_peers = qa_peers
        self.store = store
        self.limits = limits or LimitsConfig()
        self.storage = storage or StorageConfig()
        self.crash = crash or CrashPoints()
        self.admission = Admission(store, self.limits)
        self.writer = InstanceWriter(store)

    def start(self) -> None:
        """Write rows behind the acknowledgement from now on (the Storage SCP's mode)."""
        self.writer.start()

    def stop(self) -> None:
        """Write every queued row, then record inline again."""
        self.writer.stop()

    def accept(
        self,
        ds: Dataset,
        encoded: bytes,
        calling_ae: str,
        called_ae: str,
        *,
        sop_class_uid: str | None = None,
        transfer_syntax: str = "1.2.840.10008.1.2.1",
        opens: Callable[[str], bool] = lambda study_uid: False,
    ) -> InstanceRecord:
        """Store one instance durably and record it; return its record.

        Raises InvalidInput (unusable: 0xC210), DatasetMismatch (0xA900), UidConflict (a UID
        recorded for another study or series: 0xC211), OutOfResources (disk guard or study
        limits: 0xA700) or OSError / SQLAlchemyError (also 0xA700).
        ``opens(study_uid)`` says whether this is the association's first instance of the study
        (the study then counts as being sent until the association ends).
        """
        check_encoding(ds)
        rec = self._described(ds, sop_class_uid, transfer_syntax)
        if rec.sop_class_uid == RT_STRUCTURE_SET_STORAGE:
            self._accept_structure_set(ds, encoded, calling_ae)
            return rec
        uids = (rec.study_uid, rec.series_uid, rec.sop_instance_uid)
        put = functools.partial(self.spool.write, *uids, encoded)
        return self._keep(rec, len(encoded), put, calling_ae, called_ae, opens)

    def accept_file(
        self,
        path: Path,
        calling_ae: str,
        called_ae: str,
        *,
        sop_class_uid: str | None = None,
        transfer_syntax: str = "1.2.840.10008.1.2.1",
        opens: Callable[[str], bool] = lambda study_uid: False,
    ) -> InstanceRecord:
        """:meth:`accept` for an instance received into the complete Part 10 file ``path`` on
        the spool's file system (``Spool.incoming``): the same checks, statuses and record, its
        large values (the pixel data) checked where they lie in the file, never loaded; the
        spool takes the file by rename. On a refusal the file stays where it was."""
        deflated = transfer_syntax == DeflatedExplicitVRLittleEndian
        ds = dcmread(path, defer_size=None if deflated else DEFER_BYTES)
        size = path.stat().st_size
        check_encoding(ds, size)
        rec = self._described(ds, sop_class_uid, transfer_syntax)
        if rec.sop_class_uid == RT_STRUCTURE_SET_STORAGE:  # kept apart, maybe elsewhere: copied
            self._accept_structure_set(ds, path.read_bytes(), calling_ae)
            return rec
        uids = (rec.study_uid, rec.series_uid, rec.sop_instance_uid)
        put = functools.partial(self.spool.adopt, *uids, path)
        return self._keep(rec, size, put, calling_ae, called_ae, opens)

    def _described(
        self, ds: Dataset, sop_class_uid: str | None, transfer_syntax: str
    ) -> InstanceRecord:
        rec = describe_instance(ds, salt=self.store.patient_salt)
        check_dataset(ds, sop_class_uid or rec.sop_class_uid, transfer_syntax)
        return rec

    def _keep(
        self,
        rec: InstanceRecord,
        size: int,
        put: Callable[[], Path],
        calling_ae: str,
        called_ae: str,
        opens: Callable[[str], bool],
    ) -> InstanceRecord:
        """Admit an instance, have ``put()`` make it a durable spool file, record it."""
        self._check_space()
        if self.writer.failing:
            raise OutOfResources(
                "the database takes no instance rows now (they are held and retried): "
                "send again later"
            )
        ticket = self.admission.admit(rec, size, opens(rec.study_uid))
        try:
            path = put()
            rec = dataclasses.replace(rec, path=str(path), size=size)
            item = Received(rec, calling_ae, called_ae, time.time(), ticket.opened)
            if not self.writer.running:
                self.writer.write_one(item, raising=True)
            else:
                if ticket.opened:
                    # Before the acknowledgement: from now on a study check sees the study as
                    # being sent, whatever rows are still queued (once per association).
                    self.store.open_reception(item)
                    item = dataclasses.replace(item, opens_association=False)
                self.writer.submit(item)  # the spool file is durable: the row may follow
        except BaseException as exc:
            self.admission.release(ticket)
            if isinstance(exc, UidConflict):
                # Refused in the recording transaction: nothing of it is recorded. Its spool
                # path (study/series/instance) is its own: removing it touches no other study.
                path.unlink(missing_ok=True)
            raise
        self.crash.hit("receive.before_ack")
        return rec

    def _accept_structure_set(self, ds: Dataset, encoded: bytes, calling_ae: str) -> None:
        """Keep an RTSTRUCT durably for the QA loop (``gateway.qa``); from a peer that is not
        a ``qa.peers`` sender it is kept and listed as unpaired, with that reason. A resend of
        one already taken (being compared, compared, superseded), or any resend from a peer
        that is not a QA sender, changes nothing: the file stays what was compared."""
        from gateway.db.records import StructureSetState

        rec = describe_structure_set(ds, calling_ae)
        peer = calling_ae in self.qa_peers
        known = self.store.structure_set(rec.sop_instance_uid)
        open_states = (StructureSetState.PENDING, StructureSetState.UNPAIRED)
        if known is not None and (known.state not in open_states or not peer):
            self._audit(
                "qa",
                "received again",
                calling_ae=calling_ae,
                study_uid=rec.study_uid,
                series_uid=rec.series_uid,
                instances=1,
                detail=f"structure set {rec.sop_instance_uid} ({known.state.value}): kept as is",
            )
            return
        self._check_space(self.returned)
        path = self.returned.write(rec.study_uid, rec.series_uid, rec.sop_instance_uid, encoded)
        rec = dataclasses.replace(rec, path=str(path), size=len(encoded), received_at=time.time())
        reason = "" if peer else f"sent by {calling_ae!r}, which is not one of qa.peers"
        self.store.record_structure_set(rec, reason)
        self.crash.hit("receive.before_ack")

    def _check_space(self, spool: Spool | None = None) -> None:
        # Measured at most every 0.5 s on the C-STORE path (a statfs per instance shows in
        # the profile); the bytes written since are counted as used meanwhile.
        free_mb = (spool or self.spool).free_mb(max_age_s=0.5)
        if free_mb < self.storage.min_free_mb:
            where = "the spool" if spool is None else "paths.returned"
            raise OutOfResources(
                f"disk guard: {free_mb:.0f} MB free under {where}, below "
                f"storage.min_free_mb {self.storage.min_free_mb:g} MB"
            )

    def _audit(self, event: str, outcome: str, **fields: Any) -> None:
        """One audit row; a failure to write it is logged, never raised into reception."""
        try:
            self.store.audit(event, outcome, **fields)
        except Exception as exc:  # noqa: BLE001 - the audit must not take reception down
            log.error("audit row (%s %s) could not be written: %s", event, outcome, exc)

    def audit_association(self, calling_ae: str, address: str, outcome: str, detail: str) -> None:
        self._audit("association", outcome, calling_ae=calling_ae, address=address, detail=detail)

    def association_ended(
        self,
        calling_ae: str,
        address: str,
        stored: dict[tuple[str, str], int],
        refused: dict[str, int],
        tls: bool,
        clean: bool = True,
        opened: Iterable[str] | None = None,
    ) -> None:
        """Record how an association ended (released, or cut off: its studies may be incomplete)
        and audit what it did: instances stored per series, refusals by reason. ``opened``:
        the studies it counted as sending (default: every study in ``stored``)."""
        how = ("TLS" if tls else "TCP") + ("" if clean else ", association cut off")
        who = {"calling_ae": calling_ae, "address": address}
        studies = sorted({study for study, _ in stored} if opened is None else set(opened))
        if studies and self.writer.running:
            # Recorded behind this association's rows; admission forgets the studies then.
            done = functools.partial(self.admission.ended, studies)
            self.writer.submit(Ended(tuple(studies), clean, time.time(), done))
        elif studies:
            self.admission.ended(studies)
            self.store.association_ended(studies, clean, time.time())
        if studies:
            if not clean:
                log.warning(
                    "association from %r cut off after %d instance(s) of %d study(ies): waiting "
                    "for the sender to resume",
                    calling_ae,
                    sum(stored.values()),
                    len(studies),
                )
        for (study_uid, series_uid), n in sorted(stored.items()):
            self._audit(
                "received",
                "stored",
                **who,
                study_uid=study_uid,
                series_uid=series_uid,
                instances=n,
                detail=how,
            )
        for why, n in sorted(refused.items()):
            self._audit("received", "refused", **who, instances=n, detail=why)
        if not stored and not refused:
            self._audit("association", "no instances", **who, detail=how)
        else:  # one row per association, so that associations can be counted by outcome
            n = sum(stored.values()) + sum(refused.values())
            outcome = "released" if clean else "aborted"
            self._audit("association", outcome, **who, instances=n, detail=how)
