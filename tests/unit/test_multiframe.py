"""Multi-frame input: per-frame description at reception, channels as image sets, volumes read
from frames, the named geometry failures and the RTSTRUCT's frame references."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from gateway import imaging, multiframe
from gateway.config import AssemblyConfig, RoiSpec, RtstructConfig
from gateway.contour import rtstruct
from gateway.contour.reader import rasterize_rtstruct
from gateway.db.image_sets import image_sets
from gateway.db.records import SeriesInfo, SliceGeometry, StudyInfo
from gateway.errors import InvalidInput
from gateway.job import Provenance
from gateway.receive.receiver import describe_instance
from gateway.segment.spec import InputChannel, SeriesSelector
from gateway.study import assembly
from gateway.study.routing import select_series

TYPES = ("IN_PHASE", "OPP_PHASE", "WATER", "FAT")


def _item(**groups: Dataset) -> Dataset:
    item = Dataset()
    for keyword, value in groups.items():
        setattr(item, keyword, Sequence([value]))
    return item


def _ds(**values: object) -> Dataset:
    ds = Dataset()
    for k, v in values.items():
        setattr(ds, k, v)
    return ds


def dixon_header(slices: int = 5, *, drop_position: int | None = None, sag_stack: bool = False):
    """An Enhanced MR header (no pixels): four Dixon types x ``slices`` positions, the types
    interleaved per position as scanners do."""
    ds = _ds(
        SOPClassUID="1.2.840.10008.5.1.4.1.1.4.1",
        SOPInstanceUID=generate_uid(),
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        FrameOfReferenceUID=generate_uid(),
        Modality="MR",
        SeriesNumber=701,
        SeriesDescription="mDixon tra",
        ImageType=["DERIVED", "PRIMARY", "DIXON", "MIXED"],
        Rows=4,
        Columns=4,
        NumberOfFrames=4 * slices,
    )
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            _item(
                PixelMeasuresSequence=_ds(PixelSpacing=[1.0, 1.0], SliceThickness=3.0),
                PlaneOrientationSequence=_ds(ImageOrientationPatient=[1, 0, 0, 0, 1, 0]),
            )
        ]
    )
    frames = []
    for z in range(slices):
        for kind in TYPES:
            item = _item(
                PlanePositionSequence=_ds(ImagePositionPatient=[0.0, 0.0, 3.0 * z]),
                FrameContentSequence=_ds(StackID="1", InStackPositionNumber=z + 1),
                MRImageFrameTypeSequence=_ds(
                    FrameType=["DERIVED", "PRIMARY", "DIXON", kind],
                    ComplexImageComponent="MAGNITUDE",
                ),
                MREchoSequence=_ds(EffectiveEchoTime=1.23 if kind == "OPP_PHASE" else 2.46),
            )
            if sag_stack and z >= slices // 2:
                item.FrameContentSequence[0].StackID = "2"
                item.PlaneOrientationSequence = Sequence(
                    [_ds(ImageOrientationPatient=[0, 1, 0, 0, 0, -1])]
                )
            if drop_position is not None and len(frames) == drop_position:
                del item.PlanePositionSequence
            frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return ds


def _recorded(ds: Dataset) -> tuple[SeriesInfo, list[SeriesInfo]]:
    """What the database hands assembly for a series holding ``ds`` alone."""
    rec = describe_instance(ds)
    base = SeriesInfo(
        rec.series_uid,
        rec.series_attributes,
        0.0,
        0.0,
        slices=(SliceGeometry(rec.sop_instance_uid, None, None, None, None, 4, 4, 20),),
        paths={rec.sop_instance_uid: "/spool/x.dcm"},
    )
    return base, image_sets(base, {rec.sop_instance_uid: rec.geometry})


def test_dixon_frames_become_one_image_set_per_type_that_selectors_name() -> None:
    _, sets = _recorded(dixon_header())
    assert len(sets) == 4
    assert sorted(s.attributes["ImageType"][3] for s in sets) == sorted(TYPES)
    assert all(len(s.slices) == 5 and len({s.frame for s in s.slices}) == 5 for s in sets)
    assert len({s.key for s in sets}) == 4 and all("#" in s.key for s in sets)
    water = select_series(
        InputChannel(
            name="W", select=SeriesSelector.model_validate({"ImageType": ["DIXON", "WATER"]})
        ),
        sets,
    )
    assert water is not None and water.attributes["ImageType"][3] == "WATER"
    # The frames of the water channel are the 3rd of every 4, and echo times come along.
    assert [s.frame for s in water.slices] == [3, 7, 11, 15, 19]
    opp = next(s for s in sets if s.attributes["ImageType"][3] == "OPP_PHASE")
    assert opp.attributes["EchoTime"] == pytest.approx(1.23)
    assert opp.attributes["SeriesDescription"] == "mDixon tra"


def _decide(series: SeriesInfo) -> assembly.Decision:
    from gateway.segment.spec import ModelSpec

    model = ModelSpec.model_validate(
        {
            "name": "m",
            "kind": "nnunet",
            "version": "1",
            "nnunet": {"folder": "nnunet"},
            "inputs": [{"name": "W", "select": {"ImageType": ["DIXON", "WATER"]}}],
            "labels": {1: {"name": "Prostate", "color": [255, 0, 0]}},
        }
    )
    study = StudyInfo("1.2", "A", "B", 0.0, 0.0, (series,))
    cfg = AssemblyConfig()
    return assembly.decide(model, study, opened_at=0.0, now=1e6, cfg=cfg)


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (dixon_header(drop_position=6), ("1 frame(s) without a position", "frame(s) 7")),
        (dixon_header(6, sag_stack=True), ("stacks 1, 2", "different orientations")),
    ],
)
def test_a_broken_multiframe_object_fails_at_once_with_a_named_reason(header, words) -> None:
    _, sets = _recorded(header)
    water = next(s for s in sets if s.attributes["ImageType"][3] == "WATER")
    decision = _decide(water)
    assert isinstance(decision, assembly.Failed), decision
    for w in words:
        assert w in decision.reason
    assert "frames of type DERIVED\\PRIMARY\\DIXON\\WATER" in decision.reason


def test_a_channel_keeps_its_key_when_more_frames_of_the_series_arrive() -> None:
    """The key names what the channel is: a job planned on the water frames of the first object
    still reads water after an object with other types of the same series arrived."""
    full = dixon_header()
    first = dixon_header()
    first.SeriesInstanceUID = full.SeriesInstanceUID
    first.PerFrameFunctionalGroupsSequence = Sequence(
        [
            item
            for item in first.PerFrameFunctionalGroupsSequence
            if item.MRImageFrameTypeSequence[0].FrameType[3] in ("WATER", "IN_PHASE")
        ]
    )
    first.NumberOfFrames = len(first.PerFrameFunctionalGroupsSequence)
    _, alone = _recorded(first)
    water = next(s for s in alone if s.attributes["ImageType"][3] == "WATER")
    rec_a, rec_b = describe_instance(first), describe_instance(full)
    base = SeriesInfo(
        rec_a.series_uid,
        rec_a.series_attributes,
        0.0,
        0.0,
        slices=tuple(
            SliceGeometry(r.sop_instance_uid, None, None, None, None, 4, 4, 20)
            for r in (rec_a, rec_b)
        ),
        paths={rec_a.sop_instance_uid: "/a.dcm", rec_b.sop_instance_uid: "/b.dcm"},
    )
    both = image_sets(
        base, {rec_a.sop_instance_uid: rec_a.geometry, rec_b.sop_instance_uid: rec_b.geometry}
    )
    same = next(s for s in both if s.key == water.key)
    assert same.attributes["ImageType"][3] == "WATER"
    assert len(same.slices) == 10  # the water frames of both objects


def test_a_selector_matching_several_types_of_frames_fails_naming_them() -> None:
    """A classic-era selector (SeriesDescription) matches every Dixon type of one object: the
    model is not run on whichever sorts first."""
    from gateway.segment.spec import ModelSpec

    _, sets = _recorded(dixon_header())
    model = ModelSpec.model_validate(
        {
            "name": "m",
            "kind": "nnunet",
            "version": "1",
            "nnunet": {"folder": "nnunet"},
            "inputs": [{"name": "W", "select": {"SeriesDescription": "(?i)dixon"}}],
            "labels": {1: {"name": "Prostate", "color": [255, 0, 0]}},
        }
    )
    study = StudyInfo("1.2", "A", "B", 0.0, 0.0, tuple(sets))
    decision = assembly.decide(model, study, opened_at=0.0, now=1e6, cfg=AssemblyConfig())
    assert isinstance(decision, assembly.Failed)
    assert "matches 4 kinds of frames" in decision.reason
    assert "DIXON\\WATER" in decision.reason and "TE 1.23" in decision.reason


def test_a_classic_image_is_not_described_as_frames() -> None:
    ds = _ds(SOPInstanceUID="1.2.3", Rows=4, Columns=4)
    assert multiframe.describe_frames(ds) is None


# -- real pixels: the ProstateX T2 as a Legacy Converted Enhanced MR ---------------------------


@pytest.fixture(scope="module")
def prostatex_t2(prostatex: Path) -> list[Path]:
    return sorted((prostatex / "07-07-2011" / "4.000000-t2tsetra-00702").glob("*.dcm"))


@pytest.fixture(scope="module")
def t2_legacy(tmp_path_factory: pytest.TempPathFactory, prostatex_t2: list[Path]) -> Path:
    sources = [pydicom.dcmread(p) for p in prostatex_t2]
    converted = hd.legacy.LegacyConvertedEnhancedMRImage(
        sources,
        series_instance_uid=generate_uid(),
        series_number=104,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    path = tmp_path_factory.mktemp("legacy") / "t2.dcm"
    converted.save_as(path)
    return path


def test_frames_read_as_the_classic_series(t2_legacy: Path, prostatex_t2: list[Path]) -> None:
    frames = imaging.read_series([t2_legacy])
    classic = imaging.read_series(prostatex_t2)
    assert frames.image.GetSize() == classic.image.GetSize() == (384, 384, 19)
    assert np.array_equal(
        sitk.GetArrayFromImage(frames.image), sitk.GetArrayFromImage(classic.image)
    )
    assert np.allclose(frames.image.GetOrigin(), classic.image.GetOrigin())
    assert np.allclose(frames.image.GetDirection(), classic.image.GetDirection())
    assert np.allclose(frames.image.GetSpacing(), classic.image.GetSpacing())
    assert sorted(frames.frames) == list(range(1, 20))
    # Slice k of the volume is the frame at slice k's position.
    for ds, frame in zip(frames.datasets, frames.frames, strict=True):
        assert (
            multiframe.frame_header(
                pydicom.dcmread(t2_legacy, stop_before_pixels=True), frame
            ).ImagePositionPatient
            == ds.ImagePositionPatient
        )
    only = imaging.read_series(
        [t2_legacy], frames={str(frames.datasets[0].SOPInstanceUID): [1, 2, 3]}
    )
    assert only.image.GetSize()[2] == 3
    with pytest.raises(InvalidInput, match="frame 40"):
        imaging.read_series([t2_legacy], frames={str(frames.datasets[0].SOPInstanceUID): [40]})


def test_rtstruct_on_frames_references_them_and_reads_back(t2_legacy: Path, tmp_path: Path) -> None:
    volume = imaging.read_series([t2_legacy])
    mask = np.zeros(sitk.GetArrayViewFromImage(volume.image).shape, dtype=bool)
    mask[6:12, 150:230, 160:240] = True
    mask[8, 190:200, 190:200] = False  # a hole
    structure = rtstruct.Structure(
        mask, RoiSpec(name="Box", color=(255, 0, 0)), Provenance("m", "1")
    )
    ds = rtstruct.build_structure_set(
        volume, [structure], RtstructConfig(), input_series_uids=["x"]
    )
    path = tmp_path / "rs.dcm"
    rtstruct.write_dataset(ds, path)
    back = pydicom.dcmread(path)
    contour_images = back.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    images = contour_images.RTReferencedSeriesSequence[0].ContourImageSequence
    assert [int(i.ReferencedFrameNumber) for i in images] == list(volume.frames)
    for contour in back.ROIContourSequence[0].ContourSequence:
        ref = contour.ContourImageSequence[0]
        k = volume.frames.index(int(ref.ReferencedFrameNumber))
        assert ref.ReferencedSOPInstanceUID == volume.datasets[k].SOPInstanceUID
    headers = imaging.read_headers([t2_legacy])
    masks = rasterize_rtstruct(back, headers)
    assert np.array_equal(masks["Box"], mask)
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
        assert not errors, errors


@pytest.mark.skipif(not shutil.which("dcmcjpeg"), reason="dcmtk's dcmcjpeg not installed")
def test_a_jpeg_lossless_multiframe_object_reads_as_the_uncompressed(
    t2_legacy: Path, tmp_path: Path
) -> None:
    """JPEG Lossless SV1, the transfer syntax PACS often send, encoded by dcmtk: the frames
    decode (python-gdcm) to the same volume."""
    compressed = tmp_path / "t2-jpll.dcm"
    subprocess.run(["dcmcjpeg", "+e1", str(t2_legacy), str(compressed)], check=True)
    syntax = pydicom.dcmread(compressed, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert syntax == "1.2.840.10008.1.2.4.70"
    a, b = imaging.read_series([compressed]), imaging.read_series([t2_legacy])
    assert np.array_equal(sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(b.image))
