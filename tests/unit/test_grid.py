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
