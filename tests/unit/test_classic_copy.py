"""The classic single-frame copy of a multi-frame primary (gateway.contour.classic_copy): what a
planning system that cannot take frame references gets instead. Made from the real ProstateX T2
slices as a Legacy Converted Enhanced MR (highdicom) and as an Enhanced MR (by hand, with a
rescale and the MR attributes only in Enhanced form), frames stored out of slice order."""

from __future__ import annotations

import logging
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import EnhancedMRImageStorage, MRImageStorage

from gateway.config import RoiSpec, RtstructConfig
from gateway.contour.classic_copy import classic_copy
from gateway.contour.classic_mr import mr_image_module
from gateway.contour.rtstruct import Structure, build_structure_set, write_dataset
from gateway.errors import InvalidInput
from gateway.imaging import Volume, read_series
from gateway.job import Provenance
from gateway.uids import derive_uid
from tests.conftest import PROSTATEX_T2

CFG = RtstructConfig()
ROOT = CFG.uid_root
WHEN = datetime(2024, 5, 6, 7, 8, 9)
PERMUTATION = [3, 0, 17, 5, 12, 1, 9, 18, 2, 7, 14, 4, 11, 16, 6, 10, 15, 8, 13]


def _uid(*parts: str) -> str:
    return derive_uid(ROOT, "test-classic-copy", *parts)


def _item(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _seq(**attributes: object) -> DicomSequence:
    return DicomSequence([_item(**attributes)])


@pytest.fixture(scope="module")
def classic(prostatex: Path) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in sorted(PROSTATEX_T2.glob("*.dcm"))]


@pytest.fixture(scope="module")
def legacy(classic: list[Dataset], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ProstateX's one-component PatientName
        ds = LegacyConvertedEnhancedMRImage(
            [classic[i] for i in PERMUTATION],
            series_instance_uid=_uid("legacy", "series"),
            series_number=5,
            sop_instance_uid=_uid("legacy", "instance"),
            instance_number=1,
        )
    path = tmp_path_factory.mktemp("legacy") / "legacy.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def enhanced(legacy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The legacy object as an Enhanced MR: the classic MR attributes only as Enhanced MR Pulse
    Sequence attributes and MR functional groups, frames in another order, rescale 2x - 10."""
    ds = pydicom.dcmread(legacy)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid("enhanced", "instance")
    ds.SeriesInstanceUID = _uid("enhanced", "series")
    ds.SeriesDescription = "t2_tse_tra enhanced"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "T2", "NONE"]
    ds.update(
        _item(
            PulseSequenceName="tse2d1_25",
            MRAcquisitionType="2D",
            EchoPulseSequence="SPIN",
            MultipleSpinEcho="YES",
            SteadyStatePulseSequence="NONE",
            EchoPlanarPulseSequence="NO",
            OversamplingPhase="2D",
            SegmentedKSpaceTraversal="PARTIAL",
            SpectrallySelectedSuppression="NONE",
        )
    )
    shared = ds.SharedFunctionalGroupsSequence[0]
    del shared.UnassignedSharedConvertedAttributesSequence
    shared.MRImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", "T2", "NONE"]
    shared.MREchoSequence = _seq(EffectiveEchoTime=104.0)
    shared.MRTimingAndRelatedParametersSequence = _seq(
        RepetitionTime=5660.0, FlipAngle=160.0, EchoTrainLength=25
    )
    shared.MRImagingModifierSequence = _seq(
        MagnetizationTransfer="NONE", TransmitterFrequency=123.24244, PixelBandwidth=200.0
    )
    shared.MRModifierSequence = _seq(
        InversionRecovery="NO", FlowCompensation="NONE", Spoiling="RF", PartialFourier="NO"
    )
    shared.MRFOVGeometrySequence = _seq(InPlanePhaseEncodingDirection="ROW", PercentSampling=100.0)
    shared.PixelValueTransformationSequence = _seq(
        RescaleIntercept="-10", RescaleSlope="2", RescaleType="US"
    )
    frames = ds.pixel_array
    order = PERMUTATION[::-1]
    items = [ds.PerFrameFunctionalGroupsSequence[i] for i in order]
    for item in items:
        del item.UnassignedPerFrameConvertedAttributesSequence
        del item.ConversionSourceAttributesSequence
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(items)
    ds.PixelData = np.ascontiguousarray(frames[order]).astype("<u2").tobytes()
    path = tmp_path_factory.mktemp("enhanced") / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module", params=["legacy", "enhanced"])
def source(request: pytest.FixtureRequest) -> tuple[Path, Volume]:
    path: Path = request.getfixturevalue(request.param)
    return path, read_series([path])


def _copy(source: tuple[Path, Volume], **kw: object) -> tuple[list[Dataset], Volume]:
    path, volume = source
    sources = {str(volume.datasets[0].SOPInstanceUID): path}
    return classic_copy(volume, sources, uid_root=ROOT, **{"now": WHEN, **kw})  # type: ignore[arg-type]


def _write(copies: list[Dataset], folder: Path) -> list[Path]:
    paths = []
    for ds in copies:
        path = folder / f"MR_{ds.InstanceNumber:04d}.dcm"
        write_dataset(ds, path)
        paths.append(path)
    return paths


def _dciodvfy(path: Path) -> tuple[str, list[str]]:
    """dciodvfy's output and its error lines, the warnings printed."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    warnings_ = sorted({line for line in output.splitlines() if line.startswith("Warning")})
    print(f"dciodvfy {path.name}: {len(warnings_)} distinct warnings", *warnings_, sep="\n  ")
    return output, [line for line in output.splitlines() if line.startswith("Error")]


def _key(position: object) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in position)  # type: ignore[attr-defined]


def test_copies_are_valid_mr_images(source: tuple[Path, Volume], tmp_path: Path) -> None:
    copies, _ = _copy(source)
    paths = _write(copies, tmp_path)
    for path in (paths[0], paths[len(paths) // 2]):
        output, errors = _dciodvfy(path)
        assert "MRImage" in output
        assert errors == [], output


def test_copies_read_back_as_the_source_volume(source: tuple[Path, Volume], tmp_path: Path) -> None:
    _, volume = source
    copies, copy_volume = _copy(source)
    back = read_series(_write(copies, tmp_path))
    expected = sitk.GetArrayFromImage(volume.image)
    for image in (back.image, copy_volume.image):
        assert np.array_equal(sitk.GetArrayFromImage(image), expected)
        assert image.GetSize() == volume.image.GetSize()
        np.testing.assert_allclose(image.GetOrigin(), volume.image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing(), volume.image.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(image.GetDirection(), volume.image.GetDirection(), atol=1e-6)
    assert back.sop_instance_uids == copy_volume.sop_instance_uids
    assert copy_volume.frames == ()
    assert all("PixelData" not in ds for ds in copy_volume.datasets)


def test_pixels_are_the_classic_slices_stored_values(
    source: tuple[Path, Volume], classic: list[Dataset], tmp_path: Path
) -> None:
    path, volume = source
    by_position = {_key(ds.ImagePositionPatient): ds for ds in classic}
    copies, _ = _copy(source)
    for k, copy_path in enumerate(_write(copies, tmp_path)):
        ds = pydicom.dcmread(copy_path)
        original = by_position[_key(ds.ImagePositionPatient)]
        assert np.array_equal(ds.pixel_array, original.pixel_array)
        for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
            assert ds[keyword].value == original[keyword].value
        assert ds.InstanceNumber == k + 1
        assert _key(ds.ImagePositionPatient) == _key(volume.datasets[k].ImagePositionPatient)
        assert float(ds.SliceThickness) == 3.0
        assert [float(v) for v in ds.PixelSpacing] == [0.5, 0.5]
        source_ref = ds.SourceImageSequence[0]
        assert source_ref.ReferencedSOPInstanceUID == volume.datasets[k].SOPInstanceUID
        assert source_ref.ReferencedFrameNumber == volume.frames[k]
    rescaled = "RescaleSlope" in copies[0]
    assert rescaled == (path.name == "enhanced.dcm")
    if rescaled:
        assert (float(copies[0].RescaleSlope), float(copies[0].RescaleIntercept)) == (2.0, -10.0)


def test_mr_attributes_from_the_multiframe_object(
    source: tuple[Path, Volume], classic: list[Dataset]
) -> None:
    path, volume = source
    copies, _ = _copy(source)
    first, src = copies[0], volume.datasets[0]
    assert first.SOPClassUID == MRImageStorage
    assert first.Modality == "MR"
    flavour = "T2" if path.name == "enhanced.dcm" else "M"
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", flavour, "NONE"]
    assert float(first.EchoTime) == 104.0
    assert float(first.RepetitionTime) == 5660.0
    assert int(first.EchoTrainLength) == 25
    assert float(first.ImagingFrequency) == pytest.approx(123.24244)
    assert first.MRAcquisitionType == "2D"
    assert first.ScanningSequence == "SE"
    expected = ["SK", "SP", "OSP"]
    assert sorted(first.SequenceVariant) == sorted(expected)
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName"):
        assert first[keyword].value == src[keyword].value
    assert first.SeriesNumber == int(src.SeriesNumber) + 1000
    assert first.SeriesDescription == f"{src.SeriesDescription} (classic copy)"
    assert "frame" in first.DerivationDescription and "single-frame" in first.DerivationDescription
    assert first.ContributingEquipmentSequence[-1].Manufacturer == "AIRCON"


def test_uids_are_deterministic_and_new(source: tuple[Path, Volume]) -> None:
    _, volume = source
    copies, copy_volume = _copy(source)
    again, _ = _copy(source, now=datetime(2030, 1, 1))
    other_root, _ = classic_copy(
        volume,
        {str(volume.datasets[0].SOPInstanceUID): source[0]},
        uid_root="1.2.3.",
        now=WHEN,
    )
    uids = [ds.SOPInstanceUID for ds in copies]
    assert uids == [ds.SOPInstanceUID for ds in again]
    assert len(set(uids)) == len(uids)
    assert not set(uids) & {ds.SOPInstanceUID for ds in other_root}
    assert not set(uids) & set(volume.sop_instance_uids)
    assert {ds.SeriesInstanceUID for ds in copies} == {copy_volume.series_instance_uid}
    assert copy_volume.series_instance_uid != volume.series_instance_uid
    assert copies[0].SeriesInstanceUID == again[0].SeriesInstanceUID
    assert copy_volume.study_instance_uid == volume.study_instance_uid
    assert copy_volume.frame_of_reference_uid == volume.frame_of_reference_uid


def test_mr_module_mapped_from_enhanced_attributes() -> None:
    """An inversion-recovery gradient-echo EPI with cardiac gating, described only in
    Enhanced MR terms (one frame's groups)."""
    src = _item(
        EchoPulseSequence="GRADIENT",
        EchoPlanarPulseSequence="YES",
        SteadyStatePulseSequence="TIME_REVERSED",
        CardiacSynchronizationTechnique="PROSPECTIVE",
        SpectrallySelectedSuppression="FAT",
        ResonantNucleus="1H",
        MagneticFieldStrength=1.5,
    )
    frame = _item(
        MRModifierSequence=_seq(
            InversionRecovery="YES",
            InversionTimes=[150.0, 300.0],
            PartialFourier="YES",
            PartialFourierDirection="PHASE",
            FlowCompensation="NONE",
        ),
        MREchoSequence=_seq(EffectiveEchoTime=2.3456789012345678),
        MRImagingModifierSequence=_seq(MagnetizationTransfer="OFF_RESONANCE"),
    )
    out = Dataset()
    mr_image_module(out, src, frame)
    assert list(out.ScanningSequence) == ["GR", "IR", "EP"]
    assert list(out.SequenceVariant) == ["MTC", "TRSS"]
    assert list(out.ScanOptions) == ["PFP", "CG", "FS"]
    assert out.InversionTime == 150.0 and out.TriggerTime == ""
    assert len(str(out["EchoTime"].value)) <= 16 and float(out.EchoTime) == pytest.approx(
        2.3456789012345678
    )
    assert "RepetitionTime" not in out  # EP without SK: not required
    assert (out.ImagedNucleus, float(out.MagneticFieldStrength)) == ("1H", 1.5)
    bare = Dataset()
    mr_image_module(bare, Dataset(), None)
    assert (bare.ScanningSequence, bare.SequenceVariant, bare.ScanOptions) == ("RM", "NONE", "")
    assert bare.RepetitionTime == ""


def _walk(ds: Dataset) -> Iterator[pydicom.DataElement]:
    for element in ds:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


def test_rtstruct_on_the_copy_references_the_copies(
    source: tuple[Path, Volume], tmp_path: Path
) -> None:
    _, volume = source
    copies, copy_volume = _copy(source)
    mask = np.zeros(sitk.GetArrayFromImage(volume.image).shape, dtype=bool)
    mask[6:12, 150:230, 160:240] = True
    structure = Structure(mask, RoiSpec(name="Box", color=(255, 0, 0)), Provenance("Box", "1"))
    rs = build_structure_set(
        copy_volume, [structure], CFG, input_series_uids=[volume.series_instance_uid], now=WHEN
    )
    path = tmp_path / "rs.dcm"
    write_dataset(rs, path)
    output, errors = _dciodvfy(path)
    assert "RTStructureSet" in output
    assert errors == [], output
    copy_uids = {ds.SOPInstanceUID for ds in copies}
    images = [e for e in _walk(pydicom.dcmread(path)) if e.keyword == "ContourImageSequence"]
    referenced = {item.ReferencedSOPInstanceUID for e in images for item in e.value}
    assert referenced == copy_uids
    assert not [e for e in _walk(rs) if e.keyword == "ReferencedFrameNumber"]
    series = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert series.RTReferencedSeriesSequence[0].SeriesInstanceUID == copies[0].SeriesInstanceUID
    contoured = {
        c.ContourImageSequence[0].ReferencedSOPInstanceUID
        for c in rs.ROIContourSequence[0].ContourSequence
    }
    assert contoured == {copies[k].SOPInstanceUID for k in range(6, 12)}


def test_refusals_and_no_patient_data_in_logs(
    source: tuple[Path, Volume], caplog: pytest.LogCaptureFixture
) -> None:
    path, volume = source
    with pytest.raises(InvalidInput, match="no file given"):
        classic_copy(volume, {}, uid_root=ROOT)
    single = Volume(image=volume.image, datasets=volume.datasets)
    with pytest.raises(InvalidInput, match="multi-frame"):
        classic_copy(single, {}, uid_root=ROOT)
    with caplog.at_level(logging.DEBUG, logger="gateway"):
        _copy(source)
    assert "classic copy" in caplog.text
    header = volume.datasets[0]
    for value in (str(header.PatientName), str(header.PatientID)):
        assert value not in caplog.text
