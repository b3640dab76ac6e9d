"""Phantom -> DICOM MR series -> SimpleITK: geometry and values survive; dciodvfy is content."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from gateway.demo.phantom import MR_IMAGE_STORAGE, SeriesInfo, make_phantom, write_dicom_series

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[sitk.Image, SeriesInfo]:
    ph = make_phantom(11, max_oblique_deg=6.0)
    out = tmp_path_factory.mktemp("oblique_t2")
    return ph.image, write_dicom_series(ph, out, seed=11)


def _sorted_along_normal(files: tuple[Path, ...]) -> list[str]:
    def key(f: Path) -> float:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        return float(np.dot(np.cross(iop[:3], iop[3:]), np.array(ds.ImagePositionPatient, float)))

    return [str(f) for f in sorted(files, key=key)]


def test_round_trip_reproduces_geometry_and_values(
    written: tuple[sitk.Image, SeriesInfo],
) -> None:
    image, info = written
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(_sorted_along_normal(info.files[::-1]))  # order on disk must not matter
    back = reader.Execute()
    assert back.GetSize() == image.GetSize()
    assert back.GetOrigin() == pytest.approx(image.GetOrigin(), abs=1e-4)
    assert back.GetSpacing() == pytest.approx(image.GetSpacing(), abs=1e-4)
    assert back.GetDirection() == pytest.approx(image.GetDirection(), abs=1e-6)
    assert np.array_equal(
        sitk.GetArrayFromImage(back).astype(np.float32), sitk.GetArrayFromImage(image)
    )


def test_gdcm_series_discovery_finds_one_series_in_slice_order(
    written: tuple[sitk.Image, SeriesInfo],
) -> None:
    _, info = written
    folder = str(info.files[0].parent)
    assert sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder) == (info.series_uid,)
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, info.series_uid)
    assert [Path(n).name for n in names] == [f.name for f in info.files]


def test_instances_carry_consistent_identity(written: tuple[sitk.Image, SeriesInfo]) -> None:
    image, info = written
    datasets = [pydicom.dcmread(f) for f in info.files]
    assert len(datasets) == image.GetSize()[2] == len(set(info.sop_instance_uids))
    for n, ds in enumerate(datasets, start=1):
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == MR_IMAGE_STORAGE
        assert ds.SOPInstanceUID == info.sop_instance_uids[n - 1]
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) == (
            info.study_uid,
            info.series_uid,
            info.frame_of_reference_uid,
        )
        assert ds.InstanceNumber == n
        assert ds.Modality == "MR" and ds.BodyPartExamined == "PROSTATE"
        assert float(ds.SpacingBetweenSlices) == pytest.approx(image.GetSpacing()[2])
        for elem in ds.iterall():
            if elem.VR == "DS":
                values = elem.value if elem.VM > 1 else [elem.value]
                assert all(len(str(v)) <= 16 for v in values), elem.keyword


def test_given_uids_and_descriptions_are_used(tmp_path: Path) -> None:
    ph = make_phantom(2, shape=(4, 32, 32))
    info = write_dicom_series(
        ph,
        tmp_path,
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        frame_of_reference_uid="1.2.3.5",
        series_description="t2_tse_tra",
        series_number=7,
        patient_id="PID-7",
    )
    ds = pydicom.dcmread(info.files[-1])
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) == (
        "1.2.3",
        "1.2.3.4",
        "1.2.3.5",
    )
    assert (ds.SeriesDescription, ds.SeriesNumber, ds.PatientID) == ("t2_tse_tra", 7, "PID-7")


def test_same_seed_writes_same_uids(tmp_path: Path) -> None:
    ph = make_phantom(2, shape=(4, 32, 32))
    a = write_dicom_series(ph, tmp_path / "a", seed=4)
    b = write_dicom_series(ph, tmp_path / "b", seed=4)
    c = write_dicom_series(ph, tmp_path / "c", seed=5)
    assert a.sop_instance_uids == b.sop_instance_uids
    assert a.series_uid != c.series_uid


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dciodvfy_finds_no_errors(written: tuple[sitk.Image, SeriesInfo]) -> None:
    _, info = written
    result = subprocess.run(
        ["dciodvfy", str(info.files[len(info.files) // 2])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = result.stdout + result.stderr
    assert "MRImage" in report, report
    assert [line for line in report.splitlines() if line.startswith("Error")] == [], report
