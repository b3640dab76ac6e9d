"""Pure slice geometry: does a set of 2-D slices form one consistent volume, and in what order?

Positions and directions are in patient coordinates (mm, DICOM LPS). The slice normal is
``cross(row direction, column direction)`` (:func:`gateway.grid.slice_normal`), where the row
direction is the first triplet of ImageOrientationPatient (along a row, i.e. increasing column
index). Slices are sorted by their position projected on that normal, ascending: the order
SimpleITK and rt-utils use.

highdicom's ``get_volume_positions`` makes the same decision but answers only "not a volume";
the checks here say which problem it is, in words a user can act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway.db.records import SliceGeometry
from gateway.grid import slice_normal

ORIENTATION_TOLERANCE = 1e-3  # difference in direction cosines
POSITION_TOLERANCE_MM = 0.05
SPACING_RELATIVE_TOLERANCE = 0.02


@dataclass(frozen=True)
class VolumeCheck:
    """The outcome of :func:`check_volume`: ``problems`` is empty when the slices form a volume."""

    problems: tuple[str, ...]
    order: tuple[str, ...]  # slice refs (SliceGeometry.ref) sorted along the normal; () on problems
    slice_spacing: float | None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_volume(slices: Sequence[SliceGeometry]) -> VolumeCheck:
    """Check that ``slices`` form one volume: one frame of reference, one orientation, one
    in-plane grid, distinct positions along the normal at uniform spacing (no gaps), and each
    position on the normal through the first slice (no shear or gantry tilt)."""
    problems: list[str] = []
    if not slices:
        return VolumeCheck(("no slices",), (), None)
    if any(s.frame is not None for s in slices):
        problem = _frame_problem(slices)
        if problem:
            return VolumeCheck((problem,), (), None)
    missing = [s for s in slices if None in (s.position, s.orientation, s.pixel_spacing, s.rows)]
    if missing:
        return VolumeCheck(
            (
                f"{len(missing)} instance(s) lack ImagePositionPatient, ImageOrientationPatient, "
                "PixelSpacing or Rows/Columns",
            ),
            (),
            None,
        )
    malformed = [
        s
        for s in slices
        if (len(s.position or ()), len(s.orientation or ()), len(s.pixel_spacing or ()))
        != (3, 6, 2)
    ]
    if malformed:
        return VolumeCheck(
            (
                f"{len(malformed)} instance(s) have ImagePositionPatient, ImageOrientationPatient "
                "or PixelSpacing with the wrong number of values",
            ),
            (),
            None,
        )
    frames = {s.frame_of_reference_uid for s in slices}
    if len(frames) != 1 or None in frames:
        problems.append(
            f"{len(frames - {None})} frames of reference in one series"
            if None not in frames
            else "FrameOfReferenceUID missing"
        )
    first = slices[0]
    assert first.orientation is not None and first.pixel_spacing is not None
    iop0 = np.asarray(first.orientation, dtype=float)
    if any(
        np.max(np.abs(np.asarray(s.orientation) - iop0)) > ORIENTATION_TOLERANCE for s in slices
    ):
        problems.append("ImageOrientationPatient differs between slices")
    if len({(s.rows, s.columns) for s in slices}) != 1:
        problems.append("Rows/Columns differ between slices")
    ps0 = np.asarray(first.pixel_spacing, dtype=float)
    if any(np.max(np.abs(np.asarray(s.pixel_spacing) - ps0)) > 1e-4 for s in slices):
        problems.append("PixelSpacing differs between slices")
    if problems:
        return VolumeCheck(tuple(problems), (), None)

    normal = slice_normal(iop0)
    pos = np.array([s.position for s in slices], dtype=float)
    dist = pos @ normal
    idx = np.argsort(dist, kind="stable")
    dist_sorted = dist[idx]
    pos_sorted = pos[idx]
    if len(slices) < 2:
        return VolumeCheck((), (slices[0].ref,), None)
    steps = np.diff(dist_sorted)
    if np.any(steps < POSITION_TOLERANCE_MM):
        n = int(np.sum(steps < POSITION_TOLERANCE_MM))
        return VolumeCheck((f"{n} duplicate slice position(s)",), (), None)
    spacing = float(np.median(steps))
    tol = max(POSITION_TOLERANCE_MM, SPACING_RELATIVE_TOLERANCE * spacing)
    bad = np.abs(steps - spacing) > tol
    if np.any(bad):
        big = steps[bad].max()
        if big > 1.5 * spacing:
            problems.append(
                f"gap in slice positions: {big:.2f} mm step where spacing is {spacing:.2f} mm "
                f"({int(np.sum(steps > 1.5 * spacing))} gap(s))"
            )
        else:
            problems.append(f"non-uniform slice spacing ({steps.min():.2f}-{steps.max():.2f} mm)")
    # Shear / gantry tilt: in-plane offsets of each position from the first must be ~0.
    offsets = pos_sorted - pos_sorted[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    if np.max(np.linalg.norm(in_plane, axis=1)) > max(0.1, 0.01 * spacing * len(slices)):
        problems.append("slice positions are not along the slice normal (sheared or tilted)")
    if problems:
        return VolumeCheck(tuple(problems), (), spacing)
    return VolumeCheck((), tuple(slices[i].ref for i in idx), spacing)


def _frame_problem(slices: Sequence[SliceGeometry]) -> str | None:
    """What is wrong with the per-frame geometry of multi-frame instances, in the words of
    their functional groups: frames without a position, orientation or pixel spacing, or
    stacks of one image set with different orientations."""
    frames = [s for s in slices if s.frame is not None]
    for attr, group in (
        ("position", "PlanePositionSequence"),
        ("orientation", "PlaneOrientationSequence"),
        ("pixel_spacing", "PixelMeasuresSequence"),
    ):
        lacking = [s.frame for s in frames if getattr(s, attr) is None]
        if lacking:
            shown = ", ".join(str(f) for f in lacking[:5]) + (", ..." if len(lacking) > 5 else "")
            return (
                f"{len(lacking)} frame(s) without a {attr.replace('_', ' ')} ({group}): "
                f"frame(s) {shown}"
            )
    by_stack: dict[str | None, np.ndarray] = {}
    for s in frames:
        by_stack.setdefault(s.stack, np.asarray(s.orientation, dtype=float))
    if len(by_stack) > 1:
        first = next(iter(by_stack.values()))
        if any(np.max(np.abs(o - first)) > ORIENTATION_TOLERANCE for o in by_stack.values()):
            names = ", ".join(str(k) for k in by_stack)
            return (
                f"stacks {names} of one image set have different orientations "
                "(PlaneOrientationSequence): one volume needs one orientation"
            )
    return None
