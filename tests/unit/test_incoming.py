"""Incoming data sets (gateway/dicom/incoming.py) and the DIMSE hook that swaps them in
(gateway/dicom/reactor.py): small ones stay in memory, large ones become a complete Part 10
file on the spool's file system as they arrive, and nothing is left behind."""

from __future__ import annotations

import io
import os
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode

from gateway.dicom.incoming import Incoming, SpillingBuffer, part10_header
from gateway.dicom.reactor import _receive_primitive
from tests.conftest import mr_slice

SOP = "1.2.826.0.1.3680043.8.498.1"


def _header() -> bytes:
    return part10_header(MRImageStorage, SOP, ExplicitVRLittleEndian)


def _memory(buf: SpillingBuffer) -> int:
    """Bytes held by the BytesIO itself."""
    return io.BytesIO.getbuffer(buf).nbytes


def test_a_small_data_set_stays_in_memory(tmp_path: Path) -> None:
    buf = SpillingBuffer(tmp_path / "in", _header, threshold=100)
    for _ in range(10):
        buf.write(b"0123456789")
    assert buf.path is None and buf.finish() is None
    assert buf.getvalue() == b"0123456789" * 10
    assert not (tmp_path / "in").exists()


def test_a_large_data_set_becomes_a_part10_file_and_leaves_memory(tmp_path: Path) -> None:
    ds = mr_slice(Rows=64, Columns=64, PixelData=os.urandom(64 * 64 * 2))
    data = encode(ds, False, True)
    assert data is not None
    buf = SpillingBuffer(tmp_path / "in", _header, threshold=1000)
    for k in range(0, len(data), 777):
        buf.write(memoryview(data)[k : k + 777])
    path = buf.finish()
    assert path is not None and path.parent == tmp_path / "in" and path.name.endswith(".part")
    assert path.read_bytes() == _header() + data
    assert _memory(buf) == 0 and buf.size == len(data)
    stored = dcmread(path)
    assert stored.file_meta.MediaStorageSOPInstanceUID == SOP
    assert stored.PixelData == ds.PixelData
    # Read as the BytesIO it stands for (pynetdicom's Event.dataset / encoded_dataset).
    assert buf.getvalue() == data
    assert decode(buf, False, True).PixelData == ds.PixelData
    buf.discard()
    assert not path.exists()
    buf.discard()  # idempotent, and closing it too
    buf.close()
    buf.close()


def test_a_failed_spill_is_reported_and_never_held_in_memory_instead(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    buf = SpillingBuffer(blocker / "in", _header, threshold=10)
    for _ in range(100):
        buf.write(b"0123456789")
    assert buf.path is None and _memory(buf) == 0
    with pytest.raises(OSError):
        buf.finish()


def test_the_associations_end_deletes_the_files_nobody_took(tmp_path: Path) -> None:
    incoming = Incoming(tmp_path / "in", threshold=10)
    taken, left, small = (incoming.buffer(_header) for _ in range(3))
    assert taken is not None and left is not None and small is not None
    for buf in (taken, left):
        buf.write(bytes(100))
    small.write(b"abc")
    path = taken.finish()
    assert path is not None
    path.rename(tmp_path / "spooled.dcm")  # the spool took it
    taken.discard()
    assert incoming.open_files == 1
    assert incoming.close() == 1
    assert list((tmp_path / "in").iterdir()) == []
    late = incoming.buffer(_header)
    assert late is None  # the association has ended


def _p_data(data: bytes, sop_instance: str, max_pdu: int) -> list[object]:
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = MRImageStorage
    req.AffectedSOPInstanceUID = sop_instance
    req.Priority = 2
    req.DataSet = BytesIO(data)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return list(msg.encode_msg(1, max_pdu))


def _association() -> SimpleNamespace:
    cx = SimpleNamespace(transfer_syntax=[ExplicitVRLittleEndian])
    assoc = SimpleNamespace(get_handlers=lambda event: [], _accepted_cx={1: cx})
    assoc.dimse = DIMSEServiceProvider(assoc)  # type: ignore[arg-type]
    return assoc


@pytest.mark.parametrize("size", [8, 256])
def test_the_dimse_hook_puts_large_c_store_data_sets_into_files(tmp_path: Path, size: int) -> None:
    assoc = _association()
    incoming = Incoming(tmp_path / "in", threshold=64 * 1024)
    ds = mr_slice(Rows=size, Columns=size, PixelData=os.urandom(size * size * 2))
    data = encode(ds, False, True)
    assert data is not None
    receive = assoc.dimse.receive_primitive
    for p_data in _p_data(data, ds.SOPInstanceUID, 16 * 1024):
        _receive_primitive(assoc, incoming, receive, p_data)
    _, request = assoc.dimse.msg_queue.get_nowait()
    buf = request.DataSet
    assert isinstance(buf, SpillingBuffer)
    path = buf.finish()
    if size == 8:  # 128 bytes of pixels: in memory, as pynetdicom had it
        assert path is None and buf.getvalue() == data
        assert not (tmp_path / "in").exists()
    else:  # 128 KiB: a file with what Event.encoded_dataset() would have given
        header = part10_header(MRImageStorage, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        assert path is not None and path.read_bytes() == header + data
        assert incoming.open_files == 1
    incoming.close()
    assert not (tmp_path / "in").exists() or list((tmp_path / "in").iterdir()) == []


def test_a_data_set_cut_off_mid_way_leaves_no_file(tmp_path: Path) -> None:
    assoc = _association()
    incoming = Incoming(tmp_path / "in", threshold=1024)
    ds = mr_slice(Rows=128, Columns=128, PixelData=os.urandom(128 * 128 * 2))
    data = encode(ds, False, True)
    assert data is not None
    receive = assoc.dimse.receive_primitive
    for p_data in _p_data(data, ds.SOPInstanceUID, 4096)[:5]:
        _receive_primitive(assoc, incoming, receive, p_data)
    assert assoc.dimse.msg_queue.empty()
    assert len(list((tmp_path / "in").iterdir())) == 1
    incoming.close()  # the association aborted
    assert list((tmp_path / "in").iterdir()) == []
