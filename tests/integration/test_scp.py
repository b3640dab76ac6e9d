"""The Storage SCP in-process with a real SCU: statuses a sending node sees."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from gateway.config import DestinationConfig, PeerConfig
from gateway.dicom.scp import StorageSCP
from gateway.dicom.scu import store
from gateway.errors import DeliveryRejected, PeerBusy, PeerUnavailable
from gateway.receive import Receiver
from gateway.spool import Spool
from gateway.store import Store


def _mr(sop_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.fixture
def scp_factory(tmp_path: Path) -> Iterator:
    servers: list[StorageSCP] = []

    def make(spool_root: Path) -> tuple[StorageSCP, list[str]]:
        touched: list[str] = []
        rx = Receiver(
            Spool(spool_root), Store(f"sqlite:///{tmp_path / 'db.sqlite'}"), touched.append
        )
        scp = StorageSCP("AIRCON", "127.0.0.1", 0, [PeerConfig(ae_title="SENDER")], rx)
        scp.start()
        servers.append(scp)
        return scp, touched

    yield make
    for s in servers:
        s.stop()


def _dest(scp: StorageSCP) -> DestinationConfig:
    return DestinationConfig(ae_title="AIRCON", host="127.0.0.1", port=scp.port)


def test_store_success_is_durable_before_the_response(scp_factory, tmp_path: Path) -> None:
    scp, touched = scp_factory(tmp_path / "spool")
    ds = _mr()
    assert store(_dest(scp), "SENDER", [ds]) == [0x0000]
    files = list((tmp_path / "spool").rglob("*.dcm"))
    assert [f.name for f in files] == [f"{ds.SOPInstanceUID}.dcm"]
    assert set(touched) == {ds.StudyInstanceUID}  # a readiness check was scheduled


def test_failed_spool_write_answers_out_of_resources(scp_factory, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # the spool root is a file: every write fails with OSError
    scp, touched = scp_factory(blocker)
    with pytest.raises(PeerBusy, match="0xA700"):
        store(_dest(scp), "SENDER", [_mr()])
    assert touched == []


def test_uid_with_path_separator_is_refused(scp_factory, tmp_path: Path) -> None:
    scp, _ = scp_factory(tmp_path / "spool")
    ds = _mr()
    ds.StudyInstanceUID = "1.2.3/../../etc"
    with pytest.raises(DeliveryRejected, match="0xC210"):
        store(_dest(scp), "SENDER", [ds])
    assert not list(tmp_path.rglob("etc*"))


def test_unknown_calling_ae_is_rejected_at_association(scp_factory, tmp_path: Path) -> None:
    scp, _ = scp_factory(tmp_path / "spool")
    with pytest.raises(PeerUnavailable, match="rejected"):
        store(_dest(scp), "STRANGER", [_mr()])
    assert not (tmp_path / "spool").exists() or not list((tmp_path / "spool").rglob("*.dcm"))
