"""The one grid type, and the maps between pixel indices and patient coordinates (LPS, mm).

A :class:`Grid` is the physical grid of a volume in SimpleITK's conventions: ``spacing`` and
``origin`` are ``(x, y, z)``; ``direction`` is the 3x3 matrix row-major, its columns the row
direction (first ImageOrientationPatient triplet: along a row, increasing column index), the
column direction (second triplet) and the slice normal ``cross(row, column)``. An array indexed
``(z, y, x)`` = (slice, row, column) lies on it with slices sorted ascending along the normal.

The maths of one slice (pixel ``(row, column)`` <-> patient, pixel centres at integer indices,
PS3.3 C.7.6.2.1.1) and the slice normal are highdicom's (:mod:`highdicom.spatial`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from highdicom.spatial import (
    ReferenceToPixelTransformer,
    create_affine_matrix_from_attributes,
    get_normal_vector,
)
from pydicom.dataset import Dataset


def slice_normal(orientation: Sequence[float] | np.ndarray) -> np.ndarray:
    """Unit normal ``cross(row direction, column direction)`` of ImageOrientationPatient."""
    normal = get_normal_vector([float(v) for v in orientation], index_convention="RD")
    return normal / np.linalg.norm(normal)


def direction_matrix(orientation: Sequence[float] | np.ndarray) -> np.ndarray:
    """3x3 matrix whose columns are the row direction, column direction and slice normal."""
    iop = np.asarray(orientation, dtype=float)
    return np.column_stack([iop[:3], iop[3:6], slice_normal(iop)])


@dataclass(frozen=True)
class Grid:
    """The physical grid of a volume: see the module docstring for the conventions.

    An array ``(z, y, x)`` on this grid becomes a SimpleITK image with :meth:`to_image`.
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def normal(self) -> np.ndarray:
        return np.reshape(self.direction, (3, 3))[:, 2]

    @classmethod
    def of(cls, image: Any) -> Grid:
        """The grid of a SimpleITK image."""
        sx, sy, sz = image.GetSpacing()
        ox, oy, oz = image.GetOrigin()
        return cls((sx, sy, sz), (ox, oy, oz), tuple(float(v) for v in image.GetDirection()))

    @classmethod
    def of_slices(cls, first: Dataset, slice_spacing: float | None) -> Grid:
        """The grid of a series sorted along its normal, from its first slice's headers.

        ``slice_spacing`` is measured from the positions; for a single slice (``None``) it is
        SpacingBetweenSlices, then SliceThickness, then 1 mm.
        """
        if slice_spacing is None:
            slice_spacing = float(
                first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0
            )
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
        x, y, z = (float(v) for v in first.ImagePositionPatient)
        direction = direction_matrix([float(v) for v in first.ImageOrientationPatient])
        return cls(
            (col_spacing, row_spacing, slice_spacing),
            (x, y, z),
            tuple(float(v) for v in direction.ravel()),
        )

    def points(self, shape: tuple[int, int, int]) -> np.ndarray:
        """Patient coordinates of every voxel centre of an array ``shape`` (z, y, x), as an
        array ``(z, y, x, 3)``."""
        k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
        sx, sy, sz = self.spacing
        idx_mm = np.stack([i * sx, j * sy, k * sz], axis=-1)
        return np.asarray(self.origin) + idx_mm @ np.reshape(self.direction, (3, 3)).T

    def slice_coordinate(self, points: np.ndarray) -> np.ndarray:
        """The (fractional) slice index of patient points ``(n, 3)`` along the normal."""
        return (np.asarray(points) - np.asarray(self.origin)) @ self.normal / self.spacing[2]

    def place(self, image: Any) -> Any:
        """Set this grid's spacing, origin and direction on a SimpleITK image; returns it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def to_image(self, array: np.ndarray) -> Any:
        """``array`` (z, y, x) as a SimpleITK image on this grid."""
        import SimpleITK as sitk

        return self.place(sitk.GetImageFromArray(array))

    def matches(self, image: Any, tolerance_mm: float = 0.01) -> bool:
        """Whether a SimpleITK image lies on this grid (within NIfTI's float32 precision)."""
        other = Grid.of(image)
        return (
            np.allclose(other.spacing, self.spacing, rtol=1e-4, atol=1e-5)
            and np.allclose(other.origin, self.origin, rtol=1e-5, atol=tolerance_mm)
            and np.allclose(other.direction, self.direction, atol=1e-4)
        )


def _plane(ds: Dataset) -> tuple[list[float], list[float], list[float]]:
    return (
        [float(v) for v in ds.ImagePositionPatient],
        [float(v) for v in ds.ImageOrientationPatient],
        [float(v) for v in ds.PixelSpacing],
    )


def pixel_to_patient(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """``(row, column)`` pixel coordinates ``(n, 2)`` on slice ``ds`` -> patient ``(n, 3)``.

    Coordinates may be fractional; pixel centres are at integers.
    """
    position, orientation, spacing = _plane(ds)
    affine = create_affine_matrix_from_attributes(position, orientation, spacing)
    # highdicom indexes (column, row, slice)
    return np.asarray(pixels, dtype=float)[:, ::-1] @ affine[:3, :2].T + affine[:3, 3]


def patient_to_pixel(ds: Dataset, points: np.ndarray) -> np.ndarray:
    """Patient points ``(n, 3)`` -> fractional ``(row, column)`` pixel coordinates ``(n, 2)`` on
    the plane of slice ``ds`` (the inverse of :func:`pixel_to_patient`)."""
    position, orientation, spacing = _plane(ds)
    to_pixel = ReferenceToPixelTransformer(position, orientation, spacing, round_output=False)
    return to_pixel(np.asarray(points, dtype=float))[:, 1::-1]
