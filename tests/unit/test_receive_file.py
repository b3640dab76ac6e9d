"""Receiving an instance that arrived as a file (Receiver.accept_file): the checks of
Receiver.accept on its headers, its pixel data checked where it lies in the file and never
loaded, and the spool taking the file by rename. Also the SOP classes checked for pixel data."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

from gateway.config import StorageConfig
from gateway.db.database import Store
from gateway.errors import DatasetMismatch, InvalidInput
from gateway.receive.checks import check_dataset
from gateway.receive.receiver import DEFER_BYTES, Receiver
from gateway.receive.spool import Spool
from tests.large_objects import enhanced_mr, save_copies

MIB = 1 << 20


def _receiver(tmp_path: Path) -> Receiver:
    db = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    return Receiver(Spool(tmp_path / "spool"), db, storage=StorageConfig(min_free_mb=0))


def _arrived(rx: Receiver, frames_declared: int = 0, cut: int = 0) -> Path:
    """A 16 MB Enhanced MR as it lies in Spool.incoming once received."""
    ds = enhanced_mr(16)
    ds.NumberOfFrames += frames_declared
    (path,) = save_copies(ds, rx.spool.incoming, 1)
    if cut:
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size - cut)
    return path.rename(path.with_name(".abc.part"))


def test_an_arrived_file_is_taken_by_rename_without_loading_its_pixels(tmp_path: Path) -> None:
    rx = _receiver(tmp_path)
    path = _arrived(rx)
    data = path.read_bytes()
    tracemalloc.start()
    try:
        rec = rx.accept_file(
            path,
            "STORESCU",
            "AIRCON",
            sop_class_uid=EnhancedMRImageStorage,
            transfer_syntax=ExplicitVRLittleEndian,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB, f"{peak / MIB:.1f} MiB for a {len(data) / MIB:.0f} MiB file"
    assert not path.exists() and list(rx.spool.incoming.iterdir()) == []
    stored = Path(rec.path)
    assert stored == rx.spool.path_for(rec.study_uid, rec.series_uid, rec.sop_instance_uid)
    assert stored.read_bytes() == data and rec.size == len(data)
    study = rx.store.study(rec.study_uid)
    assert study is not None and study.series[0].paths == {rec.sop_instance_uid: str(stored)}


@pytest.mark.parametrize(
    ("frames_declared", "cut", "error", "why"),
    [
        (1, 0, DatasetMismatch, r"x 32 frame\(s\)"),
        (0, 4096, InvalidInput, "truncated"),
    ],
)
def test_an_arrived_file_with_wrong_pixel_data_is_refused_and_left_to_the_caller(
    tmp_path: Path, frames_declared: int, cut: int, error: type[Exception], why: str
) -> None:
    rx = _receiver(tmp_path)
    path = _arrived(rx, frames_declared, cut)
    with pytest.raises(error, match=why):
        rx.accept_file(path, "STORESCU", "AIRCON", transfer_syntax=ExplicitVRLittleEndian)
    assert path.exists()  # the SCP's buffer deletes it
    assert list(rx.spool.root.glob("*/*/*.dcm")) == []
    assert rx.store.known_instances() == set()


def test_a_deferred_pixel_data_is_checked_by_its_declared_length(tmp_path: Path) -> None:
    (path,) = save_copies(enhanced_mr(4), tmp_path, 1)
    ds = dcmread(path, defer_size=DEFER_BYTES)
    check_dataset(ds, ds.SOPClassUID, ExplicitVRLittleEndian)
    assert ds.get_item("PixelData", keep_deferred=True).value is None  # still in the file
    ds.NumberOfFrames = 99
    with pytest.raises(DatasetMismatch, match="x 99 frame"):
        check_dataset(ds, ds.SOPClassUID, ExplicitVRLittleEndian)


@pytest.mark.parametrize(
    "sop_class",
    ["1.2.840.10008.5.1.4.1.1.4.4", "1.2.840.10008.5.1.4.1.1.4.3"],  # legacy converted, color
)
def test_enhanced_mr_variants_are_checked_for_pixel_data(sop_class: str) -> None:
    ds = enhanced_mr(0.01, size=16)
    ds.SOPClassUID = sop_class
    check_dataset(ds, sop_class, ExplicitVRLittleEndian)
    ds.PixelData = ds.PixelData[:-2]
    with pytest.raises(DatasetMismatch, match="pixel data is"):
        check_dataset(ds, sop_class, ExplicitVRLittleEndian)


def test_mr_spectroscopy_has_no_pixel_data_to_check() -> None:
    ds = enhanced_mr(0.01, size=16)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.2"
    del ds.PixelData
    ds.SpectroscopyData = bytes(8 * 512)
    check_dataset(ds, ds.SOPClassUID, ExplicitVRLittleEndian)


def test_files_still_arriving_at_a_crash_are_removed_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.incoming.mkdir(parents=True)
    (spool.incoming / ".0123abcd.part").write_bytes(b"half an instance")
    study, series = generate_uid(), generate_uid()
    kept = spool.write(study, series, generate_uid(), b"stored")
    assert spool.remove_stale_temporaries() == 1
    assert list(spool.incoming.iterdir()) == [] and kept.read_bytes() == b"stored"


def test_adopted_files_are_counted_against_the_disk_guard(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.incoming.mkdir(parents=True)
    source = spool.incoming / ".x.part"
    source.write_bytes(bytes(3 * MIB))
    before = spool.free_mb()
    path = spool.adopt(generate_uid(), generate_uid(), generate_uid(), source)
    assert path.stat().st_size == 3 * MIB and not source.exists()
    assert spool.free_mb(max_age_s=3600) <= before - 3
