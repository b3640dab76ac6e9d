"""The corpus's multi-frame cases: the phantom T2 as one Enhanced MR instance
(:func:`tests.multiframe.enhanced_mr`), well-formed but shuffled, and hostile.

Issue 13: the gateway reads Enhanced MR frames into a volume. Until that work is merged, every
case here but ``multiframe_frame_count_mismatch`` fails: the job fails with "only single-frame
is supported" instead of the outcome written here (no xfail: the corpus test reports each case).
"""

from __future__ import annotations

import copy
from typing import Any

from pydicom.dataset import Dataset

from tests.corpus.generate import MISMATCH, Case, Expect, _Corpus, _uid
from tests.multiframe import enhanced_mr


def _failed(*words: str) -> Expect:
    return Expect(status="0x0000", job="failed", reason_words=words)


def _slices(c: _Corpus, name: str) -> list[Dataset]:
    """The corpus's phantom T2 slices with the case's own study, series, frame and SOP UIDs."""
    out = []
    for k, ds in enumerate(c.slices):
        ds = copy.deepcopy(ds)
        ds.StudyInstanceUID = _uid(name, "study")
        ds.SeriesInstanceUID = _uid(name, "series")
        ds.FrameOfReferenceUID = _uid(name, "frame")
        ds.SOPInstanceUID = _uid(name, "slice", str(k))
        out.append(ds)
    return out


def _case(c: _Corpus, name: str, description: str, expect: Expect, **options: Any) -> None:
    written = enhanced_mr(
        [_slices(c, name)],
        c.folder(name) / "instance.dcm",
        contrast="T2",
        series_description=f"T2 TSE tra enhanced ({name})",  # what the model selects
        **options,
    )
    c.add(
        Case(
            name,
            description,
            "c-store",
            expect,
            (c.rel(written.path),),
            study_uid=written.study_instance_uid,
        )
    )


def multiframe_cases(c: _Corpus) -> None:
    n = len(c.slices)
    # Needs the issue-13 reader: frames sorted by position, not by their order in the file.
    _case(
        c,
        "multiframe_shuffled_frames",
        f"the T2 phantom as one Enhanced MR instance ({n} frames, all functional groups), the "
        "frames written in a random order: the reader must sort them by position",
        Expect(status="0x0000", job="done", rtstruct=True),
        shuffle_seed=13,
    )
    # Needs the issue-13 reader: a frame without PlanePositionSequence is named, not guessed.
    _case(
        c,
        "multiframe_missing_frame_position",
        f"an Enhanced MR instance of {n} frames whose frame 12 has no PlanePositionSequence "
        "(and the shared group has none either)",
        _failed("frame", "position"),
        drop_position_of=12,
    )
    # Needs the issue-13 reader: two stacks of different orientation are not one volume.
    _case(
        c,
        "multiframe_mixed_stack_orientations",
        f"an Enhanced MR instance of two stacks: frames 1-{n // 2} axial (stack 1), frames "
        f"{n // 2 + 1}-{n} stack 2 turned 90 degrees (row along the axial normal: sagittal)",
        _failed("orientation"),
        rotate_second_stack=True,
    )
    # Passes today: reception compares native pixel length with Rows x Columns x frames.
    _case(
        c,
        "multiframe_frame_count_mismatch",
        f"an Enhanced MR instance declaring NumberOfFrames {n + 1} over the pixel data (and "
        f"per-frame groups) of {n} frames, native Explicit VR Little Endian",
        MISMATCH,
        extra_declared_frames=1,
    )
