"""DICOM SEG building: masks -> SEG -> masks (highdicom and a pydicom-only reader), source
references per slice and frame, codes, colours, provenance, deterministic UIDs, empty ROIs.

Sources (tests/seg_sources.py): the phantom T2 as a classic series, as one Legacy Converted
Enhanced MR instance, and the Dixon water channel inside an instance that also holds the
opposed-phase frames at the same positions (interleaved, descending z).
"""

from __future__ import annotations

import logging
import warnings
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from gateway.contour.reader import dice
from gateway.contour.rtstruct import Structure, rtstruct_uids, write_dataset
from gateway.contour.seg import GENERIC_CATEGORY, GENERIC_TYPE, build_seg, seg_uids
from gateway.contour.structures import clinic_roi
from gateway.errors import ModelError
from gateway.grid import slice_normal
from gateway.imaging import Volume
from gateway.job import Provenance
from gateway.segment.registry import read_yaml
from gateway.segment.spec import ModelSpec, RoiSpec
from tests.conftest import REPO
from tests.seg_sources import (
    CODES,
    COLOURS,
    PATIENT_ID,
    PATIENT_NAME,
    PROVENANCE,
    Source,
    make_sources,
)

UID_ROOT = "1.2.826.0.1.3680043.8.498."
NOW = datetime(2024, 5, 6, 7, 8, 9)
KINDS = ("classic", "multiframe", "dixon")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    return make_sources(tmp_path_factory.mktemp("seg_sources"))


def build(source: Source, structures: list[Structure] | None = None, **kw: object) -> Dataset:
    args: dict[str, object] = {
        "uid_root": UID_ROOT,
        "manufacturer": "AIRCON",
        "series_description": "AI SEG - REVIEW REQUIRED",
        "input_series_uids": [source.volume.series_instance_uid],
        "now": NOW,
        **kw,
    }
    return build_seg(source.volume, structures or source.structures(), **args)  # type: ignore[arg-type]


def written(ds: Dataset, path: Path) -> Path:
    write_dataset(ds, path)
    return path


def truth(source: Source) -> dict[str, np.ndarray]:
    return {st.roi.name: st.mask for st in source.structures()}


# ---------------------------------------------------------------------------------------------
# A reader with pydicom and numpy only


def read_with_pydicom(path: Path, source: Source) -> dict[str, np.ndarray]:
    """Each segment's mask on the source volume: frames decoded (bit-packed little-endian, or
    fractional bytes at >= half the maximum), placed by PlanePositionSequence onto the slice
    whose position along the normal matches, segment from SegmentIdentificationSequence."""
    ds = pydicom.dcmread(path)
    n, rows, cols = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    raw = np.frombuffer(ds.PixelData, dtype=np.uint8)
    if ds.BitsAllocated == 1:
        bits = np.unpackbits(raw, bitorder="little")[: n * rows * cols]
        frames = bits.reshape(n, rows, cols).astype(bool)
    else:
        assert ds.BitsAllocated == 8
        frames = raw[: n * rows * cols].reshape(n, rows, cols) >= ds.MaximumFractionalValue / 2
    shared = ds.SharedFunctionalGroupsSequence[0]
    normal = slice_normal([float(v) for v in shared.PlaneOrientationSequence[0][0x00200037].value])
    volume = source.volume
    positions = np.array([[float(v) for v in d.ImagePositionPatient] for d in volume.datasets])
    along = positions @ normal
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    shape = (len(volume.datasets), rows, cols)
    out = {name: np.zeros(shape, dtype=bool) for name in labels.values()}
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ident = item if "SegmentIdentificationSequence" in item else shared
        number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        k = int(np.argmin(np.abs(along - ipp @ normal)))
        assert np.allclose(ipp, positions[k], atol=1e-3), "frame off the source slice"
        out[labels[number]][k] |= frames[i]
    return out


def frame_references(ds: Dataset) -> list[tuple[str, int | None]]:
    """Per SEG frame, its one source reference (instance UID, frame number or None)."""
    refs = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        (derivation,) = item.DerivationImageSequence
        (src,) = derivation.SourceImageSequence
        frame = src.get("ReferencedFrameNumber")
        refs.append((str(src.ReferencedSOPInstanceUID), None if frame is None else int(frame)))
    return refs


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("fractional", [False, True], ids=["binary", "fractional"])
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_dice_one(
    sources: dict[str, Source], kind: str, fractional: bool, tmp_path: Path
) -> None:
    source = sources[kind]
    path = written(build(source, fractional=fractional), tmp_path / "seg.dcm")
    expected = truth(source)
    assert all(m.any() for m in expected.values())

    seg = hd.seg.segread(path)
    assert seg.SegmentationType == ("FRACTIONAL" if fractional else "BINARY")
    numbers = {seg.get_segment_description(n).SegmentLabel: n for n in seg.segment_numbers}
    assert sorted(numbers) == sorted(expected)
    volume = source.volume
    for name, mask in expected.items():
        if volume.frames:
            pixels = seg.get_pixels_by_source_frame(
                str(volume.datasets[0].SOPInstanceUID),
                source_frame_numbers=list(volume.frames),
                segment_numbers=[numbers[name]],
                assert_missing_frames_are_empty=True,
            )
        else:
            pixels = seg.get_pixels_by_source_instance(
                list(volume.sop_instance_uids),
                segment_numbers=[numbers[name]],
                assert_missing_frames_are_empty=True,
            )
        assert dice(pixels[..., 0] >= 0.5, mask) == 1.0, name

    by_pydicom = read_with_pydicom(path, source)
    assert {name: dice(by_pydicom[name], mask) for name, mask in expected.items()} == {
        name: 1.0 for name in expected
    }


@pytest.mark.parametrize("kind", KINDS)
def test_each_frame_references_its_source_slice(sources: dict[str, Source], kind: str) -> None:
    source = sources[kind]
    volume = source.volume
    ds = build(source)
    normal = slice_normal([float(v) for v in volume.datasets[0].ImageOrientationPatient])
    position_of = {
        (str(d.SOPInstanceUID), volume.frame_of(k)): np.array(
            [float(v) for v in d.ImagePositionPatient]
        )
        for k, d in enumerate(volume.datasets)
    }
    refs = frame_references(ds)
    for item, ref in zip(ds.PerFrameFunctionalGroupsSequence, refs, strict=True):
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        assert ref in position_of, f"{ref} is no slice of the volume"
        assert np.allclose(position_of[ref], ipp, atol=1e-3)
        assert abs((position_of[ref] - ipp) @ normal) < 1e-3
    used = {
        k for k, d in enumerate(volume.datasets) if any(m[k].any() for m in truth(source).values())
    }
    assert set(refs) == {(str(volume.datasets[k].SOPInstanceUID), volume.frame_of(k)) for k in used}
    (series,) = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == volume.series_instance_uid
    referenced = {str(i.ReferencedSOPInstanceUID) for i in series.ReferencedInstanceSequence}
    assert referenced == set(volume.sop_instance_uids)
    if kind == "dixon":
        # The instance holds opposed-phase frames at the same positions: none is referenced.
        assert {frame for _, frame in refs} <= set(volume.frames)
        assert all(frame % 2 == 0 for _, frame in refs)


def test_multiframe_source_read_back_frames_are_the_volume_slices(
    sources: dict[str, Source],
) -> None:
    """The test data itself: frame ``frames[k]`` of the multi-frame instance is slice k."""
    for kind in ("multiframe", "dixon"):
        source = sources[kind]
        pixels = pydicom.dcmread(source.files[0]).pixel_array
        slices = np.stack([pixels[f - 1] for f in source.volume.frames])
        assert np.array_equal(slices, sitk.GetArrayFromImage(source.volume.image)), kind


def test_volume_headers_are_not_changed(sources: dict[str, Source]) -> None:
    for kind in KINDS:
        volume = sources[kind].volume
        before = [(d.to_json(), len(d)) for d in volume.datasets[:3]]
        build(sources[kind])
        assert [(d.to_json(), len(d)) for d in volume.datasets[:3]] == before


# ---------------------------------------------------------------------------------------------
# Content


def test_segments_codes_colours_and_provenance(sources: dict[str, Source]) -> None:
    ds = build(sources["classic"])
    assert ds.Modality == "SEG"
    assert ds.SOPClassUID == pydicom.uid.SegmentationStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SeriesDescription == "AI SEG - REVIEW REQUIRED"
    assert ds.ContentLabel == "AI_UNAPPROVED"
    assert "review" in ds.ContentDescription
    assert ds.StudyInstanceUID == sources["classic"].volume.study_instance_uid
    assert ds.FrameOfReferenceUID == sources["classic"].volume.frame_of_reference_uid
    assert str(ds.InstanceCreationDate) == str(ds.SeriesDate) == "20240506"

    segments = {s.SegmentLabel: s for s in ds.SegmentSequence}
    assert list(segments) == ["Prostate", "Bladder", "Rectum"]
    for name, s in segments.items():
        code = CODES.get(name, GENERIC_TYPE)
        (prop,) = s.SegmentedPropertyTypeCodeSequence
        assert (prop.CodingSchemeDesignator, prop.CodeValue, prop.CodeMeaning) == (
            code.scheme,
            code.value,
            code.meaning,
        )
        (category,) = s.SegmentedPropertyCategoryCodeSequence
        assert (category.CodeValue, category.CodeMeaning) == (
            GENERIC_CATEGORY.value,
            "Anatomical Structure",
        )
        rgb = hd.color.CIELabColor.from_dicom_value(s.RecommendedDisplayCIELabValue).to_rgb()
        assert np.allclose(rgb, COLOURS[name], atol=1), (name, rgb)
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        (algorithm,) = s.SegmentationAlgorithmIdentificationSequence
        assert algorithm.AlgorithmName == PROVENANCE.model_name
        assert algorithm.AlgorithmVersion == PROVENANCE.model_version
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        assert PROVENANCE.weights_sha256 in algorithm.AlgorithmParameters

    processing = [
        e
        for e in ds.ContributingEquipmentSequence
        if e.ManufacturerModelName == PROVENANCE.model_name
    ]
    (model,) = processing
    assert PROVENANCE.model_version in model.SoftwareVersions
    assert PROVENANCE.weights_sha256 in model.ContributionDescription
    assert str(model.ContributionDateTime) == "20240506070809"
    assert PROVENANCE.weights_sha256 in ds.ImageComments


def test_one_segment_per_model_with_its_algorithm(sources: dict[str, Source]) -> None:
    source = sources["classic"]
    other = Provenance("prostate-zones", "2.1", "f" * 64)
    structures = source.structures()
    structures[0] = Structure(structures[0].mask, structures[0].roi, other)
    ds = build(source, structures)
    algorithms = {
        s.SegmentLabel: s.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName
        for s in ds.SegmentSequence
    }
    assert algorithms == {
        "Prostate": "prostate-zones",
        "Bladder": "pelvis-demo",
        "Rectum": "pelvis-demo",
    }
    models = {e.ManufacturerModelName for e in ds.ContributingEquipmentSequence}
    assert {"prostate-zones", "pelvis-demo"} <= models


# ---------------------------------------------------------------------------------------------
# UIDs


def test_same_inputs_give_the_same_object(sources: dict[str, Source], tmp_path: Path) -> None:
    for kind in ("classic", "dixon"):
        first = written(build(sources[kind]), tmp_path / f"{kind}1.dcm")
        second = written(build(sources[kind]), tmp_path / f"{kind}2.dcm")
        assert first.read_bytes() == second.read_bytes(), kind


def test_uids_deterministic_and_distinct_from_the_rtstruct(sources: dict[str, Source]) -> None:
    volume = sources["classic"].volume
    study, series = volume.study_instance_uid, [volume.series_instance_uid]
    ds = build(sources["classic"])
    assert (ds.SOPInstanceUID, ds.SeriesInstanceUID) == seg_uids(
        UID_ROOT, study, series, [PROVENANCE]
    )
    assert seg_uids(UID_ROOT, study, series, PROVENANCE) == seg_uids(
        UID_ROOT, study, series, [PROVENANCE]
    )
    from gateway.config import RtstructConfig

    rt = rtstruct_uids(RtstructConfig(uid_root=UID_ROOT), study, series, PROVENANCE)
    assert not set(rt) & set(seg_uids(UID_ROOT, study, series, PROVENANCE))
    fractional = build(sources["classic"], fractional=True)
    assert fractional.SOPInstanceUID != ds.SOPInstanceUID
    newer = Provenance(PROVENANCE.model_name, "1.0.1", PROVENANCE.weights_sha256)
    assert seg_uids(UID_ROOT, study, series, newer)[0] != ds.SOPInstanceUID
    for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID):
        assert uid.startswith(UID_ROOT) and len(uid) <= 64


# ---------------------------------------------------------------------------------------------
# Empty ROIs, wrong shapes, patient data


def test_roi_without_voxels_is_left_out(sources: dict[str, Source]) -> None:
    source = sources["classic"]
    structures = source.structures()
    empty = Structure(
        np.zeros_like(structures[0].mask), RoiSpec(name="Urethra", color=(255, 0, 255)), PROVENANCE
    )
    ds = build(source, [structures[0], empty, structures[2]])
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["Prostate", "Rectum"]
    assert [int(s.SegmentNumber) for s in ds.SegmentSequence] == [1, 2]
    assert "Urethra" in ds.ImageComments
    with pytest.raises(ModelError):
        build(source, [empty])


def test_mask_of_another_shape_is_refused(sources: dict[str, Source]) -> None:
    source = sources["classic"]
    st = source.structures()[0]
    with pytest.raises(ValueError, match="shape"):
        build(source, [Structure(st.mask[1:], st.roi, PROVENANCE)])


def test_non_ascii_patient_kept_and_never_logged(
    sources: dict[str, Source], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = sources["dixon"]
    structures = source.structures()
    empty = Structure(
        np.zeros_like(structures[0].mask), RoiSpec(name="Blase leer", color=(1, 2, 3)), PROVENANCE
    )
    with caplog.at_level(logging.DEBUG):
        path = written(build(source, [*structures, empty]), tmp_path / "seg.dcm")
    assert "Blase leer" in caplog.text  # the left-out ROI is logged ...
    for secret in (PATIENT_NAME, PATIENT_ID, "Müller", "ÄÖÜ"):
        assert secret not in caplog.text  # ... the patient is not
    back = pydicom.dcmread(path)
    assert back.SpecificCharacterSet == "ISO_IR 100"
    assert str(back.PatientName) == PATIENT_NAME
    assert back.PatientID == PATIENT_ID


def test_single_component_patient_name_in_no_warning(
    sources: dict[str, Source], caplog: pytest.LogCaptureFixture
) -> None:
    """highdicom warns about a PatientName without '^', quoting it: not with our SEG."""
    source = sources["classic"]
    renamed = []
    for ds in source.volume.datasets:
        copy = Dataset()
        copy.update(ds)
        del copy.PatientName  # a new element below: the fixture's header stays as it is
        copy.PatientName = "ANONYMOUSQX"
        copy.ReferringPhysicianName = "DRWHOQX"
        renamed.append(copy)
    volume = Volume(image=source.volume.image, datasets=tuple(renamed))
    other = Source("renamed", volume, source.labels, source.files)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        ds = build(other)
    assert str(ds.PatientName) == "ANONYMOUSQX"
    assert str(ds.ReferringPhysicianName) == "DRWHOQX"
    said = caplog.text + " ".join(str(w.message) for w in caught)
    assert "ANONYMOUSQX" not in said and "DRWHOQX" not in said


# ---------------------------------------------------------------------------------------------
# Codes in the models and through clinic naming


@pytest.mark.parametrize("model", ["pelvis-demo", "pelvis-dixon-demo", "taps"])
def test_model_labels_carry_snomed_codes(model: str) -> None:
    spec = ModelSpec.model_validate(read_yaml(REPO / "models" / model / "model.yaml"))
    known = {"prostate": "41216001", "bladder": "89837001", "rectum": "34402009"}
    for roi in spec.labels.values():
        assert roi.code is not None, roi.name
        assert (roi.code.scheme, roi.code.value) == ("SCT", known[roi.name.lower()])
        # Clinic naming (TG-263 or the config's roi_names) keeps what the structure is.
        assert clinic_roi(roi, {}).code == roi.code
        renamed = clinic_roi(roi, {roi.name: RoiSpec(name="X_" + roi.name, color=(1, 1, 1))})
        assert renamed.name == "X_" + roi.name and renamed.code == roi.code


def test_code_value_written_as_a_yaml_number_is_text() -> None:
    roi = RoiSpec.model_validate(
        {
            "name": "Prostate",
            "color": [255, 0, 0],
            "code": {"scheme": "SCT", "value": 41216001, "meaning": "Prostate"},
        }
    )
    assert roi.code is not None and roi.code.value == "41216001"
    with pytest.raises(ValueError):
        RoiSpec.model_validate({"name": "P", "color": [1, 2, 3], "code": {"scheme": "SCT"}})
