"""The console's patient search: a typed PatientID finds that patient's studies through the
salted key made at reception, and the typed value is kept nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from gateway.db.database import Store
from gateway.demo.phantom import make_phantom, write_dicom_series
from gateway.receive.receiver import Receiver, key_of, patient_key, studies_of_patient
from gateway.receive.spool import Spool


def test_a_typed_patient_id_finds_that_patient_s_studies_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'aircon.db'}")
    receiver = Receiver(Spool(tmp_path / "spool"), store)
    studies: dict[str, str] = {}
    for seed, pid in ((1, "PAT-ALPHA-17"), (2, "PAT-BRAVO-42")):
        series = write_dicom_series(
            make_phantom(seed, shape=(4, 16, 16)), tmp_path / pid, seed=seed, patient_id=pid
        )
        for f in series.files:
            receiver.accept(dcmread(f), f.read_bytes(), "SCANNER", "AIRCON")
        studies[pid] = series.study_uid

    with caplog.at_level("DEBUG"):
        assert studies_of_patient(store, "PAT-ALPHA-17") == [studies["PAT-ALPHA-17"]]
        assert studies_of_patient(store, " PAT-BRAVO-42 ") == [studies["PAT-BRAVO-42"]]
        assert studies_of_patient(store, "PAT-ALPHA") == []  # exact match only
        assert studies_of_patient(store, "PAT-ALPHA-17", "OTHER-ISSUER") == []
        assert studies_of_patient(store, "") == []
    assert store.studies_for_patient_key("") == []
    assert "PAT-ALPHA" not in caplog.text and "PAT-BRAVO" not in caplog.text
    database = (tmp_path / "aircon.db").read_bytes()
    assert b"PAT-ALPHA" not in database and b"PAT-BRAVO" not in database


def test_one_key_definition_for_datasets_and_typed_values() -> None:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientID, ds.IssuerOfPatientID = "12345", "HOSP-A"
    assert patient_key(ds, "salt") == key_of("12345", "HOSP-A", "salt")
    del ds.IssuerOfPatientID
    assert patient_key(ds, "salt") == key_of("12345", "", "salt")
    assert key_of("12345", "", "salt") != key_of("12345", "", "other salt")
