"""Volume building from a real oblique MR series and from a phantom series."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from gateway.demo.phantom import make_phantom, write_dicom_series
from gateway.errors import InvalidInput
from gateway.grid import slice_normal
from gateway.imaging import read_series, resample_to, volume_cc
from tests.conftest import PROSTATEX_T2

OBLIQUE_T2 = PROSTATEX_T2


@pytest.fixture(scope="module")
def t2_files() -> list[Path]:
    if not OBLIQUE_T2.is_dir():
        pytest.skip(f"real oblique T2 series not available at {OBLIQUE_T2}")
    files = sorted(OBLIQUE_T2.glob("*.dcm"))
    random.Random(7).shuffle(files)
    return files


def test_oblique_t2_keeps_orientation_and_sorts_along_normal(t2_files: list[Path]) -> None:
    volume = read_series(t2_files)
    image = volume.image
    first = volume.datasets[0]
    iop = [float(v) for v in first.ImageOrientationPatient]
    direction = np.array(image.GetDirection()).reshape(3, 3)

    assert image.GetSize() == (384, 384, 19)
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 0.5, 3.0), atol=1e-4)
    np.testing.assert_allclose(direction[:, 0], iop[:3], atol=1e-6)
    np.testing.assert_allclose(direction[:, 1], iop[3:], atol=1e-6)
    np.testing.assert_allclose(direction[:, 2], slice_normal(iop), atol=1e-6)
    assert abs(direction[2, 2]) < 0.99  # really oblique
    np.testing.assert_allclose(image.GetOrigin(), [float(v) for v in first.ImagePositionPatient])
    heights = [
        np.dot([float(v) for v in ds.ImagePositionPatient], slice_normal(iop))
        for ds in volume.datasets
    ]
    assert np.all(np.diff(heights) > 2.9)
    # Slice k of the array is the pixel data of datasets[k], and physical points agree.
    array = sitk.GetArrayFromImage(image)
    for k in (0, 9, 18):
        uid = volume.sop_instance_uids[k]
        path = next(
            p for p in t2_files if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == uid
        )
        np.testing.assert_array_equal(array[k], pydicom.dcmread(path).pixel_array)
        ipp = [float(v) for v in volume.datasets[k].ImagePositionPatient]
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((0, 0, k)), ipp, atol=1e-3)
    assert len(set(volume.sop_instance_uids)) == 19
    assert volume.series_instance_uid == first.SeriesInstanceUID
    assert volume.frame_of_reference_uid == first.FrameOfReferenceUID
    assert "PixelData" not in first


def test_missing_slice_is_invalid_input(t2_files: list[Path]) -> None:
    by_instance = sorted(
        t2_files, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber)
    )
    with pytest.raises(InvalidInput, match="gap"):
        read_series(by_instance[:9] + by_instance[10:])


def test_phantom_series_round_trip(tmp_path: Path) -> None:
    phantom = make_phantom(3)
    info = write_dicom_series(phantom, tmp_path)
    volume = read_series(list(reversed(info.files)))

    assert volume.sop_instance_uids == info.sop_instance_uids
    np.testing.assert_allclose(volume.image.GetOrigin(), phantom.image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume.image.GetSpacing(), phantom.image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(volume.image.GetDirection(), phantom.image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(volume.image), sitk.GetArrayFromImage(phantom.image), atol=0.5
    )


def test_resample_to_is_physical() -> None:
    phantom = make_phantom(4)
    labels = phantom.labels
    same = resample_to(labels, labels, interpolator="nearest")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(same), sitk.GetArrayFromImage(labels))
    # A reference grid shifted by exactly one voxel along x sees the labels one column over.
    shifted = sitk.Image(labels)
    shifted.SetOrigin(labels.TransformIndexToPhysicalPoint((1, 0, 0)))
    moved = sitk.GetArrayFromImage(resample_to(labels, shifted, interpolator="nearest"))
    np.testing.assert_array_equal(moved[:, :, :-1], sitk.GetArrayFromImage(labels)[:, :, 1:])
    assert resample_to(labels, shifted, interpolator="nearest").GetPixelID() == labels.GetPixelID()


def test_volume_cc() -> None:
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[:2, :5, :10] = True
    assert volume_cc(mask, (3.0, 1.0, 2.0)) == pytest.approx(0.6)
