"""Multi-frame images (Enhanced MR, Legacy Converted Enhanced MR): what each frame is and where.

A multi-frame object keeps the geometry and type of each frame in functional groups: a group
of the frame's item of PerFrameFunctionalGroupsSequence, else of SharedFunctionalGroupsSequence
(PS3.3 C.7.6.16). The groups read here: PlanePositionSequence (ImagePositionPatient),
PlaneOrientationSequence (ImageOrientationPatient), PixelMeasuresSequence (PixelSpacing,
SliceThickness), FrameContentSequence (StackID, TemporalPositionIndex), MRImageFrameTypeSequence
(FrameType, ComplexImageComponent), MREchoSequence (EffectiveEchoTime),
MRTimingAndRelatedParametersSequence (RepetitionTime).

**Channels** (the policy). Frames are split into channels by their per-frame image type and what
else tells images at the same place apart (:data:`CHANNEL_KEYS`): FrameType,
ComplexImageComponent, EffectiveEchoTime, the diffusion b-value and gradient direction, the
inversion time, the cardiac trigger delay and TemporalPositionIndex (from the Enhanced MR
groups, or a Legacy Converted object's converted classic attributes). So a Philips mDixon object
holding in-phase, opposed-phase, water and fat frames gives four channels, each of which a model
selector names as it names a classic series: the channel's attributes are the series' attributes
with ImageType set to the frames' FrameType (e.g. ``[DERIVED, PRIMARY, DIXON, WATER]``),
EchoTime to their EffectiveEchoTime, and RepetitionTime, SliceThickness, SequenceName,
ScanningSequence, DiffusionBValue, InversionTime and ComplexImageComponent from their groups.
Stacks (StackID) are not channels: the frames of one channel, in every stack, must form one
volume (the same checks as a classic series), so two stacks of a channel with different
orientations are refused with that reason rather than guessed between.

What is recorded per instance is JSON (:func:`describe_frames`); the database turns it into one
image set per channel (``gateway.db.studies``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

# Top-level elements left out of a frame's header: the groups (their content is put back per
# frame) and the pixels.
_NOT_IN_FRAME_HEADER = {
    "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
}


def frame_count(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def is_multiframe(ds: Dataset) -> bool:
    return frame_count(ds) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def functional_group(ds: Dataset, per_frame: Dataset | None, keyword: str) -> Dataset | None:
    """The first item of functional group ``keyword`` for a frame: per frame, else shared."""
    for holder in (per_frame, _shared(ds)):
        if holder is not None:
            seq = holder.get(keyword)
            if seq:
                return seq[0]
    return None


def _shared(ds: Dataset) -> Dataset | None:
    seq = ds.get("SharedFunctionalGroupsSequence")
    return seq[0] if seq else None


def _floats(item: Dataset | None, keyword: str, n: int) -> list[float] | None:
    if item is None:
        return None
    value = item.get(keyword)
    if value is None or value == "":
        return None
    try:
        out = [float(v) for v in (value if isinstance(value, Sequence) else [value])]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _plain(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, str | bytes):
        return str(value)
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return int(f) if f.is_integer() and abs(f) < 1e15 else f


_UNASSIGNED = (
    "UnassignedPerFrameConvertedAttributesSequence",
    "UnassignedSharedConvertedAttributesSequence",
)
_SCANNING = {"SPIN": "SE", "GRADIENT": "GR", "BOTH": ["SE", "GR"]}


def _first(item: Dataset | None, keyword: str) -> Any:
    return _plain(item.get(keyword)) if item is not None else None


def _converted(ds: Dataset, per_frame: Dataset | None, keyword: str) -> Any:
    """A classic attribute a Legacy Converted object kept in its unassigned converted
    attributes (per frame, then shared)."""
    for sequence in _UNASSIGNED:
        value = _first(functional_group(ds, per_frame, sequence), keyword)
        if value is not None:
            return value
    return None


def _channel(ds: Dataset, per_frame: Dataset | None) -> dict[str, Any]:
    """The attributes that set a frame's channel (see the module docstring), JSON-safe, in the
    classic attributes' names (Enhanced MR groups first, then a Legacy Converted object's
    converted attributes)."""

    def group(name: str) -> Dataset | None:
        return functional_group(ds, per_frame, name)

    kind = group("MRImageFrameTypeSequence")
    diffusion = group("MRDiffusionSequence")
    direction = None
    if diffusion is not None and diffusion.get("DiffusionGradientDirectionSequence"):
        direction = _first(
            diffusion.DiffusionGradientDirectionSequence[0], "DiffusionGradientOrientation"
        )
    attrs = {
        "ImageType": _first(kind, "FrameType") or _converted(ds, per_frame, "ImageType"),
        "ComplexImageComponent": _first(kind, "ComplexImageComponent"),
        "EchoTime": _first(group("MREchoSequence"), "EffectiveEchoTime")
        or _converted(ds, per_frame, "EchoTime"),
        "DiffusionBValue": _first(diffusion, "DiffusionBValue")
        or _converted(ds, per_frame, "DiffusionBValue"),
        "DiffusionGradientOrientation": direction,
        "InversionTime": _first(group("MRModifierSequence"), "InversionTimes")
        or _converted(ds, per_frame, "InversionTime"),
        "TriggerTime": _first(
            group("CardiacSynchronizationSequence"), "NominalCardiacTriggerDelayTime"
        )
        or _converted(ds, per_frame, "TriggerTime"),
        "TemporalPositionIndex": _first(group("FrameContentSequence"), "TemporalPositionIndex"),
    }
    # Not part of what tells channels apart, but what a selector or guardrail may read.
    pulse = _plain(ds.get("EchoPulseSequence"))
    extra = {
        "RepetitionTime": _first(group("MRTimingAndRelatedParametersSequence"), "RepetitionTime")
        or _converted(ds, per_frame, "RepetitionTime"),
        "SliceThickness": _first(group("PixelMeasuresSequence"), "SliceThickness"),
        "SequenceName": _plain(ds.get("PulseSequenceName"))
        or _converted(ds, per_frame, "SequenceName"),
        "ScanningSequence": _converted(ds, per_frame, "ScanningSequence")
        or (_SCANNING.get(pulse) if isinstance(pulse, str) else None),
    }
    return {k: v for k, v in {**attrs, **extra}.items() if v is not None}


# What tells frames at the same place apart (besides the stack): a channel per combination.
CHANNEL_KEYS = (
    "ImageType",
    "ComplexImageComponent",
    "EchoTime",
    "DiffusionBValue",
    "DiffusionGradientOrientation",
    "InversionTime",
    "TriggerTime",
    "TemporalPositionIndex",
)


def describe_frames(ds: Dataset) -> dict[str, Any] | None:
    """Per frame of a multi-frame object: its channel, stack, position and (when not shared by
    all frames) orientation and pixel spacing, as JSON-safe values; None for a single-frame
    image. Absent or malformed values are recorded as None (assembly names the problem).

    Returns ``{"channels": [attributes, ...], "frames": [{"c": channel index, "st": StackID,
    "p": position or None, "o": orientation, "s": pixel spacing}, ...]}``; with orientation
    and spacing shared by all frames, they are given once as ``"orientation"`` and
    ``"spacing"`` and left out of the frames.
    """
    if not is_multiframe(ds):
        return None
    n = frame_count(ds)
    try:
        return _describe(ds, n)
    except Exception:  # noqa: BLE001 - malformed groups: every frame without a position
        return {"channels": [{}], "frames": [{"c": 0, "st": None, "p": None}] * n}


def _describe(ds: Dataset, n: int) -> dict[str, Any]:
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    channels: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    frames: list[dict[str, Any]] = []
    for i in range(n):
        item = per[i] if i < len(per) else None
        attrs = _channel(ds, item)
        key = json.dumps({k: attrs.get(k) for k in CHANNEL_KEYS}, sort_keys=True)
        if key not in index:
            index[key] = len(channels)
            channels.append(attrs)
        content = functional_group(ds, item, "FrameContentSequence")
        stack = content.get("StackID") if content is not None else None
        frames.append(
            {
                "c": index[key],
                "st": str(stack) if stack not in (None, "") else None,
                "p": _floats(
                    functional_group(ds, item, "PlanePositionSequence"), "ImagePositionPatient", 3
                ),
                "o": _floats(
                    functional_group(ds, item, "PlaneOrientationSequence"),
                    "ImageOrientationPatient",
                    6,
                ),
                "s": _floats(
                    functional_group(ds, item, "PixelMeasuresSequence"), "PixelSpacing", 2
                ),
            }
        )
    out: dict[str, Any] = {"channels": channels, "frames": frames}
    for short, name in (("o", "orientation"), ("s", "spacing")):
        values = {json.dumps(f[short]) for f in frames}
        if len(values) == 1 and frames and frames[0][short] is not None:
            out[name] = frames[0][short]
            for f in frames:
                del f[short]
    if len(per) != n:
        out["per_frame_items"] = len(per)
    return out


def frame_header(ds: Dataset, frame: int) -> Dataset:
    """A header for frame ``frame`` (1-based) of a multi-frame object, as a single-frame image
    would carry it: the object's top-level attributes (no functional groups, no pixels) plus
    the frame's ImagePositionPatient, ImageOrientationPatient, PixelSpacing and SliceThickness.
    The SOP Class and Instance UIDs stay the object's: a reference to it needs the frame number
    too."""
    out = Dataset()
    for elem in ds:
        if elem.keyword not in _NOT_IN_FRAME_HEADER:
            out.add(copy.copy(elem))  # a value set below must not change ``ds``
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    item = per[frame - 1] if frame - 1 < len(per) else None
    position = _floats(
        functional_group(ds, item, "PlanePositionSequence"), "ImagePositionPatient", 3
    )
    orientation = _floats(
        functional_group(ds, item, "PlaneOrientationSequence"), "ImageOrientationPatient", 6
    )
    measures = functional_group(ds, item, "PixelMeasuresSequence")
    spacing = _floats(measures, "PixelSpacing", 2)
    if position is not None:
        out.ImagePositionPatient = position
    if orientation is not None:
        out.ImageOrientationPatient = orientation
    if spacing is not None:
        out.PixelSpacing = spacing
    if measures is not None and measures.get("SliceThickness") not in (None, ""):
        out.SliceThickness = measures.SliceThickness
    out.NumberOfFrames = 1
    return out


def frame_reference(ds: Dataset, frame: int | None) -> Dataset:
    """An image reference item (ReferencedSOPClassUID, ReferencedSOPInstanceUID and, for a frame
    of a multi-frame image, ReferencedFrameNumber)."""
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if frame is not None:
        ref.ReferencedFrameNumber = frame
    return ref


def references(datasets: Sequence[Dataset], frames: Sequence[int]) -> DicomSequence:
    """One image reference per slice (see :func:`frame_reference`)."""
    if frames:
        return DicomSequence([frame_reference(d, f) for d, f in zip(datasets, frames, strict=True)])
    return DicomSequence([frame_reference(d, None) for d in datasets])
