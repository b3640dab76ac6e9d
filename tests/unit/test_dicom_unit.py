"""Pure pieces of the DICOM edge: status classification, the peer allow-list, instance records."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from gateway.config import PeerConfig
from gateway.dicom.scp import allowed_peer, peer_allowed
from gateway.dicom.scu import classify
from gateway.errors import DeliveryRejected, InvalidInput, PeerBusy
from gateway.receive.receiver import describe_instance


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, None),  # success
        (0xB000, None),  # warning: coercion of data elements
        (0xB007, None),
        (0xA700, PeerBusy),  # out of resources
        (0xA7FF, PeerBusy),
        (0x0110, PeerBusy),  # processing failure
        (0xA900, DeliveryRejected),  # dataset does not match SOP class
        (0xC000, DeliveryRejected),  # cannot understand
        (0xC210, DeliveryRejected),
        (0x0122, DeliveryRejected),  # SOP class not supported
    ],
)
def test_classify_status(code: int, expected: type[Exception] | None) -> None:
    assert classify(code) is expected


PEERS = (
    PeerConfig(ae_title="STORESCU"),
    PeerConfig(ae_title="SCANNER", host="10.0.0.5"),
)


def test_peer_allowed_by_ae_title_and_pinned_host() -> None:
    assert peer_allowed(PEERS, "STORESCU", "192.168.1.1")
    assert peer_allowed(PEERS, "STORESCU  ", "127.0.0.1")  # AE titles are space padded
    assert peer_allowed(PEERS, "SCANNER", "10.0.0.5")
    assert not peer_allowed(PEERS, "SCANNER", "10.0.0.6")
    assert not peer_allowed(PEERS, "storescu", "127.0.0.1")  # AE titles are case sensitive
    assert not peer_allowed(PEERS, "ANYONE", "127.0.0.1")
    assert not peer_allowed((), "STORESCU", "127.0.0.1")


def test_peer_that_requires_tls_is_allowed_only_over_tls() -> None:
    peers = (PeerConfig(ae_title="PACS", require_tls=True),)
    assert allowed_peer(peers, "PACS", "10.1.1.1") is None
    assert allowed_peer(peers, "PACS", "10.1.1.1", tls=True) == peers[0]


def mr_dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "123456"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.SeriesDescription = "t2_tse_tra"
    ds.SeriesNumber = "4"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.EchoTime = "101.0"
    ds.FrameOfReferenceUID = "1.2.3.9"
    ds.ImagePositionPatient = ["-100", "-120.5", "30"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0.9", "-0.43589"]
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.Rows = 384
    ds.Columns = 384
    ds.BodyPartExamined = ""
    return ds


def test_describe_instance_keeps_routing_and_geometry_attributes_as_plain_values() -> None:
    rec = describe_instance(mr_dataset(), "/spool/x.dcm")
    assert (rec.study_uid, rec.series_uid, rec.sop_instance_uid) == (
        "1.2.3.4",
        "1.2.3.4.5",
        "1.2.3.4.5.6",
    )
    assert rec.sop_class_uid == MRImageStorage and rec.path == "/spool/x.dcm"
    assert rec.series_attributes == {
        "Modality": "MR",
        "SeriesDescription": "t2_tse_tra",
        "SeriesNumber": 4,
        "ImageType": ["ORIGINAL", "PRIMARY", "M"],
        "EchoTime": 101.0,
        "SOPClassUID": MRImageStorage,
    }
    assert rec.geometry == {
        "FrameOfReferenceUID": "1.2.3.9",
        "ImagePositionPatient": [-100.0, -120.5, 30.0],
        "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 0.9, -0.43589],
        "PixelSpacing": [0.5, 0.5],
        "Rows": 384,
        "Columns": 384,
    }
    assert type(rec.series_attributes["SeriesNumber"]) is int
    assert type(rec.geometry["PixelSpacing"][0]) is float
    everything = repr(rec)
    assert "Doe" not in everything and "123456" not in everything


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    "keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
)
@pytest.mark.parametrize("bad", [None, "../../etc", "1.2.03", "1.2/3"])
def test_describe_instance_refuses_missing_or_invalid_uids(keyword: str, bad: str | None) -> None:
    ds = mr_dataset()
    if bad is None:
        delattr(ds, keyword)
    else:
        setattr(ds, keyword, bad)
    with pytest.raises(InvalidInput, match=keyword):
        describe_instance(ds)
