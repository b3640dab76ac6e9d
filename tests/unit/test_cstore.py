"""Sending the encoded bytes: what a real pynetdicom receiver gets is what lies in the file.

The receiver below records the raw dataset bytes of each C-STORE (``event.request.DataSet``,
never decoded) and the transfer syntax of the context it came in.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    RTStructureSetStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode, split_dataset

from gateway.config import DestinationConfig
from gateway.demo.launcher import free_port
from gateway.dicom import cstore
from gateway.dicom.scu import store
from gateway.errors import DeliveryRejected


@dataclass
class Received:
    raw: list[bytes] = field(default_factory=list)
    syntaxes: list[str] = field(default_factory=list)
    hold: dict[int, float] = field(default_factory=dict)  # n-th store (1-based) -> delay


@dataclass
class Receiver:
    port: int
    got: Received


def _scp(syntaxes: list[str], got: Received) -> Iterator[Receiver]:
    ae = AE(ae_title="RECEIVER")
    for sop_class in (MRImageStorage, RTStructureSetStorage):
        ae.add_supported_context(sop_class, syntaxes)

    def on_store(event: evt.Event) -> int:
        got.raw.append(event.request.DataSet.getvalue())
        got.syntaxes.append(str(event.context.transfer_syntax))
        time.sleep(got.hold.get(len(got.raw), 0.0))
        return 0x0000

    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield Receiver(port, got)
    finally:
        server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _scp([ExplicitVRLittleEndian, ImplicitVRLittleEndian], Received())


@pytest.fixture
def explicit_only() -> Iterator[Receiver]:
    yield from _scp([ExplicitVRLittleEndian], Received())


def _dest(r: Receiver) -> DestinationConfig:
    return DestinationConfig(ae_title="RECEIVER", host="127.0.0.1", port=r.port)


def _mr(k: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.InstanceNumber = k
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.arange(256, dtype=np.uint16).tobytes()
    return ds


def _write(tmp: Path, k: int, syntax: str) -> Path:
    ds = _mr(k)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp / f"{k}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _dataset_after_meta(path: Path) -> bytes:
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def test_files_arrive_byte_for_byte_in_their_own_syntax(tmp_path: Path, receiver) -> None:
    files = [
        _write(tmp_path, 1, ExplicitVRLittleEndian),
        _write(tmp_path, 2, ImplicitVRLittleEndian),
        _write(tmp_path, 3, ExplicitVRLittleEndian),
    ]
    assert store(_dest(receiver), "AIRCON", files) == [0, 0, 0]
    assert receiver.got.raw == [_dataset_after_meta(f) for f in files]
    assert receiver.got.syntaxes == [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
    ]


def test_files_are_never_decoded_on_the_fast_path(tmp_path: Path, receiver, monkeypatch) -> None:
    files = [_write(tmp_path, k, ExplicitVRLittleEndian) for k in range(3)]

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("a file was decoded")

    monkeypatch.setattr(cstore, "dcmread", no_decoding)
    monkeypatch.setattr(cstore, "encode", no_decoding)
    assert store(_dest(receiver), "AIRCON", files) == [0, 0, 0]


def test_a_dataset_is_sent_encoded_in_its_transfer_syntax(receiver) -> None:
    ds = _mr(1)
    ds.SOPClassUID = RTStructureSetStorage
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert store(_dest(receiver), "AIRCON", [ds]) == [0]
    assert receiver.got.syntaxes == [ImplicitVRLittleEndian]
    assert receiver.got.raw == [encode(ds, True, True, False)]


def test_a_file_the_peer_takes_only_in_another_syntax_is_converted(
    tmp_path: Path, explicit_only
) -> None:
    path = _write(tmp_path, 1, ImplicitVRLittleEndian)
    assert store(_dest(explicit_only), "AIRCON", [path]) == [0]
    assert explicit_only.got.syntaxes == [ExplicitVRLittleEndian]
    sent = dcmread(path)
    assert explicit_only.got.raw == [encode(sent, False, True, False)]


def test_a_compressed_dataset_the_peer_does_not_take_is_rejected(
    tmp_path: Path, explicit_only
) -> None:
    path = _write(tmp_path, 1, ExplicitVRLittleEndian)
    ds = _mr(2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    assert cstore.contexts([cstore.prepare(ds)]) == [(MRImageStorage, [JPEGBaseline8Bit])]
    with pytest.raises(DeliveryRejected, match="no presentation context"):
        store(_dest(explicit_only), "AIRCON", [path, ds])
    assert explicit_only.got.raw == [_dataset_after_meta(path)]


def test_a_lost_response_says_how_many_were_acknowledged(tmp_path: Path, receiver) -> None:
    files = [_write(tmp_path, k, ExplicitVRLittleEndian) for k in range(3)]
    receiver.got.hold[2] = 2.0  # the second answer comes after the sender's DIMSE timeout
    with pytest.raises(cstore.LostResponse) as lost:
        store(_dest(receiver), "AIRCON", files, timeout=0.5)
    assert lost.value.acknowledged == 1


def test_aircon_send_resends_what_a_lost_response_left_unacknowledged(
    tmp_path: Path, receiver
) -> None:
    files = [_write(tmp_path, k, ExplicitVRLittleEndian) for k in range(3)]
    receiver.got.hold[2] = 1.5
    statuses = store(_dest(receiver), "AIRCON", files, timeout=0.5, lost_retries=1)
    assert statuses == [0, 0, 0]
    # The unanswered instance went again, unchanged (same SOP Instance UID: the peer's copy is
    # replaced, never doubled), and the acknowledged one did not.
    sent = [files[0], files[1], files[1], files[2]]
    assert receiver.got.raw == [_dataset_after_meta(f) for f in sent]


def test_the_reactor_is_seen_blocked_while_a_batch_is_sent(receiver) -> None:
    ae = AE(ae_title="AIRCON")
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="RECEIVER")
    assert assoc.is_established
    try:
        with cstore.reactor_held(assoc, timeout=2.0):
            # Deterministic: pynetdicom's layout is recognised (no fallback on its flag).
            assert cstore._blocked_on_checkpoint(assoc)
            time.sleep(0.01)
            assert cstore._blocked_on_checkpoint(assoc)
        assert assoc._reactor_checkpoint.is_set()
        deadline = time.monotonic() + 2
        while cstore._blocked_on_checkpoint(assoc) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not cstore._blocked_on_checkpoint(assoc), "the reactor runs again"
    finally:
        assoc.release()
    assert assoc.is_released


def test_many_sends_over_one_association_all_get_their_answers(tmp_path: Path, receiver) -> None:
    path = _write(tmp_path, 1, ExplicitVRLittleEndian)
    assert store(_dest(receiver), "AIRCON", [path] * 300) == [0] * 300


def test_pynetdicom_is_the_version_the_hold_was_written_for() -> None:
    import pynetdicom

    assert pynetdicom.__version__.startswith("3.0."), "re-check gateway/dicom/cstore.py"


@pytest.mark.parametrize(
    ("msg_id", "sop_class", "data", "max_pdu"),
    [
        (1, MRImageStorage, b"x" * 50_000, 16_384),  # several data fragments
        (65_535, RTStructureSetStorage, b"ab" * 7, 0),  # unlimited PDU: one of each
        (7, "1.2", b"y" * 301, 100),  # the command set itself split
    ],
)
def test_the_c_store_request_is_encoded_as_pynetdicom_encodes_it(
    msg_id: int, sop_class: str, data: bytes, max_pdu: int
) -> None:
    from io import BytesIO

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    req = C_STORE()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"  # odd length: padded
    req.Priority = 2
    req.DataSet = BytesIO(data)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    theirs = [p.presentation_data_value_list for p in msg.encode_msg(3, max_pdu)]
    command = cstore.c_store_rq(msg_id, sop_class, "1.2.826.0.1.3680043.8.498.1")
    ours = [p.presentation_data_value_list for p in cstore.p_data(3, command, data, max_pdu)]
    assert ours == theirs


def test_a_uid_that_cannot_go_on_the_wire_is_rejected() -> None:
    with pytest.raises(DeliveryRejected, match="not a UID"):
        cstore.c_store_rq(1, MRImageStorage, "1.2." + "9" * 70)
    with pytest.raises(DeliveryRejected, match="not a UID"):
        cstore.c_store_rq(1, MRImageStorage, "1.2.\u00e9")
