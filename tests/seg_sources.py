"""Source series for the DICOM SEG tests, made from the phantom's real pixels.

``classic``: the phantom T2 as single-frame MR instances. ``multiframe``: the same slices as one
Legacy Converted Enhanced MR instance (highdicom's converter), frames in z order. ``dixon``: the
Dixon water and opposed-phase images as one Legacy Converted Enhanced MR instance, frames
interleaved (opposed-phase, water) and in descending z, so the water volume's slice k is frame
``2 * (n - k)``: a SEG on it must reference those frames and no opposed-phase frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from highdicom.legacy import LegacyConvertedEnhancedMRImage
from pydicom.dataset import Dataset

from gateway.contour.rtstruct import Provenance, Structure
from gateway.demo.phantom import LABEL_NAMES, STUDY_SERIES, make_study, write_dicom_series
from gateway.imaging import Volume, read_series
from gateway.segment.spec import CodeSpec, RoiSpec

SEED = 5
PATIENT_NAME = "Müller^Jörg"
PATIENT_ID = "PAT-ÄÖÜ-QX"
PROVENANCE = Provenance("pelvis-demo", "1.0.0", "0123456789abcdef" * 4)
CODES = {
    "Prostate": CodeSpec(scheme="SCT", value="41216001", meaning="Prostate"),
    "Bladder": CodeSpec(scheme="SCT", value="89837001", meaning="Bladder"),
}  # Rectum without a code: the generic fallback
COLOURS = {"Prostate": (255, 0, 0), "Bladder": (255, 255, 0), "Rectum": (0, 200, 255)}


@dataclass(frozen=True)
class Source:
    """A volume to segment, its truth (label map on the volume's grid) and its file(s)."""

    name: str
    volume: Volume
    labels: np.ndarray
    files: tuple[Path, ...]

    def structures(self) -> list[Structure]:
        return [
            Structure(
                self.labels == value,
                RoiSpec(name=name, color=COLOURS[name], code=CODES.get(name)),
                PROVENANCE,
            )
            for value, name in sorted(LABEL_NAMES.items())
        ]


def _acquisition(key: str):  # type: ignore[no-untyped-def]
    return next(acq for _, _, k, acq in STUDY_SERIES if k == key)


def _legacy_converted(slices: list[Dataset], path: Path, series_uid: str) -> None:
    mf = LegacyConvertedEnhancedMRImage(
        slices,
        series_instance_uid=series_uid,
        series_number=90,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
        include_dimension_index=False,  # keep the frames in the order given
    )
    mf.save_as(path, enforce_file_format=True)


def multiframe_volume(path: Path, frames: tuple[int, ...], image: sitk.Image) -> Volume:
    """A :class:`Volume` on a multi-frame instance as the gateway describes it: per slice the
    instance's top-level attributes plus its frame's position, orientation and spacing."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    shared = header.SharedFunctionalGroupsSequence[0]
    datasets = []
    for frame in frames:
        item = header.PerFrameFunctionalGroupsSequence[frame - 1]
        ds = Dataset()
        ds.update(header)
        ds.ImagePositionPatient = item.PlanePositionSequence[0].ImagePositionPatient
        groups = shared if "PlaneOrientationSequence" in shared else item
        ds.ImageOrientationPatient = groups.PlaneOrientationSequence[0].ImageOrientationPatient
        groups = shared if "PixelMeasuresSequence" in shared else item
        ds.PixelSpacing = groups.PixelMeasuresSequence[0].PixelSpacing
        datasets.append(ds)
    return Volume(image=image, datasets=tuple(datasets), frames=frames)


def make_sources(tmp: Path) -> dict[str, Source]:
    study = make_study(SEED)
    uids = {k: pydicom.uid.generate_uid() for k in ("study", "frame", "t2", "dixon")}
    common = {
        "study_uid": uids["study"],
        "frame_of_reference_uid": uids["frame"],
        "patient_name": PATIENT_NAME,
        "patient_id": PATIENT_ID,
    }
    t2 = write_dicom_series(study.t2, tmp / "t2", series_uid=uids["t2"], seed=SEED, **common)
    classic = read_series(list(t2.files))
    t2_labels = sitk.GetArrayFromImage(study.t2.labels).astype(np.uint8)
    out = {"classic": Source("classic", classic, t2_labels, t2.files)}

    slices = [pydicom.dcmread(f) for f in t2.files]  # z order, as written
    _legacy_converted(slices, tmp / "t2_lce.dcm", pydicom.uid.generate_uid())
    frames = tuple(range(1, len(slices) + 1))
    volume = multiframe_volume(tmp / "t2_lce.dcm", frames, classic.image)
    out["multiframe"] = Source("multiframe", volume, t2_labels, (tmp / "t2_lce.dcm",))

    channels = {}
    for number, key in enumerate(("water", "out_phase")):
        channels[key] = write_dicom_series(
            study.dixon[key],
            tmp / key,
            series_uid=uids["dixon"],
            series_description="t1_vibe_dixon_tra",
            series_number=7,
            seed=SEED + 1440 * (number + 1),  # other UIDs, the same acquisition time
            acquisition=_acquisition(key),
            **common,
        )
    n = len(channels["water"].files)
    order = [
        (key, k) for k in reversed(range(n)) for key in ("out_phase", "water")
    ]  # frame i + 1 is order[i]
    _legacy_converted(
        [pydicom.dcmread(channels[key].files[k]) for key, k in order],
        tmp / "dixon_lce.dcm",
        pydicom.uid.generate_uid(),
    )
    water_frames = tuple(order.index(("water", k)) + 1 for k in range(n))
    water = read_series(list(channels["water"].files))
    volume = multiframe_volume(tmp / "dixon_lce.dcm", water_frames, water.image)
    dixon_labels = sitk.GetArrayFromImage(study.dixon_labels).astype(np.uint8)
    out["dixon"] = Source("dixon", volume, dixon_labels, (tmp / "dixon_lce.dcm",))
    return out
