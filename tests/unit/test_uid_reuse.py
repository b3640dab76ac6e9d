"""A UID reused by another study is refused: one study's records never point at another's files.

Two senders (or one misconfigured scanner) may reuse a SOP Instance UID or a Series Instance UID
for another study. Recording the second under the first's rows would make the first study's job
read the second patient's pixels, so the second is refused and the first left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.dataset import Dataset

from gateway.config import StorageConfig
from gateway.db.database import Store
from gateway.demo.phantom import write_dicom_series
from gateway.errors import UidConflict
from gateway.imaging import read_series
from gateway.receive.receiver import Receiver, describe_instance
from gateway.receive.spool import Spool

SOP_REUSED = "SOP Instance UID already stored in another study"
SERIES_REUSED = "Series Instance UID already belongs to another study"


@dataclass
class Sent:
    study_uid: str
    series_uid: str
    datasets: list[Dataset]
    pixels: np.ndarray  # (z, y, x), what the series' volume must hold


def _series(folder: Path, value: int, seed: int, **uids: str) -> Sent:
    """A 3-slice 8 x 8 MR series whose slice k holds ``value + k`` everywhere."""
    pixels = np.stack([np.full((8, 8), value + k, dtype=np.float32) for k in range(3)])
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing((1.0, 1.0, 3.0))
    info = write_dicom_series(image, folder, seed=seed, **uids)
    return Sent(info.study_uid, info.series_uid, [dcmread(f) for f in info.files], pixels)


def _encoded(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _reuse_sop(ds: Dataset, sop_uid: str) -> Dataset:
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    return ds


@pytest.fixture
def rx(tmp_path: Path, database_url: str) -> Receiver:
    store = Store(database_url)
    return Receiver(Spool(tmp_path / "spool"), store, storage=StorageConfig(min_free_mb=0))


def _send(rx: Receiver, ds: Dataset) -> None:
    rx.accept(ds, _encoded(ds), "SCANNER", "AIRCON")


def _counts(rx: Receiver) -> dict[str, int]:
    return {s["study_uid"]: s["instances"] for s in rx.store.list_studies()}


def _paths(rx: Receiver, study_uid: str) -> dict[str, str]:
    study = rx.store.study(study_uid)
    assert study is not None
    return {sop: path for series in study.series for sop, path in series.paths.items()}


def test_a_sop_instance_uid_reused_by_another_study_is_refused(rx: Receiver, tmp_path: Path):
    a = _series(tmp_path / "a", 100, seed=1)
    for ds in a.datasets:
        _send(rx, ds)
    before = _paths(rx, a.study_uid)
    b = _series(tmp_path / "b", 900, seed=2)
    reused = _reuse_sop(b.datasets[0], a.datasets[0].SOPInstanceUID)

    with pytest.raises(UidConflict, match=SOP_REUSED):
        _send(rx, reused)

    assert _counts(rx) == {a.study_uid: 3}  # study B not recorded, study A untouched
    assert _paths(rx, a.study_uid) == before
    assert not rx.spool.path_for(b.study_uid, b.series_uid, reused.SOPInstanceUID).exists()
    # B's other instances (own UIDs) are received as usual.
    for ds in b.datasets[1:]:
        _send(rx, ds)
    assert _counts(rx) == {a.study_uid: 3, b.study_uid: 2}
    assert _paths(rx, a.study_uid) == before


def test_a_series_instance_uid_reused_by_another_study_is_refused(rx: Receiver, tmp_path: Path):
    c = _series(tmp_path / "c", 100, seed=3)
    for ds in c.datasets:
        _send(rx, ds)
    before = _paths(rx, c.study_uid)
    d = _series(tmp_path / "d", 900, seed=4, series_uid=c.series_uid)
    assert d.study_uid != c.study_uid

    for ds in d.datasets:
        with pytest.raises(UidConflict, match=SERIES_REUSED):
            _send(rx, ds)

    assert _counts(rx) == {c.study_uid: 3}
    assert rx.store.study(d.study_uid) is None
    assert _paths(rx, c.study_uid) == before
    assert not list((rx.spool.root / d.study_uid).rglob("*.dcm"))  # nothing of D kept


def test_a_sop_instance_uid_moved_to_another_series_of_the_same_study_is_refused(
    rx: Receiver, tmp_path: Path
) -> None:
    a = _series(tmp_path / "a", 100, seed=5)
    for ds in a.datasets:
        _send(rx, ds)
    other = _series(tmp_path / "a2", 300, seed=6, study_uid=a.study_uid)
    moved = _reuse_sop(other.datasets[0], a.datasets[0].SOPInstanceUID)
    with pytest.raises(UidConflict, match="SOP Instance UID already stored in another series"):
        _send(rx, moved)
    (series,) = rx.store.study(a.study_uid).series  # type: ignore[union-attr]
    assert series.series_uid == a.series_uid and len(series.paths) == 3


def test_a_resend_to_the_same_study_and_series_replaces_the_file(rx: Receiver, tmp_path: Path):
    a = _series(tmp_path / "a", 100, seed=7)
    for ds in a.datasets:
        _send(rx, ds)
    again = a.datasets[0]
    again.SeriesDescription = "resent"
    _send(rx, again)
    paths = _paths(rx, a.study_uid)
    assert _counts(rx) == {a.study_uid: 3}
    assert dcmread(paths[again.SOPInstanceUID]).SeriesDescription == "resent"


def test_the_database_refuses_a_conflicting_record_even_without_the_early_check(
    rx: Receiver, tmp_path: Path
) -> None:
    """The check before spooling is an optimisation; the one in the record's transaction is the
    guard (two associations may pass the early check at the same time)."""
    a = _series(tmp_path / "a", 100, seed=8)
    for ds in a.datasets:
        _send(rx, ds)
    before = _paths(rx, a.study_uid)
    b = _series(tmp_path / "b", 900, seed=9)
    sop = _reuse_sop(b.datasets[0], a.datasets[0].SOPInstanceUID)
    same_series = _series(tmp_path / "c", 900, seed=10, series_uid=a.series_uid)
    for ds, reason in ((sop, SOP_REUSED), (same_series.datasets[0], SERIES_REUSED)):
        rec = describe_instance(ds, "/elsewhere/x.dcm")
        with pytest.raises(UidConflict, match=reason):
            rx.store.record_instance(rec, calling_ae="SCANNER", called_ae="AIRCON")
    assert _counts(rx) == {a.study_uid: 3}
    assert _paths(rx, a.study_uid) == before


def test_each_study_volume_is_built_only_from_its_own_files(rx: Receiver, tmp_path: Path):
    a = _series(tmp_path / "a", 100, seed=11)
    for ds in a.datasets:
        _send(rx, ds)
    b = _series(tmp_path / "b", 900, seed=12)
    for k, ds in enumerate(b.datasets):
        if k == 2:  # B's last slice reuses one of A's SOP Instance UIDs
            _reuse_sop(ds, a.datasets[1].SOPInstanceUID)
        try:
            _send(rx, ds)
        except UidConflict:
            pass

    for sent in (a, b):
        study = rx.store.study(sent.study_uid)
        assert study is not None
        (series,) = study.series
        folder = rx.spool.root / sent.study_uid
        assert all(Path(p).is_relative_to(folder) for p in series.paths.values())
        volume = read_series([Path(p) for p in series.paths.values()])
        got = sitk.GetArrayFromImage(volume.image)
        expected = sent.pixels if sent is a else sent.pixels[:2]
        np.testing.assert_array_equal(got, expected)
