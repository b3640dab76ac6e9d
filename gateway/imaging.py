"""Pure volume building: the single-frame instances of one series -> a SimpleITK image.

Array contract: ``sitk.GetArrayFromImage(volume.image)`` is indexed ``(z, y, x)`` = (slice,
row, column); the image's spacing is ``(x, y, z)`` = (column spacing, row spacing, slice
spacing) in mm, i.e. ``(PixelSpacing[1], PixelSpacing[0], slice spacing)``. The direction's
columns are the row direction (first ImageOrientationPatient triplet), the column direction
(second triplet) and the slice normal; slices are sorted ascending along that normal
(see :mod:`gateway.grid` and :mod:`gateway.study.geometry`), so an oblique acquisition keeps
its orientation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from gateway.db.records import SliceGeometry
from gateway.errors import InvalidInput
from gateway.grid import Grid
from gateway.study.geometry import check_volume

logger = logging.getLogger(__name__)

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


@dataclass(frozen=True)
class Volume:
    """One series as a volume.

    ``image`` is float32 with the geometry described in the module docstring; ``datasets`` are
    the instances' headers (no pixel data) in the image's z order, so ``datasets[k]`` is the
    slice ``GetArrayFromImage(image)[k]``.
    """

    image: sitk.Image
    datasets: tuple[Dataset, ...]
    # Per slice, the 1-based frame number in its multi-frame instance (``datasets[k]`` then holds
    # that instance's top-level headers with the frame's ImagePositionPatient,
    # ImageOrientationPatient and PixelSpacing); empty for a series of single-frame instances.
    frames: tuple[int, ...] = ()

    def frame_of(self, k: int) -> int | None:
        """The frame number of slice ``k`` in its multi-frame instance (None: single-frame)."""
        return self.frames[k] if self.frames else None

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(str(ds.SOPInstanceUID) for ds in self.datasets)

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].FrameOfReferenceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)


def slice_geometry(ds: Dataset) -> SliceGeometry:
    """The geometry attributes of one single-frame instance (``None`` where absent)."""

    def floats(keyword: str) -> tuple[float, ...] | None:
        value = ds.get(keyword)
        return None if value is None or value == "" else tuple(float(v) for v in value)

    position = floats("ImagePositionPatient")
    spacing = floats("PixelSpacing")
    frame = ds.get("FrameOfReferenceUID")
    return SliceGeometry(
        sop_instance_uid=str(ds.SOPInstanceUID),
        frame_of_reference_uid=str(frame) if frame else None,
        position=(position[0], position[1], position[2]) if position else None,
        orientation=floats("ImageOrientationPatient"),
        pixel_spacing=(spacing[0], spacing[1]) if spacing else None,
        rows=int(ds.Rows) if "Rows" in ds else None,
        columns=int(ds.Columns) if "Columns" in ds else None,
    )


def sort_slices(datasets: Sequence[Dataset]) -> tuple[tuple[Dataset, ...], float | None]:
    """Sort the instances of one series along the slice normal (ascending).

    Returns the sorted datasets and the slice spacing in mm (``None`` for a single slice).
    Raises :class:`InvalidInput` naming every problem when they do not form one volume.
    """
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise InvalidInput(f"instances of {len(series)} series given as one series")
    multi = [ds for ds in datasets if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        raise InvalidInput(f"{len(multi)} multi-frame instance(s): only single-frame is supported")
    check = check_volume([slice_geometry(ds) for ds in datasets])
    if not check.ok:
        raise InvalidInput("not one volume: " + "; ".join(check.problems))
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    if len(by_uid) != len(datasets):
        raise InvalidInput("duplicate SOP Instance UIDs in one series")
    return tuple(by_uid[uid] for uid in check.order), check.slice_spacing


def read_series(paths: Sequence[Path]) -> Volume:
    """Read the single-frame instances of one series (any order) into a :class:`Volume`.

    The pixels are read by SimpleITK's ImageSeriesReader from the sorted file list (so modality
    rescaling is applied); the geometry is then set from the headers: origin = the first sorted
    slice's ImagePositionPatient, direction from ImageOrientationPatient, z spacing from the
    positions (SpacingBetweenSlices, then SliceThickness, for a single slice).
    """
    if not paths:
        raise InvalidInput("no instances given")
    headers: dict[str, tuple[Path, Dataset]] = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        headers[str(ds.SOPInstanceUID)] = (path, ds)
    if len(headers) != len(paths):
        raise InvalidInput("duplicate SOP Instance UIDs in one series")
    datasets, spacing = sort_slices([ds for _, ds in headers.values()])
    files = [str(headers[str(ds.SOPInstanceUID)][0]) for ds in datasets]

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    image = Grid.of_slices(datasets[0], spacing).place(
        sitk.Cast(reader.Execute(), sitk.sitkFloat32)
    )

    first = datasets[0]
    expected = (int(first.Columns), int(first.Rows), len(datasets))
    if image.GetSize() != expected:
        raise InvalidInput(f"pixel data size {image.GetSize()} differs from headers {expected}")
    logger.debug(
        "read series %s: %d slices, spacing %s",
        first.SeriesInstanceUID,
        len(datasets),
        image.GetSpacing(),
    )
    return Volume(image=image, datasets=datasets)


def resample_to(
    image: sitk.Image,
    reference: sitk.Image,
    *,
    interpolator: Literal["linear", "nearest"] = "linear",
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid in physical (patient) space.

    Points of the reference grid outside ``image`` get ``default_value``; the pixel type of
    ``image`` is kept (use ``"nearest"`` for label maps).
    """
    return sitk.Resample(
        image,
        reference,
        sitk.Transform(),
        _INTERPOLATORS[interpolator],
        default_value,
        image.GetPixelID(),
    )


def volume_cc(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a boolean mask in cm³; ``spacing`` is the voxel size in mm (any axis order)."""
    return float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0


def channels_on(volumes: Sequence[Volume], primary_index: int) -> tuple[Volume, list[np.ndarray]]:
    """A model's inputs: the primary volume and every channel as float32 (z, y, x) on the
    primary grid, the other channels resampled in physical space (linear, 0 outside their
    volume). Assembly has checked that all channels share the primary's frame of reference."""
    primary = volumes[primary_index]
    arrays = []
    for vol in volumes:
        image = vol.image if vol is primary else resample_to(vol.image, primary.image)
        arrays.append(sitk.GetArrayFromImage(image).astype(np.float32, copy=False))
    return primary, arrays


def labels_onto(label_map: np.ndarray, primary: Volume, reference: Volume) -> np.ndarray:
    """A label map made on ``primary`` moved onto ``reference`` (nearest neighbour) when the
    model ran on another series of the same frame of reference."""
    if primary is reference or primary.series_instance_uid == reference.series_instance_uid:
        return label_map
    if primary.frame_of_reference_uid != reference.frame_of_reference_uid:
        raise InvalidInput(
            "a model ran on a series in another frame of reference than the structure set's "
            "reference series"
        )
    image = sitk.GetImageFromArray(label_map)
    image.CopyInformation(primary.image)
    moved = resample_to(image, reference.image, interpolator="nearest")
    return sitk.GetArrayFromImage(moved)
