"""Receive: spool + database; rows lost after an acknowledged write are recovered from the spool."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from gateway.config import LimitsConfig, StorageConfig
from gateway.db.database import Store
from gateway.errors import DatasetMismatch, OutOfResources
from gateway.receive.checks import check_dataset
from gateway.receive.receiver import Receiver
from gateway.receive.recovery import recover_spool
from gateway.receive.spool import Spool


def _instance() -> tuple[Dataset, bytes]:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.SeriesDescription = "t2_tse_tra"
    ds.PatientName = "SECRET^NAME"
    ds.ImagePositionPatient = [0, 0, 0]
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 2, 3, 16, 1
    ds.PixelData = bytes(2 * 3 * 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ds, buf.getvalue()


def test_accept_writes_spool_and_records_instance(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    rx = Receiver(Spool(tmp_path / "spool"), store)
    ds, data = _instance()
    assert rx.accept(ds, data, "STORESCU", "AIRCON").study_uid == ds.StudyInstanceUID
    study = store.study(ds.StudyInstanceUID)
    assert study is not None and study.calling_ae == "STORESCU"
    (series,) = study.series
    assert series.attributes["SeriesDescription"] == "t2_tse_tra"
    assert "SECRET" not in str(series.attributes)
    assert Path(series.paths[ds.SOPInstanceUID]).read_bytes() == data


def test_spool_files_without_rows_are_recorded_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    ds, data = _instance()
    spool.write(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, data)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert store.study(ds.StudyInstanceUID) is None
    assert recover_spool(spool, store) == 1
    assert [uid for uid, _ in store.due_checks(now=time.time())] == [ds.StudyInstanceUID]
    assert ds.SOPInstanceUID in store.known_instances()
    assert recover_spool(spool, store) == 0  # idempotent


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda ds: delattr(ds, "PixelData"), "without PixelData"),
        (lambda ds: setattr(ds, "PixelData", bytes(10)), "pixel data is 10 bytes"),
        (lambda ds: (setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535)), "8589672450"),
        (lambda ds: delattr(ds, "BitsAllocated"), "image attributes missing"),
        (lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"), "differs from"),
    ],
)
def test_dataset_that_does_not_match_its_sop_class_is_refused(change, expected) -> None:  # noqa: ANN001
    ds, _ = _instance()
    check_dataset(ds, MRImageStorage, ExplicitVRLittleEndian)  # the good one passes
    change(ds)
    with pytest.raises(DatasetMismatch, match=expected):
        check_dataset(ds, MRImageStorage, ExplicitVRLittleEndian)


def test_encapsulated_pixel_data_is_not_length_checked() -> None:
    ds, _ = _instance()
    ds.PixelData = b"\xfe\xff\x00\xe0" + bytes(4)  # an encapsulated basic offset table
    check_dataset(ds, MRImageStorage, "1.2.840.10008.1.2.4.80")


def test_study_limits_and_disk_guard_refuse_with_out_of_resources(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    spool = Spool(tmp_path / "spool")
    limits = LimitsConfig(max_instances_per_study=2, max_bytes_per_study=10**6)
    rx = Receiver(spool, store, limits=limits, storage=StorageConfig(min_free_mb=0))
    ds, data = _instance()
    for _ in range(2):
        ds.SOPInstanceUID = generate_uid()
        rx.accept(ds, data, "STORESCU", "AIRCON")
    rx.accept(ds, data, "STORESCU", "AIRCON")  # a resend of a stored instance is not new
    ds.SOPInstanceUID = generate_uid()
    with pytest.raises(OutOfResources, match="max_instances_per_study"):
        rx.accept(ds, data, "STORESCU", "AIRCON")
    assert store.study_usage(ds.StudyInstanceUID) == (2, 2 * len(data))

    small = Receiver(spool, store, limits=LimitsConfig(max_bytes_per_study=len(data) * 2))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    small.storage = StorageConfig(min_free_mb=0)
    for n in range(3):
        ds.SOPInstanceUID = generate_uid()
        if n < 2:
            small.accept(ds, data, "STORESCU", "AIRCON")
    with pytest.raises(OutOfResources, match="max_bytes_per_study"):
        small.accept(ds, data, "STORESCU", "AIRCON")

    guarded = Receiver(spool, store, storage=StorageConfig(min_free_mb=1e12))
    ds.SOPInstanceUID = generate_uid()
    with pytest.raises(OutOfResources, match="disk guard"):
        guarded.accept(ds, data, "STORESCU", "AIRCON")
    assert not spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID).exists()


def test_series_record_a_salted_patient_key_never_the_patient_id(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    rx = Receiver(Spool(tmp_path / "spool"), Store(f"sqlite:///{db}"))
    rx.storage = StorageConfig(min_free_mb=0)
    ds, _ = _instance()
    sent = []
    for patient_id, issuer in (("PID-4711", "HOSP-A"), ("PID-4711", "HOSP-A"), ("PID-4711", "")):
        ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID, ds.IssuerOfPatientID = patient_id, issuer
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        sent.append(rx.accept(ds, buf.getvalue(), "STORESCU", "AIRCON").series_uid)
    study = rx.store.study(ds.StudyInstanceUID)
    assert study is not None
    keys = {s.series_uid: s.patient_key for s in study.series}
    assert len(keys[sent[0]]) == 64
    assert keys[sent[0]] == keys[sent[1]] != keys[sent[2]]  # the issuer is part of the identity
    assert b"PID-4711" not in b"".join(p.read_bytes() for p in tmp_path.glob("db.sqlite*"))

    # One salt per installation: kept across restarts, another installation has its own.
    assert Store(f"sqlite:///{db}").patient_salt == rx.store.patient_salt
    assert Store(f"sqlite:///{tmp_path / 'other.sqlite'}").patient_salt != rx.store.patient_salt
