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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from gateway import multiframe
from gateway.db.records import SeriesInfo, SliceGeometry
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


def slice_geometry(ds: Dataset, frame: int | None = None) -> SliceGeometry:
    """The geometry attributes of one single-frame instance, or of frame ``frame`` of a
    multi-frame instance given as its :func:`gateway.multiframe.frame_header` (``None`` where
    absent)."""

    def floats(keyword: str) -> tuple[float, ...] | None:
        value = ds.get(keyword)
        return None if value is None or value == "" else tuple(float(v) for v in value)

    position = floats("ImagePositionPatient")
    spacing = floats("PixelSpacing")
    frame_uid = ds.get("FrameOfReferenceUID")
    return SliceGeometry(
        sop_instance_uid=str(ds.SOPInstanceUID),
        frame_of_reference_uid=str(frame_uid) if frame_uid else None,
        position=(position[0], position[1], position[2]) if position else None,
        orientation=floats("ImageOrientationPatient"),
        pixel_spacing=(spacing[0], spacing[1]) if spacing else None,
        rows=int(ds.Rows) if "Rows" in ds else None,
        columns=int(ds.Columns) if "Columns" in ds else None,
        frame=frame,
    )


@dataclass(frozen=True)
class Slices:
    """The headers of an image set sorted along the slice normal: ``datasets[k]`` is slice k
    (for a frame, its :func:`gateway.multiframe.frame_header`), ``frames[k]`` its frame number
    (empty for single-frame instances), ``paths[k]`` its file."""

    datasets: tuple[Dataset, ...]
    frames: tuple[int, ...]
    paths: tuple[Path, ...]
    spacing: float | None  # slice spacing in mm (None for a single slice)

    @property
    def grid(self) -> Grid:
        return Grid.of_slices(self.datasets[0], self.spacing)


def sort_slices(
    datasets: Sequence[Dataset], frames: Sequence[int] = ()
) -> tuple[tuple[Dataset, ...], float | None]:
    """Sort the slices of one image set along the slice normal (ascending): single-frame
    instances, or the frame headers of multi-frame instances with their ``frames`` numbers.

    Returns the sorted datasets and the slice spacing in mm (``None`` for a single slice).
    Raises :class:`InvalidInput` naming every problem when they do not form one volume.
    """
    order, spacing = _order(datasets, frames)
    return tuple(datasets[i] for i in order), spacing


def _order(datasets: Sequence[Dataset], frames: Sequence[int]) -> tuple[list[int], float | None]:
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise InvalidInput(f"instances of {len(series)} series given as one series")
    numbers: Sequence[int | None] = frames or [None] * len(datasets)
    if not frames:
        multi = [ds for ds in datasets if int(ds.get("NumberOfFrames", 1) or 1) > 1]
        if multi:
            raise InvalidInput(f"{len(multi)} multi-frame instance(s) given without frames")
    geometry = [slice_geometry(ds, f) for ds, f in zip(datasets, numbers, strict=True)]
    check = check_volume(geometry)
    if not check.ok:
        raise InvalidInput("not one volume: " + "; ".join(check.problems))
    index = {g.ref: i for i, g in enumerate(geometry)}
    if len(index) != len(datasets):
        raise InvalidInput("duplicate SOP Instance UIDs in one series")
    return [index[ref] for ref in check.order], check.slice_spacing


def read_headers(
    paths: Sequence[Path], frames: Mapping[str, Sequence[int]] | None = None
) -> Slices:
    """The headers of an image set's files, sorted (see :class:`Slices`). A multi-frame
    instance contributes the frames ``frames`` names for its SOP Instance UID, or all of them."""
    if not paths:
        raise InvalidInput("no instances given")
    datasets: list[Dataset] = []
    numbers: list[int] = []
    files: list[Path] = []
    seen: set[str] = set()
    multi = 0
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uid = str(ds.SOPInstanceUID)
        if uid in seen:
            raise InvalidInput("duplicate SOP Instance UIDs in one series")
        seen.add(uid)
        if not multiframe.is_multiframe(ds):
            datasets.append(ds)
            files.append(path)
            continue
        multi += 1
        wanted = (frames or {}).get(uid) or range(1, multiframe.frame_count(ds) + 1)
        for f in wanted:
            if not 1 <= f <= multiframe.frame_count(ds):
                raise InvalidInput(f"frame {f} of a multi-frame instance does not exist")
            datasets.append(multiframe.frame_header(ds, f))
            numbers.append(f)
            files.append(path)
    if multi and len(numbers) != len(datasets):
        raise InvalidInput("single-frame and multi-frame instances given as one image set")
    order, spacing = _order(datasets, numbers)
    return Slices(
        tuple(datasets[i] for i in order),
        tuple(numbers[i] for i in order) if numbers else (),
        tuple(files[i] for i in order),
        spacing,
    )


def read_series(
    paths: Sequence[Path], *, frames: Mapping[str, Sequence[int]] | None = None
) -> Volume:
    """Read an image set into a :class:`Volume`: the single-frame instances of one series (any
    order), or frames of multi-frame instances (Enhanced MR, Legacy Converted Enhanced MR: the
    frames ``frames`` names per SOP Instance UID, else all).

    Single-frame pixels are read by SimpleITK's ImageSeriesReader from the sorted file list (so
    modality rescaling is applied); frames by highdicom, only the frames wanted, with their
    modality transform (PixelValueTransformationSequence; no real-world value map). The
    geometry is then set from the headers: origin = the first sorted slice's
    ImagePositionPatient, direction from ImageOrientationPatient, z spacing from the positions
    (SpacingBetweenSlices, then SliceThickness, for a single slice).
    """
    slices = read_headers(paths, frames)
    first = slices.datasets[0]
    if slices.frames:
        array = _read_frames(slices)
        image = slices.grid.to_image(array)
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(p) for p in slices.paths])
        image = slices.grid.place(sitk.Cast(reader.Execute(), sitk.sitkFloat32))
    expected = (int(first.Columns), int(first.Rows), len(slices.datasets))
    if image.GetSize() != expected:
        raise InvalidInput(f"pixel data size {image.GetSize()} differs from headers {expected}")
    logger.debug(
        "read series %s: %d slices, spacing %s",
        first.SeriesInstanceUID,
        len(slices.datasets),
        image.GetSpacing(),
    )
    return Volume(image=image, datasets=slices.datasets, frames=slices.frames)


def read_image_set(series: SeriesInfo) -> Volume:
    """Read a recorded image set (a series, or one channel of its multi-frame instances)."""
    frames = {uid: series.frames_of(uid) for uid in series.paths}
    return read_series(
        [Path(p) for p in series.paths.values()],
        frames={uid: f for uid, f in frames.items() if f} or None,
    )


def _read_frames(slices: Slices) -> np.ndarray:
    """The frames of ``slices`` as float32 ``(z, y, x)``, each file opened once, only the
    frames wanted read (highdicom's lazy frame retrieval)."""
    import highdicom

    first = slices.datasets[0]
    out = np.empty((len(slices.frames), int(first.Rows), int(first.Columns)), dtype=np.float32)
    by_file: dict[Path, list[int]] = {}
    for k, path in enumerate(slices.paths):
        by_file.setdefault(path, []).append(k)
    for path, ks in by_file.items():
        try:
            image = highdicom.imread(path, lazy_frame_retrieval=True)
            out[ks] = image.get_frames(
                [slices.frames[k] for k in ks],
                dtype=np.float32,
                apply_real_world_transform=False,
                apply_voi_transform=False,
                apply_presentation_lut=False,  # as the classic path: stored values, rescaled
            )
        except (ValueError, IndexError, KeyError, AttributeError, TypeError, RuntimeError) as exc:
            raise InvalidInput(
                f"the frames of a multi-frame instance could not be read: {exc}"
            ) from None
    return out


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
    if primary is reference or (
        primary.series_instance_uid == reference.series_instance_uid
        and primary.image.GetSize() == reference.image.GetSize()
        and Grid.of(reference.image).matches(primary.image)
    ):
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
