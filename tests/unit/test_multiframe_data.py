"""The multi-frame test data (tests/multiframe.py) is what it claims: dciodvfy finds no error in
the Enhanced MR, Legacy Converted Enhanced MR and mDixon instances, every frame holds the
pixels of the source slice at its position, and each hostile variant carries exactly its flaw."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from gateway.errors import DatasetMismatch
from gateway.grid import slice_normal
from gateway.receive.checks import check_dataset
from tests.conftest import PROSTATEX_T2
from tests.multiframe import (
    DIXON_CHANNELS,
    LEGACY_ENHANCED_MR,
    DixonPhantom,
    enhanced_mr,
    legacy_enhanced,
    mdixon_phantom,
)

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent")


@pytest.fixture(scope="module")
def t2_paths(prostatex: Path) -> list[Path]:
    return sorted(PROSTATEX_T2.glob("*.dcm"))


@pytest.fixture(scope="module")
def t2_slices(t2_paths: list[Path]) -> dict[tuple[float, ...], Dataset]:
    """The classic ProstateX T2 slices by ImagePositionPatient (rounded)."""
    return {_key(ds.ImagePositionPatient): ds for ds in map(dcmread, t2_paths)}


@pytest.fixture(scope="module")
def dixon(tmp_path_factory: pytest.TempPathFactory) -> DixonPhantom:
    return mdixon_phantom(5, tmp_path_factory.mktemp("mdixon"), shuffle_seed=3)


def _key(position: object) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in position)  # type: ignore[attr-defined]


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """dciodvfy's error and (distinct) warning lines, the warnings printed."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    warnings = sorted({line for line in lines if line.startswith("Warning")})
    print(f"dciodvfy {path.name}: {len(warnings)} distinct warnings", *warnings, sep="\n  ")
    return [line for line in lines if line.startswith("Error")], warnings


def _frames(path: Path) -> list[tuple[Dataset, Dataset | None, np.ndarray]]:
    """Per frame in file order: its functional groups (shared and per-frame merged, per-frame
    first), its PlanePositionSequence item (None when absent) and its stored pixels."""
    ds = dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    pixels = ds.pixel_array
    out = []
    for k, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        merged = Dataset()
        merged.update(shared)
        merged.update(group)
        position = merged.PlanePositionSequence[0] if "PlanePositionSequence" in merged else None
        out.append((merged, position, pixels[k]))
    return out


def _orientation(group: Dataset) -> tuple[float, ...]:
    return tuple(float(v) for v in group.PlaneOrientationSequence[0].ImageOrientationPatient)


def test_enhanced_mr_of_the_prostatex_t2_has_no_dciodvfy_error(
    t2_paths: list[Path], t2_slices: dict[tuple[float, ...], Dataset], tmp_path: Path
) -> None:
    written = enhanced_mr([t2_paths], tmp_path / "t2.dcm", contrast="T2", shuffle_seed=7)
    errors, _ = _dciodvfy(written.path)
    assert errors == []
    ds = dcmread(written.path, stop_before_pixels=True)
    assert ds.SOPClassUID == ENHANCED_MR and ds.NumberOfFrames == 19 and ds.BitsAllocated == 16
    source = next(iter(t2_slices.values()))
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    # Shuffled: the file order is not the spatial order, InStackPositionNumber is.
    frames = _frames(written.path)
    in_stack = [int(g.FrameContentSequence[0].InStackPositionNumber) for g, _, _ in frames]
    assert sorted(in_stack) == list(range(1, 20)) and in_stack != sorted(in_stack)
    normal = slice_normal(_orientation(frames[0][0]))
    along = {
        n: float(np.dot([float(v) for v in p.ImagePositionPatient], normal))
        for n, (_, p, _) in zip(in_stack, frames, strict=True)
        if p is not None
    }
    assert [along[n] for n in range(1, 20)] == sorted(along.values())
    for group, position, pixels in frames:
        assert position is not None
        np.testing.assert_array_equal(
            pixels, t2_slices[_key(position.ImagePositionPatient)].pixel_array
        )
        assert group.MRImageFrameTypeSequence[0].FrameType == [
            "ORIGINAL",
            "PRIMARY",
            "VOLUME",
            "NONE",
        ]
        assert group.MRImageFrameTypeSequence[0].ComplexImageComponent == "MAGNITUDE"
        assert float(group.MREchoSequence[0].EffectiveEchoTime) == 104.0
        assert int(group.FrameContentSequence[0].StackID) == 1


def test_legacy_converted_enhanced_mr_has_no_dciodvfy_error(
    t2_paths: list[Path], t2_slices: dict[tuple[float, ...], Dataset], tmp_path: Path
) -> None:
    written = legacy_enhanced(list(reversed(t2_paths)), tmp_path / "legacy.dcm")
    errors, _ = _dciodvfy(written.path)
    assert errors == []
    ds = dcmread(written.path, stop_before_pixels=True)
    source = next(iter(t2_slices.values()))
    assert ds.SOPClassUID == LEGACY_ENHANCED_MR and ds.NumberOfFrames == 19
    assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (
        source.StudyInstanceUID,
        source.FrameOfReferenceUID,
    )
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SOPInstanceUID not in {s.SOPInstanceUID for s in t2_slices.values()}
    frames = _frames(written.path)
    assert {_key(p.ImagePositionPatient) for _, p, _ in frames if p} == set(t2_slices)
    for _, position, pixels in frames:
        assert position is not None
        np.testing.assert_array_equal(
            pixels, t2_slices[_key(position.ImagePositionPatient)].pixel_array
        )


def test_mdixon_phantom_is_one_enhanced_mr_with_four_dixon_types(dixon: DixonPhantom) -> None:
    errors, _ = _dciodvfy(dixon.dixon.path)
    assert errors == []
    ds = dcmread(dixon.dixon.path, stop_before_pixels=True)
    t2 = dcmread(dixon.t2.files[0], stop_before_pixels=True)
    assert ds.SOPClassUID == ENHANCED_MR and t2.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (
        t2.StudyInstanceUID,
        t2.FrameOfReferenceUID,
    )
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY", "DIXON", "MIXED"]
    assert ds.NumberOfFrames == 4 * 22
    pointers = [
        (e.DimensionIndexPointer, e.FunctionalGroupPointer) for e in ds.DimensionIndexSequence
    ]
    assert pointers == [
        (0x00209056, 0x00209111),
        (0x00209057, 0x00209111),
        (0x00089007, 0x00189226),
    ]

    words = {"IN_PHASE": "in_phase", "OPP_PHASE": "out_phase", "WATER": "water", "FAT": "fat"}
    normal = slice_normal(_orientation(_frames(dixon.dixon.path)[0][0]))
    seen: dict[str, list[float]] = {name: [] for name in DIXON_CHANNELS}
    for group, position, pixels in _frames(dixon.dixon.path):
        frame_type = list(group.MRImageFrameTypeSequence[0].FrameType)
        assert frame_type[:3] == ["DERIVED", "PRIMARY", "DIXON"]
        name = words[frame_type[3]]
        content = group.FrameContentSequence[0]
        assert list(content.DimensionIndexValues)[2] == DIXON_CHANNELS.index(name) + 1
        k = int(content.InStackPositionNumber) - 1
        np.testing.assert_array_equal(pixels, dixon.channel_array(name)[k])
        assert position is not None
        seen[name].append(float(np.dot([float(v) for v in position.ImagePositionPatient], normal)))
    # A selector ImageType [DIXON, WATER] names the 22 water frames and nothing else.
    assert {n: len(v) for n, v in seen.items()} == dict.fromkeys(DIXON_CHANNELS, 22)
    assert all(sorted(v) == sorted(seen["water"]) for v in seen.values())
    assert dixon.labels("t2").shape == (24, 96, 96)
    assert dixon.labels("dixon").shape == (22, 80, 80)
    assert set(np.unique(dixon.labels("dixon"))) == {0, 1, 2, 3}


def test_fat_is_the_phantoms_fat_image(dixon: DixonPhantom) -> None:
    water, fat = dixon.channel_array("water"), dixon.channel_array("fat")
    in_phase = dixon.channel_array("in_phase")
    labels = dixon.labels("dixon")
    assert fat.mean() > 2 * water.mean() > 0  # pelvic fat dominates the fat image
    assert fat[labels == 1].mean() < water[labels == 1].mean()  # the gland is water
    assert not np.array_equal(fat, in_phase)


def test_hostile_variants_carry_exactly_their_flaw(t2_paths: list[Path], tmp_path: Path) -> None:
    dropped = enhanced_mr([t2_paths], tmp_path / "drop.dcm", drop_position_of=12)
    frames = _frames(dropped.path)
    assert [k for k, (_, p, _) in enumerate(frames, 1) if p is None] == [12]
    assert dropped.frames[11].position is None
    errors, _ = _dciodvfy(dropped.path)
    assert len(errors) == 1 and "PlanePositionSequence" in errors[0]

    rotated = enhanced_mr([t2_paths], tmp_path / "rot.dcm", rotate_second_stack=True)
    frames = _frames(rotated.path)
    stacks = [g.FrameContentSequence[0].StackID for g, _, _ in frames]
    assert stacks == ["1"] * 9 + ["2"] * 10
    normals = [slice_normal(_orientation(frames[k][0])) for k in (0, 18)]
    assert abs(float(np.dot(*normals))) < 1e-6  # the second stack is at right angles
    assert _dciodvfy(rotated.path)[0] == []  # two stacks of two orientations are legal DICOM

    counted = enhanced_mr([t2_paths], tmp_path / "count.dcm", extra_declared_frames=1)
    ds = dcmread(counted.path)
    assert ds.NumberOfFrames == 20 and len(ds.PerFrameFunctionalGroupsSequence) == 19
    assert len(ds.PixelData) == 19 * 384 * 384 * 2
    with pytest.raises(DatasetMismatch, match="20 frame"):
        check_dataset(ds, ENHANCED_MR, str(ds.file_meta.TransferSyntaxUID))
    check_dataset(dcmread(dropped.path), ENHANCED_MR, "1.2.840.10008.1.2.1")  # stored


def test_channels_of_another_geometry_are_refused(t2_paths: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="geometry"):
        enhanced_mr([t2_paths, t2_paths[:-1]], tmp_path / "x.dcm")
