"""The one grid type and the pixel <-> patient maps, checked against SimpleITK's own geometry."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from gateway.grid import Grid, patient_to_pixel, pixel_to_patient, slice_normal

# An oblique plane with non-square pixels, so a swapped row/column spacing or direction shows.
ROW = np.array([0.9872, 0.0996, 0.1245])
COL = np.array([-0.0984, 0.9950, -0.0157])
ROW, COL = ROW / np.linalg.norm(ROW), COL - (COL @ ROW) * ROW / (ROW @ ROW)
COL /= np.linalg.norm(COL)
IPP = (-59.03, -57.06, -28.74)
PIXEL_SPACING = (0.7, 1.3)  # rows, columns


def _slice() -> Dataset:
    ds = Dataset()
    ds.ImagePositionPatient = list(IPP)
    ds.ImageOrientationPatient = [*ROW, *COL]
    ds.PixelSpacing = list(PIXEL_SPACING)
    return ds


def _sitk_image(slice_spacing: float = 3.0) -> sitk.Image:
    image = sitk.Image(40, 30, 5, sitk.sitkUInt8)
    image.SetOrigin(IPP)
    image.SetSpacing((PIXEL_SPACING[1], PIXEL_SPACING[0], slice_spacing))
    image.SetDirection(tuple(np.column_stack([ROW, COL, np.cross(ROW, COL)]).ravel()))
    return image


def test_pixel_to_patient_agrees_with_simpleitk_and_inverts() -> None:
    image = _sitk_image()
    pixels = np.array([[0.0, 0.0], [12.5, -0.5], [29.5, 39.5], [3.25, 17.0]])  # (row, column)
    points = pixel_to_patient(_slice(), pixels)
    expected = [image.TransformContinuousIndexToPhysicalPoint((c, r, 0.0)) for r, c in pixels]
    np.testing.assert_allclose(points, expected, atol=1e-9)
    np.testing.assert_allclose(patient_to_pixel(_slice(), points), pixels, atol=1e-9)


def test_grid_of_slices_is_the_simpleitk_grid() -> None:
    ds = _slice()
    ds.SliceThickness = 3.0
    grid = Grid.of_slices(ds, None)
    image = _sitk_image()
    assert grid.matches(image)
    np.testing.assert_allclose(grid.normal, slice_normal(ds.ImageOrientationPatient))
    points = grid.points((5, 30, 40))
    for k, j, i in ((0, 0, 0), (4, 29, 39), (2, 7, 31)):
        np.testing.assert_allclose(
            points[k, j, i], image.TransformIndexToPhysicalPoint((i, j, k)), atol=1e-9
        )
    np.testing.assert_allclose(grid.slice_coordinate(points[3, :2, :2].reshape(-1, 3)), 3.0)
    again = Grid.of(grid.to_image(np.zeros((5, 30, 40), np.uint8)))
    assert again == grid


def _series(n: int = 3, slice_spacing: float = 3.0) -> list[Dataset]:
    normal = np.cross(ROW, COL)
    datasets = []
    for k in range(n):
        ds = _slice()
        ds.ImagePositionPatient = [float(v) for v in np.add(IPP, k * slice_spacing * normal)]
        ds.SOPInstanceUID = f"1.2.9.5.{k}"
        ds.SeriesInstanceUID = "1.2.9.4"
        ds.FrameOfReferenceUID = "1.2.9.1"
        ds.Rows, ds.Columns = 30, 40
        datasets.append(ds)
    return datasets


def test_reader_finds_a_contours_slice_by_plane_and_skips_one_on_no_slice() -> None:
    from pydicom.sequence import Sequence as DicomSequence

    from gateway.contour.reader import rasterize_rtstruct

    series = _series()
    square = np.array([[9.5, 9.5], [9.5, 20.5], [20.5, 20.5], [20.5, 9.5]])  # (row, column)
    on_slice_1 = pixel_to_patient(series[1], square)
    far_away = on_slice_1 + 30.0 * np.cross(ROW, COL)
    contours = []
    for points in (on_slice_1, far_away, np.empty((0, 3))):
        item = Dataset()
        item.ContourGeometricType = "CLOSED_PLANAR"
        item.ContourData = [float(v) for v in points.ravel()]
        contours.append(item)
    roi, roi_contour, rtstruct = Dataset(), Dataset(), Dataset()
    roi.ROINumber, roi.ROIName = 1, "Box"
    roi_contour.ReferencedROINumber = 1
    roi_contour.ContourSequence = DicomSequence(contours)
    rtstruct.StructureSetROISequence = DicomSequence([roi])
    rtstruct.ROIContourSequence = DicomSequence([roi_contour])

    mask = rasterize_rtstruct(rtstruct, series[::-1])["Box"]
    expected = np.zeros((3, 30, 40), dtype=bool)
    expected[1, 10:21, 10:21] = True
    np.testing.assert_array_equal(mask, expected)
