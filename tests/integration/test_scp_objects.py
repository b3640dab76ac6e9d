"""The Storage SCP and what scanners send: large multi-frame objects (received into a file on the
spool's file system, never held whole in memory), Legacy Converted Enhanced MR, MR Spectroscopy.
Real senders: dcmtk ``storescu`` and pynetdicom, against the SCP in this process."""

from __future__ import annotations

import socket
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRSpectroscopyStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from gateway.config import DestinationConfig, PeerConfig, StorageConfig
from gateway.db.database import Store
from gateway.dicom.scp import StorageSCP
from gateway.dicom.scu import store
from gateway.receive.receiver import Receiver
from gateway.receive.spool import Spool
from tests.conftest import PROSTATEX_T2, dcmtk_env, mr_slice, wait_for
from tests.datasets import new_instance
from tests.large_objects import enhanced_mr, save_copies

MIB = 1 << 20


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[StorageSCP]:
    db = Store(f"sqlite:///{tmp_path / 'aircon.db'}")
    rx = Receiver(Spool(tmp_path / "spool"), db, storage=StorageConfig(min_free_mb=0))
    server = StorageSCP("AIRCON", "127.0.0.1", 0, (PeerConfig(ae_title="SENDER"),), rx)
    server.start()
    yield server
    server.stop()


# pynetdicom as a sender in a process of its own, reading the file as it sends it: the test
# process's memory is the receiver's. Prints the C-STORE status.
PYNETDICOM_SEND = """
import sys
from pathlib import Path
from pydicom import dcmread
from pynetdicom import AE, _config
_config.STORE_SEND_CHUNKED_DATASET = True
port, path = int(sys.argv[1]), Path(sys.argv[2])
meta = dcmread(path, stop_before_pixels=True).file_meta
ae = AE("SENDER")
ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
assoc = ae.associate("127.0.0.1", port, ae_title="AIRCON")
status = assoc.send_c_store(path).Status
assoc.release()
print(status)
"""


def _storescu(scp: StorageSCP, path: Path) -> subprocess.CompletedProcess[str]:
    # -R: propose the files' own SOP classes, as a scanner does (dcmtk 3.6.7's built-in list
    # lacks Legacy Converted Enhanced MR).
    args = ["storescu", "-R", "-aet", "SENDER", "-aec", "AIRCON", "127.0.0.1", str(scp.port)]
    args.append(str(path))
    return subprocess.run(args, capture_output=True, text=True, env=dcmtk_env(), timeout=120)


def _send_file(scp: StorageSCP, path: Path) -> int:
    """The C-STORE status pynetdicom (in its own process) gets for the file at ``path``."""
    args = [sys.executable, "-c", PYNETDICOM_SEND, str(scp.port), str(path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def _data_set(path: Path) -> bytes:
    """A Part 10 file's bytes after its File Meta Information (what travelled)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"
    return data[144 + int.from_bytes(data[140:144], "little") :]


def _leftovers(scp: StorageSCP) -> list[Path]:
    incoming = scp.receiver.spool.incoming
    return sorted(incoming.iterdir()) if incoming.exists() else []


def _spooled(scp: StorageSCP) -> list[Path]:
    return sorted(scp.receiver.spool.root.glob("*/*/*.dcm"))


@pytest.mark.parametrize("sender", ["storescu", "pynetdicom"])
def test_a_large_instance_is_stored_byte_identical_without_being_held_in_memory(
    scp: StorageSCP, tmp_path: Path, sender: str
) -> None:
    ds = enhanced_mr(40)
    (path,) = save_copies(ds, tmp_path / "send", 1)
    del ds
    tracemalloc.start()
    try:
        if sender == "storescu":
            done = _storescu(scp, path)
            assert done.returncode == 0, done.stderr
        else:
            assert _send_file(scp, path) == 0x0000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * MIB, f"{peak / MIB:.0f} MiB held for a 40 MB instance"
    sent = dcmread(path, stop_before_pixels=True)
    (stored,) = _spooled(scp)
    assert stored.name == f"{sent.SOPInstanceUID}.dcm"
    if sender == "pynetdicom":  # it sends the file's bytes as they are
        assert _data_set(stored) == _data_set(path)
    else:  # dcmtk re-encodes what it reads (e.g. sequence lengths)
        assert dcmread(stored) == dcmread(path)

    def recorded() -> dict[str, str] | None:
        study = scp.receiver.store.study(sent.StudyInstanceUID)
        return study.series[0].paths if study is not None else None

    assert wait_for(recorded, 10, what="the instance row") == {sent.SOPInstanceUID: str(stored)}
    assert _leftovers(scp) == []


def _p_data(ds: Dataset, data: bytes, max_pdu: int) -> list[object]:
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = ds.SOPClassUID
    req.AffectedSOPInstanceUID = ds.SOPInstanceUID
    req.Priority = 2
    req.DataSet = BytesIO(data)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return list(msg.encode_msg(1, max_pdu))


@pytest.mark.parametrize("how", ["A-ABORT", "connection closed"])
def test_an_association_cut_off_mid_data_set_leaves_nothing_and_the_gateway_goes_on(
    scp: StorageSCP, how: str
) -> None:
    ds = enhanced_mr(12)
    data = encode(ds, False, True)
    assert data is not None
    ae = AE("SENDER")
    ae.add_requested_context(EnhancedMRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="AIRCON")
    assert assoc.is_established and assoc.accepted_contexts[0].context_id == 1
    for p_data in _p_data(ds, data, assoc.acceptor.maximum_length)[:6]:  # ~5 of 12 MB
        assoc.dul.send_pdu(p_data)
    wait_for(lambda: _leftovers(scp), 5, interval=0.05, what="the data set's file")
    if how == "A-ABORT":
        assoc.abort()
    else:
        assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
        assoc.dul.socket.close()
        assoc.kill()
    wait_for(lambda: not _leftovers(scp), 10, interval=0.05, what="the file to be deleted")
    dest = DestinationConfig(ae_title="AIRCON", host="127.0.0.1", port=scp.port)
    assert store(dest, "SENDER", [mr_slice()]) == [0x0000]
    assert len(_spooled(scp)) == 1


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("one frame more declared than sent", 0xA900),
        ("pixel data cut short of its declared length", 0xC210),
    ],
)
def test_a_large_instance_with_wrong_pixel_data_is_refused(
    scp: StorageSCP, tmp_path: Path, fault: str, status: int
) -> None:
    ds = enhanced_mr(12)
    if fault.startswith("one frame"):
        ds.NumberOfFrames += 1
    (path,) = save_copies(ds, tmp_path / "send", 1)
    if fault.startswith("pixel data cut"):
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size - 4096)
    assert _send_file(scp, path) == status
    assert _spooled(scp) == [] and _leftovers(scp) == []


def test_a_legacy_converted_enhanced_mr_from_storescu_is_stored(
    scp: StorageSCP, tmp_path: Path
) -> None:
    if not PROSTATEX_T2.is_dir():
        pytest.skip(f"real test data not found at {PROSTATEX_T2}")
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    slices = [dcmread(p) for p in sorted(PROSTATEX_T2.glob("*.dcm"))[8:12]]
    image = LegacyConvertedEnhancedMRImage(slices, generate_uid(), 99, generate_uid(), 1)
    path = tmp_path / "legacy-converted.dcm"
    image.save_as(path, enforce_file_format=True)
    done = _storescu(scp, path)
    assert done.returncode == 0, done.stderr
    (stored,) = _spooled(scp)
    assert dcmread(stored) == dcmread(path)  # as dcmtk re-encoded it (sequence lengths)
    rec = wait_for(
        lambda: scp.receiver.store.study(image.StudyInstanceUID), 10, what="the instance row"
    )
    assert rec.series[0].attributes["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.4.4"
    assert rec.series[0].paths == {image.SOPInstanceUID: str(stored)}


def _spectroscopy() -> Dataset:
    """An MR Spectroscopy instance: one voxel, 512 complex points, no Pixel Data."""
    ds = new_instance(MRSpectroscopyStorage)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SPECTROSCOPY", "NONE"]
    ds.Rows = ds.Columns = ds.NumberOfFrames = 1
    ds.DataPointRows, ds.DataPointColumns = 1, 512
    ds.DataRepresentation = "COMPLEX"
    ds.SignalDomainColumns = "TIME"
    ds.SpectroscopyData = np.zeros(2 * 512, dtype=np.float32).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_mr_spectroscopy_without_pixel_data_is_stored(scp: StorageSCP) -> None:
    ds = _spectroscopy()
    dest = DestinationConfig(ae_title="AIRCON", host="127.0.0.1", port=scp.port)
    assert store(dest, "SENDER", [ds]) == [0x0000]
    (stored,) = _spooled(scp)
    assert dcmread(stored).SpectroscopyData == ds.SpectroscopyData
