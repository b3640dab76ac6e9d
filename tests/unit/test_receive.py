"""Receive: spool + database; rows lost after an acknowledged write are recovered from the spool."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from gateway.receive import Receiver
from gateway.spool import Spool
from gateway.store import Store


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
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ds, buf.getvalue()


def test_accept_writes_spool_and_records_instance(tmp_path: Path) -> None:
    touched: list[str] = []
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    rx = Receiver(Spool(tmp_path / "spool"), store, touched.append)
    ds, data = _instance()
    assert rx.accept(ds, data, "STORESCU", "AIRCON") == ds.StudyInstanceUID
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
    touched: list[str] = []
    rx = Receiver(spool, store, touched.append)
    assert store.study(ds.StudyInstanceUID) is None
    assert rx.recover_spool() == 1
    assert touched == [ds.StudyInstanceUID]
    assert ds.SOPInstanceUID in store.known_instances()
    assert rx.recover_spool() == 0  # idempotent
