"""RTSTRUCT building: mask -> RTSTRUCT -> mask round trips, DICOM conformance, provenance."""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from gateway.config import RoiSpec, RtstructConfig
from gateway.contour.reader import dice, rasterize_rtstruct
from gateway.contour.rtstruct import (
    Provenance,
    build_rtstruct,
    format_ds,
    slice_contours,
    write_dataset,
)
from gateway.demo.phantom import make_phantom, write_dicom_series
from gateway.errors import ModelError
from gateway.imaging import Volume, read_series
from tests.conftest import PROSTATEX_T2, SHARED_DATA

OBLIQUE_T2 = PROSTATEX_T2
MSD_LABELS = SHARED_DATA / "msd_prostate_labels" / "labelsTr"
MSD_CASES = ("prostate_00", "prostate_04", "prostate_16")
NOW = datetime(2024, 5, 6, 7, 8, 9)
CFG = RtstructConfig()
PROVENANCE = Provenance("Prostate_T2", "1.2.0", "0123456789abcdef" * 4)
ZONES = {
    1: RoiSpec(name="PZ", color=(0, 200, 255), type="ORGAN"),
    2: RoiSpec(name="TZ", color=(255, 120, 0), type="CTV"),
}
PROSTATE = {1: RoiSpec(name="Prostate", color=(255, 0, 0))}


# ---------------------------------------------------------------------------------------------
# Inputs


@pytest.fixture(scope="module")
def t2_volume() -> Volume:
    if not OBLIQUE_T2.is_dir():
        pytest.skip(f"real oblique T2 series not available at {OBLIQUE_T2}")
    files = sorted(OBLIQUE_T2.glob("*.dcm"))
    random.Random(3).shuffle(files)
    return read_series(files)


@pytest.fixture(scope="module")
def phantom_volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, np.ndarray]:
    phantom = make_phantom(11)
    info = write_dicom_series(phantom, tmp_path_factory.mktemp("phantom"))
    return read_series(list(info.files)), sitk.GetArrayFromImage(phantom.labels)


def msd_on_grid(case: str, shape: tuple[int, int, int]) -> np.ndarray:
    """An expert MSD label volume (z, y, x) scaled in index space onto ``shape`` (nearest)."""
    path = MSD_LABELS / f"{case}.nii.gz"
    if not path.is_file():
        pytest.skip(f"MSD labels not available at {path}")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    index = [
        np.minimum(((np.arange(n) + 0.5) * m / n).astype(int), m - 1)
        for n, m in zip(shape, labels.shape, strict=True)
    ]
    return labels[np.ix_(*index)].astype(np.uint8)


def build(volume: Volume, label_map: np.ndarray, rois: dict[int, RoiSpec], **kw: object) -> Dataset:
    provenance = kw.pop("provenance", PROVENANCE)
    return build_rtstruct(
        volume,
        label_map,
        rois,
        provenance,  # type: ignore[arg-type]
        CFG,
        input_series_uids=[volume.series_instance_uid],
        now=NOW,
        **kw,  # type: ignore[arg-type]
    )


def assert_round_trip(
    volume: Volume, label_map: np.ndarray, rois: dict[int, RoiSpec], ds: Dataset
) -> dict[str, float]:
    masks = rasterize_rtstruct(ds, volume)
    scores = {}
    for label, spec in rois.items():
        truth = label_map == label
        scores[spec.name] = dice(masks[spec.name], truth)
        assert scores[spec.name] >= 0.99, (spec.name, scores[spec.name])
        # Contours on pixel edges give back exactly the label map's voxels.
        assert np.array_equal(masks[spec.name], truth), spec.name
    return scores


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("case", MSD_CASES)
def test_msd_shapes_round_trip_on_oblique_t2(t2_volume: Volume, case: str) -> None:
    shape = sitk.GetArrayFromImage(t2_volume.image).shape
    zones = msd_on_grid(case, shape)
    assert {1, 2} <= set(np.unique(zones))
    prostate = (zones > 0).astype(np.uint8)

    scores = assert_round_trip(t2_volume, zones, ZONES, build(t2_volume, zones, ZONES))
    scores |= assert_round_trip(t2_volume, prostate, PROSTATE, build(t2_volume, prostate, PROSTATE))
    assert set(scores) == {"PZ", "TZ", "Prostate"}


def test_hole_and_two_components_on_one_slice(t2_volume: Volume) -> None:
    label_map = np.zeros(sitk.GetArrayFromImage(t2_volume.image).shape, dtype=np.uint8)
    label_map[8, 100:200, 100:200] = 1
    label_map[8, 130:170, 140:160] = 0  # hole
    label_map[8, 150, 150] = 1  # island inside the hole
    label_map[8, 250:260, 40:45] = 1  # second component
    label_map[8, 300, 300] = 1  # single pixel
    label_map[8, 301, 301] = 1  # touching it diagonally
    ds = build(t2_volume, label_map, PROSTATE)
    contours = ds.ROIContourSequence[0].ContourSequence
    assert len(contours) >= 5
    assert all(c.ContourGeometricType == "CLOSED_PLANAR" for c in contours)
    assert_round_trip(t2_volume, label_map, PROSTATE, ds)


def test_phantom_labels_round_trip(phantom_volume: tuple[Volume, np.ndarray]) -> None:
    volume, labels = phantom_volume
    rois = {
        1: RoiSpec(name="Prostate", color=(255, 0, 0)),
        2: RoiSpec(name="Bladder", color=(255, 255, 0)),
        3: RoiSpec(name="Rectum", color=(150, 75, 0)),
    }
    assert {1, 2, 3} <= set(np.unique(labels))
    assert_round_trip(volume, labels, rois, build(volume, labels, rois))


def test_rasterize_from_unsorted_datasets_and_by_plane(t2_volume: Volume) -> None:
    label_map = msd_on_grid("prostate_00", sitk.GetArrayFromImage(t2_volume.image).shape)
    ds = build(t2_volume, label_map, ZONES)
    for roi_contour in ds.ROIContourSequence:
        for contour in roi_contour.ContourSequence:
            del contour.ContourImageSequence  # force the plane-distance fallback
    masks = rasterize_rtstruct(ds, list(reversed(t2_volume.datasets)))
    for label, spec in ZONES.items():
        assert np.array_equal(masks[spec.name], label_map == label)


def test_slice_contours_are_edge_exact_on_random_masks() -> None:
    from gateway.contour.reader import fill_even_odd

    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((24, 24)) < rng.uniform(0.2, 0.8)
        assert np.array_equal(fill_even_odd(slice_contours(mask), mask.shape), mask)


def test_dice() -> None:
    a = np.zeros((2, 4, 4), dtype=bool)
    b = a.copy()
    assert dice(a, b) == 1.0
    a[0, :2] = True
    b[0, :1] = True
    assert dice(a, b) == pytest.approx(2 * 4 / 12)


# ---------------------------------------------------------------------------------------------
# Conformance


@pytest.fixture(scope="module")
def zones_rtstruct(t2_volume: Volume) -> tuple[Dataset, np.ndarray]:
    label_map = msd_on_grid("prostate_04", sitk.GetArrayFromImage(t2_volume.image).shape)
    return build(t2_volume, label_map, ZONES), label_map


def walk(ds: Dataset) -> Iterator[pydicom.DataElement]:
    for element in ds:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from walk(item)


def test_every_ds_value_fits_16_characters(
    zones_rtstruct: tuple[Dataset, np.ndarray], tmp_path: Path
) -> None:
    path = tmp_path / "rs.dcm"
    write_dataset(zones_rtstruct[0], path)
    written = pydicom.dcmread(path)
    checked = 0
    for element in walk(written):
        if element.VR == "DS":
            raw = element.value if element.VM > 1 else [element.value]
            for value in raw:
                assert len(str(value)) <= 16, (element.keyword, value)
                checked += 1
    assert checked > 1000
    assert format_ds(-12345.678949) == "-12345.6789"
    assert format_ds(-0.00001) == "0"
    assert format_ds(12.5) == "12.5"


def test_dciodvfy_reports_no_errors(
    zones_rtstruct: tuple[Dataset, np.ndarray], tmp_path: Path
) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    path = tmp_path / "rs.dcm"
    write_dataset(zones_rtstruct[0], path)
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert "RTStructureSet" in output
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert errors == [], output


def test_references_names_colours_and_extent(
    t2_volume: Volume, zones_rtstruct: tuple[Dataset, np.ndarray]
) -> None:
    ds, _ = zones_rtstruct
    instances = set(t2_volume.sop_instance_uids)
    assert ds.FrameOfReferenceUID == t2_volume.frame_of_reference_uid
    (frame,) = ds.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == t2_volume.frame_of_reference_uid
    (study,) = frame.RTReferencedStudySequence
    assert study.ReferencedSOPInstanceUID == t2_volume.study_instance_uid
    (series,) = study.RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == t2_volume.series_instance_uid
    referenced = [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence]
    assert sorted(referenced) == sorted(instances)
    assert ds.StudyInstanceUID == t2_volume.study_instance_uid

    by_number = {r.ROINumber: r for r in ds.StructureSetROISequence}
    observations = {o.ReferencedROINumber: o for o in ds.RTROIObservationsSequence}
    assert [r.ROIName for r in ds.StructureSetROISequence] == [s.name for s in ZONES.values()]
    for roi_contour, spec in zip(ds.ROIContourSequence, ZONES.values(), strict=True):
        number = roi_contour.ReferencedROINumber
        assert by_number[number].ROIName == spec.name
        assert by_number[number].ReferencedFrameOfReferenceUID == t2_volume.frame_of_reference_uid
        assert tuple(roi_contour.ROIDisplayColor) == spec.color
        assert observations[number].RTROIInterpretedType == spec.type

    image = t2_volume.image
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin())
    spacing = np.array(image.GetSpacing())
    upper = (np.array(image.GetSize()) - 1) * spacing
    uid_to_k = {uid: k for k, uid in enumerate(t2_volume.sop_instance_uids)}
    for roi_contour in ds.ROIContourSequence:
        for contour in roi_contour.ContourSequence:
            (image_ref,) = contour.ContourImageSequence
            assert image_ref.ReferencedSOPInstanceUID in instances
            points = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
            assert contour.NumberOfContourPoints == len(points)
            along = (points - origin) @ direction  # (x, y, z) in mm along the volume axes
            assert np.all(along >= -spacing / 2 - 1e-3)
            assert np.all(along <= upper + spacing / 2 + 1e-3)
            k = uid_to_k[image_ref.ReferencedSOPInstanceUID]
            np.testing.assert_allclose(along[:, 2], k * spacing[2], atol=1e-3)


def test_uids_are_deterministic(t2_volume: Volume) -> None:
    label_map = msd_on_grid("prostate_00", sitk.GetArrayFromImage(t2_volume.image).shape)
    first = build(t2_volume, label_map, ZONES)
    again = build(t2_volume, label_map, ZONES)
    other = build(t2_volume, label_map, ZONES, provenance=Provenance("Prostate_T2", "1.3.0", ""))
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert first.SOPInstanceUID != first.SeriesInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID
    assert other.SeriesInstanceUID != first.SeriesInstanceUID
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.SOPInstanceUID.startswith(CFG.uid_root)
    assert len(first.SOPInstanceUID) <= 64
    two_inputs = build_rtstruct(
        t2_volume,
        label_map,
        ZONES,
        PROVENANCE,
        CFG,
        input_series_uids=["1.2.3", t2_volume.series_instance_uid],
        now=NOW,
    )
    swapped = build_rtstruct(
        t2_volume,
        label_map,
        ZONES,
        PROVENANCE,
        CFG,
        input_series_uids=[t2_volume.series_instance_uid, "1.2.3"],
        now=NOW,
    )
    assert two_inputs.SOPInstanceUID == swapped.SOPInstanceUID != first.SOPInstanceUID


def test_approval_and_provenance(zones_rtstruct: tuple[Dataset, np.ndarray]) -> None:
    ds, _ = zones_rtstruct
    assert ds.ApprovalStatus == "UNAPPROVED"
    assert ds.Modality == "RTSTRUCT"
    assert ds.SeriesDescription == CFG.series_description
    assert ds.StructureSetLabel == CFG.structure_set_label
    assert ds.Manufacturer == CFG.manufacturer
    assert ds.SoftwareVersions
    assert ds.StructureSetDate == ds.InstanceCreationDate == ds.SeriesDate == "20240506"
    assert ds.StructureSetTime == "070809"
    for roi in ds.StructureSetROISequence:
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC"
        assert PROVENANCE.model_name in roi.ROIGenerationDescription
        assert PROVENANCE.model_version in roi.ROIGenerationDescription
    assert PROVENANCE.weights_sha256 in ds.StructureSetDescription
    assert "review" in ds.StructureSetDescription.lower()
    (equipment,) = ds.ContributingEquipmentSequence
    assert equipment.ManufacturerModelName == PROVENANCE.model_name
    assert PROVENANCE.weights_sha256 in equipment.ContributionDescription


def test_empty_rois_are_left_out(t2_volume: Volume) -> None:
    shape = sitk.GetArrayFromImage(t2_volume.image).shape
    label_map = np.zeros(shape, dtype=np.uint8)
    label_map[9, 190:200, 190:200] = 2
    ds = build(t2_volume, label_map, ZONES)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["TZ"]
    assert ds.StructureSetROISequence[0].ROINumber == ds.ROIContourSequence[0].ReferencedROINumber
    assert "PZ" in ds.StructureSetDescription
    with pytest.raises(ModelError):
        build(t2_volume, np.zeros(shape, dtype=np.uint8), ZONES)
    with pytest.raises(ValueError, match="shape"):
        build(t2_volume, label_map[:-1], ZONES)


def test_write_dataset_is_a_dicom_file(
    zones_rtstruct: tuple[Dataset, np.ndarray], tmp_path: Path
) -> None:
    path = tmp_path / "out" / "rs.dcm"
    write_dataset(zones_rtstruct[0], path)
    assert [p.name for p in path.parent.iterdir()] == ["rs.dcm"]
    assert path.read_bytes()[128:132] == b"DICM"
    back = pydicom.dcmread(path)
    assert back.SOPInstanceUID == zones_rtstruct[0].SOPInstanceUID
    assert back.file_meta.MediaStorageSOPClassUID == back.SOPClassUID


def test_building_and_writing_an_rtstruct_raises_no_warning(
    phantom_volume: tuple[Volume, np.ndarray], tmp_path: Path
) -> None:
    """pydicom 3 deprecates is_little_endian / is_implicit_VR (gone in 4.0): neither our code nor
    what it calls may use them, so an upgrade cannot break writing."""
    import warnings

    volume, labels = phantom_volume
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = build(volume, labels, {1: PROSTATE[1]})
        write_dataset(ds, tmp_path / "rs.dcm")
    back = pydicom.dcmread(tmp_path / "rs.dcm")
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # explicit VR little endian
    assert back.StructureSetROISequence[0].ROIName == "Prostate"


def test_non_square_pixels_follow_pixel_spacing_order(tmp_path: Path) -> None:
    """PixelSpacing is (row, column): checked against SimpleITK's index -> physical mapping."""
    phantom = make_phantom(5, shape=(12, 64, 80), spacing=(3.0, 0.8, 1.5))
    volume = read_series(list(write_dicom_series(phantom, tmp_path).files))
    assert [float(v) for v in volume.datasets[0].PixelSpacing] == pytest.approx([0.8, 1.5])
    label_map = np.zeros((12, 64, 80), dtype=np.uint8)
    k, r, c = 7, 20, 50
    label_map[k, r, c] = 1
    ds = build(volume, label_map, PROSTATE)
    (contour,) = ds.ROIContourSequence[0].ContourSequence
    points = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
    centre = volume.image.TransformIndexToPhysicalPoint((c, r, k))
    np.testing.assert_allclose(points.mean(axis=0), centre, atol=1e-3)
    labels = sitk.GetArrayFromImage(phantom.labels)
    rois = {1: PROSTATE[1], 2: RoiSpec(name="Bladder", color=(255, 255, 0))}
    assert_round_trip(volume, labels, rois, build(volume, labels, rois))


def test_institution_comes_from_the_source_not_rt_utils(t2_volume: Volume) -> None:
    label_map = np.zeros(sitk.GetArrayFromImage(t2_volume.image).shape, dtype=np.uint8)
    label_map[9, 190:200, 190:200] = 1
    assert "InstitutionName" not in build(t2_volume, label_map, PROSTATE)
    source = []
    for ds in t2_volume.datasets:
        copy = Dataset()
        copy.update(ds)
        source.append(copy)
    source[0].InstitutionName = "Clinic"
    other = Volume(image=t2_volume.image, datasets=tuple(source))
    assert build(other, label_map, PROSTATE).InstitutionName == "Clinic"


def test_merged_structure_set_names_each_rois_model(t2_volume: Volume, tmp_path: Path) -> None:
    """Two models in one structure set: each ROI names its model and version, both models are
    contributing equipment, and the UIDs depend on both models."""
    from gateway.contour.rtstruct import Structure, build_structure_set

    label_map = msd_on_grid("prostate_04", sitk.GetArrayFromImage(t2_volume.image).shape)
    taps = Provenance("taps", "1.1.2", "ab" * 32)
    structures = [
        Structure(label_map == 1, ZONES[1], PROVENANCE),
        Structure(label_map > 0, PROSTATE[1], taps),
    ]
    uids = [t2_volume.series_instance_uid]
    ds = build_structure_set(t2_volume, structures, CFG, input_series_uids=uids, now=NOW)
    made_by = {r.ROIName: r.ROIGenerationDescription for r in ds.StructureSetROISequence}
    assert made_by == {"PZ": "Prostate_T2 1.2.0", "Prostate": "taps 1.1.2"}
    assert [e.ManufacturerModelName for e in ds.ContributingEquipmentSequence] == [
        "Prostate_T2",
        "taps",
    ]
    assert "taps version 1.1.2" in ds.StructureSetDescription
    masks = rasterize_rtstruct(ds, t2_volume)
    assert dice(masks["Prostate"], label_map > 0) >= 0.99
    alone = build_structure_set(t2_volume, structures[:1], CFG, input_series_uids=uids, now=NOW)
    assert alone.SOPInstanceUID != ds.SOPInstanceUID
    path = tmp_path / "merged.dcm"
    write_dataset(ds, path)
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed")
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    assert [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")] == []
