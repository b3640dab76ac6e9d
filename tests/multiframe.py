"""Multi-frame MR test data made from real pixels, written as Part 10 files.

- :func:`legacy_enhanced`: classic MR slices -> a Legacy Converted Enhanced MR instance
  (highdicom's converter);
- :func:`enhanced_mr`: our own Enhanced MR Image Storage writer: one or more classic series of
  one geometry (the channels) -> one instance whose frames carry their channel's FrameType,
  with hostile options (frames shuffled, a frame without its position, a second stack in
  another orientation, NumberOfFrames one more than the pixel data holds);
- :func:`mdixon_phantom`: the phantom study's T2 as a classic series and its four Dixon images
  (in-phase, opposed-phase, water, fat) as frames of ONE Enhanced MR instance, as an mDixon
  scanner sends them.

Each returns the truth: per frame in file order, the channel, source slice, stack and position.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from gateway.demo.phantom import (
    STUDY_SERIES,
    MRAcquisition,
    PhantomStudy,
    SeriesInfo,
    make_study,
    write_dicom_series,
    write_study,
)
from gateway.grid import slice_normal
from tests.multiframe_groups import (
    dimensions,
    factor,
    frame_content,
    frame_macros,
    item,
    top_level,
    uid,
    write,
)

LEGACY_ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.4"
# The mDixon channels in frame order, with the classic phantom's ImageType words.
DIXON_CHANNELS = ("in_phase", "out_phase", "water", "fat")
_FAT = MRAcquisition(("DERIVED", "PRIMARY", "DIXON", "FAT"), "GR", "*fl3d2", "3D", 7.0, 2.46, 1)


@dataclass(frozen=True)
class Frame:
    """One frame of a written instance (frame number = its index in ``MultiFrame.frames`` + 1).

    ``slice`` indexes the channel's source slices sorted ascending along their normal;
    ``position`` is what the frame's PlanePositionSequence says (None where it was dropped).
    """

    channel: int
    slice: int
    stack: int
    source_uid: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...]


@dataclass(frozen=True)
class MultiFrame:
    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    frames: tuple[Frame, ...]
    declared_frames: int  # NumberOfFrames as written


def _datasets(items: Sequence[Dataset | Path]) -> list[Dataset]:
    return [item if isinstance(item, Dataset) else dcmread(item) for item in items]


def _floats(value: object) -> tuple[float, ...]:
    return tuple(float(v) for v in value)  # type: ignore[attr-defined]


def _key(position: object) -> tuple[float, ...]:
    return tuple(round(v, 2) for v in _floats(position))


def sort_along_normal(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Classic slices ascending along ``cross(row, column)``."""
    normal = slice_normal(_floats(datasets[0].ImageOrientationPatient))
    return sorted(datasets, key=lambda ds: float(np.dot(_floats(ds.ImagePositionPatient), normal)))


# ---------------------------------------------------------------------------------------------
# Legacy Converted Enhanced MR (highdicom)


def legacy_enhanced(classic: Sequence[Dataset | Path], out_path: Path) -> MultiFrame:
    """Convert one classic MR series into a Legacy Converted Enhanced MR instance.

    The instance gets its own Series and SOP Instance UIDs (derived from the source series) and
    keeps the Study and Frame of Reference UIDs. ReferencedImageSequence (the scanner's links to
    its localizers) is left out: converted, it would need a ReferencedImageEvidenceSequence
    naming series we do not have.
    """
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    sources = sort_along_normal(_datasets(classic))
    cleaned = []
    for ds in sources:
        ds = copy.deepcopy(ds)
        if "ReferencedImageSequence" in ds:
            del ds.ReferencedImageSequence
        cleaned.append(ds)
    series_uid = uid(sources[0].SeriesInstanceUID, "legacy converted")
    image = LegacyConvertedEnhancedMRImage(
        cleaned,
        series_instance_uid=series_uid,
        series_number=int(sources[0].get("SeriesNumber") or 1) + 100,
        sop_instance_uid=uid(series_uid, "instance"),
        instance_number=1,
    )
    # highdicom lists the source slices in the Common Instance Reference module, which dciodvfy
    # rejects ("ReferencedSeriesSequence present but Instance does not reference Instances":
    # it does not count ConversionSourceAttributesSequence as a reference); the per-frame
    # conversion sources stay.
    del image.ReferencedSeriesSequence
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(out_path, enforce_file_format=True)
    return _truth_from_file(out_path, [sources])


def _truth_from_file(path: Path, channels: Sequence[Sequence[Dataset]]) -> MultiFrame:
    """The frames of a written instance matched to their source slices by position."""
    ds = dcmread(path, stop_before_pixels=True)
    shared = ds.SharedFunctionalGroupsSequence[0]
    by_position = {
        _key(src.ImagePositionPatient): (c, k, str(src.SOPInstanceUID))
        for c, slices in enumerate(channels)
        for k, src in enumerate(slices)
    }
    frames = []
    for group in ds.PerFrameFunctionalGroupsSequence:
        position = _floats(group.PlanePositionSequence[0].ImagePositionPatient)
        plane = group if "PlaneOrientationSequence" in group else shared
        orientation = _floats(plane.PlaneOrientationSequence[0].ImageOrientationPatient)
        c, k, source_uid = by_position[_key(position)]
        stack = int(group.FrameContentSequence[0].get("StackID", 1) or 1)
        frames.append(Frame(c, k, stack, source_uid, position, orientation))  # type: ignore[arg-type]
    return MultiFrame(
        path,
        str(ds.SOPInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.FrameOfReferenceUID),
        tuple(frames),
        int(ds.NumberOfFrames),
    )


# ---------------------------------------------------------------------------------------------
# Enhanced MR Image Storage, our own writer


def default_frame_type(image_type: Sequence[str]) -> tuple[str, str, str, str]:
    """The FrameType of a frame made from a classic slice of ``image_type``: ORIGINAL slices
    become (ORIGINAL, PRIMARY, VOLUME, NONE) (a classic value 3 such as Siemens' 'M' is no
    Enhanced MR image flavour); DERIVED ones keep their words (DIXON, WATER, ...)."""
    values = [str(v) for v in image_type] + ["NONE"] * 4
    if values[0] == "ORIGINAL":
        return ("ORIGINAL", values[1] or "PRIMARY", "VOLUME", "NONE")
    return (values[0], values[1] or "PRIMARY", values[2] or "NONE", values[3] or "NONE")


def enhanced_mr(
    channels: Sequence[Sequence[Dataset | Path]],
    out_path: Path,
    *,
    frame_types: Sequence[Sequence[str]] | None = None,
    contrast: str = "UNKNOWN",
    series_number: int = 100,
    series_description: str = "Enhanced MR (test data)",
    shuffle_seed: int | None = None,
    drop_position_of: int | None = None,
    rotate_second_stack: bool = False,
    extra_declared_frames: int = 0,
) -> MultiFrame:
    """Write the classic series ``channels`` (same slice positions, orientation and size) as ONE
    Enhanced MR Image Storage instance, Explicit VR Little Endian, BitsAllocated 16.

    Frames go channel by channel, each channel's slices ascending along the normal, unless
    ``shuffle_seed`` permutes them. Frame *c*'s FrameType is ``frame_types[c]`` (default: from
    the channel's ImageType, :func:`default_frame_type`); ``contrast`` is the
    AcquisitionContrast (T1, T2, ...). Dimensions: StackID, InStackPositionNumber and, for more
    than one channel, FrameType (index = channel + 1). Study, patient and Frame of Reference
    come from the first channel; Series and SOP Instance UIDs are new (derived from the
    sources and ``out_path``'s name).

    Hostile options: ``drop_position_of`` (a frame number, file order) loses its
    PlanePositionSequence; ``rotate_second_stack`` makes the upper half of each channel's slices
    stack 2, turned 90 degrees (row along the old normal: sagittal for an axial series), placed
    along their new normal; ``extra_declared_frames`` is added to NumberOfFrames (the pixel
    data and the per-frame groups keep the real count).
    """
    sources = [sort_along_normal(_datasets(ch)) for ch in channels]
    _check_same_geometry(sources)
    types = [tuple(t) for t in frame_types] if frame_types else None
    types = types or [default_frame_type(ch[0].get("ImageType", ["ORIGINAL"])) for ch in sources]
    first = sources[0][0]
    series_uid = uid(first.SeriesInstanceUID, out_path.name, "enhanced", len(sources))

    frames, groups, pixels = [], [], []
    for c, slices in enumerate(sources):
        for k, src in enumerate(slices):
            stack, in_stack, position, orientation = _plane(slices, k, rotate_second_stack)
            group = frame_macros(src, types[c], contrast)
            index = [stack, in_stack] + ([c + 1] if len(sources) > 1 else [])
            group["FrameContentSequence"] = frame_content(src, stack, in_stack, index)
            group["PlanePositionSequence"] = item(ImagePositionPatient=list(position))
            group["PlaneOrientationSequence"] = item(ImageOrientationPatient=list(orientation))
            groups.append(group)
            frames.append(Frame(c, k, stack, str(src.SOPInstanceUID), position, orientation))
            pixels.append(src.pixel_array)
    order = list(range(len(frames)))
    if shuffle_seed is not None:
        order = [int(i) for i in np.random.default_rng(shuffle_seed).permutation(len(frames))]
    frames, groups, pixels = (
        [frames[i] for i in order],
        [groups[i] for i in order],
        [pixels[i] for i in order],
    )
    if drop_position_of is not None:
        del groups[drop_position_of - 1]["PlanePositionSequence"]
        frames[drop_position_of - 1] = replace(frames[drop_position_of - 1], position=None)

    ds = top_level(first, types, contrast, series_uid, series_number, series_description)
    shared, per_frame = factor(groups)
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.update(dimensions(uid(series_uid, "dimensions"), by_channel=len(sources) > 1))
    ds.NumberOfFrames = len(frames) + extra_declared_frames
    bits = max(int(s[0].get("BitsStored", 16)) for s in sources)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(first.PixelRepresentation)
    dtype = "<i2" if ds.PixelRepresentation else "<u2"
    ds.PixelData = np.stack(pixels).astype(dtype).tobytes()
    write(ds, out_path)
    return MultiFrame(
        out_path,
        str(ds.SOPInstanceUID),
        series_uid,
        str(ds.StudyInstanceUID),
        str(ds.FrameOfReferenceUID),
        tuple(frames),
        int(ds.NumberOfFrames),
    )


def _check_same_geometry(sources: list[list[Dataset]]) -> None:
    def geometry(ds: Dataset) -> tuple[object, ...]:
        return (
            np.round(_floats(ds.ImagePositionPatient), 3).tolist(),
            np.round(_floats(ds.ImageOrientationPatient), 5).tolist(),
            int(ds.Rows),
            int(ds.Columns),
        )

    reference = [geometry(ds) for ds in sources[0]]
    for c, slices in enumerate(sources[1:], start=2):
        if [geometry(ds) for ds in slices] != reference:
            raise ValueError(f"channel {c} has another geometry than channel 1")


def _plane(
    slices: list[Dataset], k: int, rotate_second_stack: bool
) -> tuple[int, int, tuple[float, float, float], tuple[float, ...]]:
    """(StackID, InStackPositionNumber, position, orientation) of slice ``k``."""
    position = _floats(slices[k].ImagePositionPatient)
    orientation = _floats(slices[k].ImageOrientationPatient)
    half = len(slices) // 2
    if not rotate_second_stack or k < half:
        return 1, k + 1, position, orientation  # type: ignore[return-value]
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    new_orientation = (*normal, *col)
    start = np.array(_floats(slices[half].ImagePositionPatient))
    spacing = float(slices[k].get("SpacingBetweenSlices") or slices[k].SliceThickness)
    new_position = start + (k - half) * spacing * np.cross(normal, col)
    return (
        2,
        k - half + 1,
        tuple(round(float(v), 6) for v in new_position),  # type: ignore[return-value]
        tuple(round(float(v), 8) for v in new_orientation),
    )


# ---------------------------------------------------------------------------------------------
# The mDixon phantom


@dataclass(frozen=True)
class DixonPhantom:
    """:func:`mdixon_phantom`'s files and truth. ``dixon.frames[i].channel`` indexes
    :data:`DIXON_CHANNELS`; ``study.t2.labels`` and ``study.dixon_labels`` are the truth label
    maps on the T2 and Dixon grids (0 background, 1 prostate, 2 bladder, 3 rectum)."""

    study: PhantomStudy
    t2: SeriesInfo
    dixon: MultiFrame
    frame_types: dict[str, tuple[str, ...]]

    def channel_array(self, name: str) -> np.ndarray:
        """The Dixon image ``name`` as stored values (z, y, x), slices ascending along z."""
        return sitk.GetArrayFromImage(self.study.dixon[name]).astype(np.uint16)

    def labels(self, grid: str = "t2") -> np.ndarray:
        image = self.study.t2.labels if grid == "t2" else self.study.dixon_labels
        return sitk.GetArrayFromImage(image)


def mdixon_phantom(seed: int, out_dir: Path, *, shuffle_seed: int | None = None) -> DixonPhantom:
    """The phantom study of ``seed`` as a scanner with mDixon sends it: ``out_dir/t2/`` the
    classic T2 series (as :func:`gateway.demo.phantom.write_study` writes it) and
    ``out_dir/dixon/MR_dixon.dcm`` one Enhanced MR instance with 4 x 22 frames, in-phase,
    opposed-phase, water and fat, whose FrameType is the classic phantom's ImageType (DERIVED,
    PRIMARY, DIXON, WATER / FAT / IN_PHASE / OPP_PHASE), in the T2's study and frame of
    reference. The fat image is the phantom's own fat component (``study.dixon['fat']``)."""
    study = make_study(seed)
    t2 = write_study(study, out_dir, seed=seed, series=("t2",))["t2"]
    acquisitions = {key: acq for _, _, key, acq in STUDY_SERIES} | {"fat": _FAT}
    channels = []
    with tempfile.TemporaryDirectory() as tmp:
        for c, name in enumerate(DIXON_CHANNELS):
            info = write_dicom_series(
                study.dixon[name],
                Path(tmp) / name,
                study_uid=t2.study_uid,
                frame_of_reference_uid=t2.frame_of_reference_uid,
                series_description=f"t1_vibe_dixon_tra_{name}",
                series_number=50 + c,
                seed=seed * 10 + 50 + c,
                acquisition=acquisitions[name],
            )
            channels.append([dcmread(f) for f in info.files])
    types = [acquisitions[name].image_type for name in DIXON_CHANNELS]
    dixon = enhanced_mr(
        channels,
        out_dir / "dixon" / "MR_dixon.dcm",
        frame_types=types,
        contrast="T1",
        series_number=5,
        series_description="t1_vibe_mdixon_tra",
        shuffle_seed=shuffle_seed,
    )
    return DixonPhantom(study, t2, dixon, dict(zip(DIXON_CHANNELS, types, strict=True)))
