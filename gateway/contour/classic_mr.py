"""The MR Image module of one frame of an Enhanced MR or Legacy Converted Enhanced MR object, as
a classic MR Image carries it (for :mod:`gateway.contour.classic_copy`).

A classic attribute of a frame is taken from the Legacy Converted object's unassigned converted
attributes (per frame, then shared), else mapped from the Enhanced MR functional groups and
modules (EffectiveEchoTime -> EchoTime, TransmitterFrequency -> ImagingFrequency, ...; numbers
put in the classic VR), else from a top-level attribute of that name. ScanningSequence,
SequenceVariant and ScanOptions, when not given, are mapped from the MR Pulse Sequence module and
the MR Modifier / Imaging Modifier groups.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from pydicom.datadict import dictionary_VM, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.valuerep import format_number_as_ds

from gateway.multiframe import functional_group

# Per-frame attributes of the MR Image, General Image, General Acquisition and Image Plane
# modules: a Legacy Converted object keeps them in its unassigned converted attributes.
_PER_FRAME = """
MRAcquisitionType SequenceName AngioFlag RepetitionTime EchoTime InversionTime EchoTrainLength
NumberOfAverages ImagingFrequency ImagedNucleus EchoNumbers MagneticFieldStrength
NumberOfPhaseEncodingSteps PercentSampling PercentPhaseFieldOfView PixelBandwidth TriggerTime
NominalInterval BeatRejectionFlag LowRRValue HighRRValue IntervalsAcquired IntervalsRejected
PVCRejection SkipBeats HeartRate CardiacNumberOfImages TriggerWindow ReconstructionDiameter
ReceiveCoilName TransmitCoilName AcquisitionMatrix InPlanePhaseEncodingDirection FlipAngle
VariableFlipAngleFlag SAR dBdt B1rms TemporalPositionIdentifier NumberOfTemporalPositions
TemporalResolution ContentDate ContentTime AcquisitionDate AcquisitionTime AcquisitionDateTime
AcquisitionNumber ImageComments SliceLocation
""".split()

# Classic keyword -> (functional group, or None for a top-level attribute; Enhanced keyword).
_MAPPED: dict[str, tuple[str | None, str]] = {
    "EchoTime": ("MREchoSequence", "EffectiveEchoTime"),
    "RepetitionTime": ("MRTimingAndRelatedParametersSequence", "RepetitionTime"),
    "EchoTrainLength": ("MRTimingAndRelatedParametersSequence", "EchoTrainLength"),
    "FlipAngle": ("MRTimingAndRelatedParametersSequence", "FlipAngle"),
    "NumberOfAverages": ("MRAveragesSequence", "NumberOfAverages"),
    "ImagingFrequency": ("MRImagingModifierSequence", "TransmitterFrequency"),
    "PixelBandwidth": ("MRImagingModifierSequence", "PixelBandwidth"),
    "InversionTime": ("MRModifierSequence", "InversionTimes"),
    "InPlanePhaseEncodingDirection": ("MRFOVGeometrySequence", "InPlanePhaseEncodingDirection"),
    "NumberOfPhaseEncodingSteps": (
        "MRFOVGeometrySequence",
        "MRAcquisitionPhaseEncodingStepsInPlane",
    ),
    "PercentSampling": ("MRFOVGeometrySequence", "PercentSampling"),
    "PercentPhaseFieldOfView": ("MRFOVGeometrySequence", "PercentPhaseFieldOfView"),
    "ReceiveCoilName": ("MRReceiveCoilSequence", "ReceiveCoilName"),
    "TransmitCoilName": ("MRTransmitCoilSequence", "TransmitCoilName"),
    "TriggerTime": ("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"),
    "TemporalPositionIdentifier": ("FrameContentSequence", "TemporalPositionIndex"),
    "AcquisitionDateTime": ("FrameContentSequence", "FrameAcquisitionDateTime"),
    "AcquisitionNumber": ("FrameContentSequence", "FrameAcquisitionNumber"),
    "MRAcquisitionType": (None, "MRAcquisitionType"),
    "MagneticFieldStrength": (None, "MagneticFieldStrength"),
    "SequenceName": (None, "PulseSequenceName"),
    "ImagedNucleus": (None, "ResonantNucleus"),
}
_UNASSIGNED = (
    "UnassignedPerFrameConvertedAttributesSequence",
    "UnassignedSharedConvertedAttributesSequence",
)
_ECHO_PULSE = {"SPIN": ["SE"], "GRADIENT": ["GR"], "BOTH": ["SE", "GR"]}


def image_type(src: Dataset, item: Dataset | None) -> list[str]:
    kind = functional_group(src, item, "MRImageFrameTypeSequence")
    values = kind.get("FrameType") if kind is not None else None
    values = values or src.get("ImageType") or []
    rest = [str(v) for v in list(values)[2:4]]
    while rest and not rest[-1]:
        rest.pop()
    return ["DERIVED", "SECONDARY", *rest]


def _value(holder: Dataset | None, keyword: str) -> Any:
    if holder is None:
        return None
    value = holder.get(keyword)
    return None if value is None or value == "" else value


def _as_classic(keyword: str, value: Any) -> Any:
    """An Enhanced value (e.g. FD, US) in the VR and VM of the classic ``keyword``."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if dictionary_VM(keyword) == "1":
        values = values[:1]
    vr = dictionary_VR(keyword)
    if vr == "DS":
        values = [format_number_as_ds(float(v)) for v in values]
    elif vr == "IS":
        values = [int(round(float(v))) for v in values]
    return values[0] if len(values) == 1 else values


def _frame_value(src: Dataset, item: Dataset | None, keyword: str) -> Any:
    """A classic attribute of one frame: from a Legacy Converted object's unassigned converted
    attributes (per frame, then shared), else mapped from the Enhanced groups or modules, else
    a top-level attribute of that name; None when nowhere."""
    for sequence in _UNASSIGNED:
        value = _value(functional_group(src, item, sequence), keyword)
        if value is not None:
            return value
    if keyword in _MAPPED:
        group, enhanced = _MAPPED[keyword]
        value = _value(src if group is None else functional_group(src, item, group), enhanced)
        if value is not None:
            return _as_classic(keyword, value)
    return _value(src, keyword)


def mr_image_module(out: Dataset, src: Dataset, item: Dataset | None) -> None:
    for keyword in _PER_FRAME:
        value = _frame_value(src, item, keyword)
        if value is not None:
            setattr(out, keyword, value)
    out.ScanningSequence = _frame_value(src, item, "ScanningSequence") or _scanning(src, item)
    out.SequenceVariant = _frame_value(src, item, "SequenceVariant") or _variant(src, item)
    out.ScanOptions = _frame_value(src, item, "ScanOptions") or _options(src, item)
    scanning, variant = _values(out.ScanningSequence), _values(out.SequenceVariant)
    required = {
        "InversionTime": "IR" in scanning,
        "TriggerTime": "CG" in _values(out.ScanOptions),
        "RepetitionTime": "EP" not in scanning or "SK" in variant,
    }
    for keyword, needed in required.items():
        if needed and keyword not in out:
            setattr(out, keyword, "")


def _values(value: Any) -> list[str]:
    """A CS value as a list of strings (a single value is a str)."""
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _scanning(src: Dataset, item: Dataset | None) -> list[str]:
    """ScanningSequence from the Enhanced MR Pulse Sequence module and MR Modifier group."""
    out = list(_ECHO_PULSE.get(str(src.get("EchoPulseSequence", "")), []))
    if _value(functional_group(src, item, "MRModifierSequence"), "InversionRecovery") == "YES":
        out.append("IR")
    if src.get("EchoPlanarPulseSequence") == "YES":
        out.append("EP")
    return out or ["RM"]


def _variant(src: Dataset, item: Dataset | None) -> list[str]:
    imaging = functional_group(src, item, "MRImagingModifierSequence")
    modifier = functional_group(src, item, "MRModifierSequence")
    steady = src.get("SteadyStatePulseSequence")
    flags = (
        ("SK", src.get("SegmentedKSpaceTraversal") == "PARTIAL"),
        ("MTC", _value(imaging, "MagnetizationTransfer") in ("ON_RESONANCE", "OFF_RESONANCE")),
        ("SS", steady in ("FREE_PRECESSION", "TRANSVERSE", "LONGITUDINAL")),
        ("TRSS", steady == "TIME_REVERSED"),
        ("SP", _value(modifier, "Spoiling") in ("RF", "GRADIENT", "RF_AND_GRADIENT")),
        ("OSP", src.get("OversamplingPhase") in ("2D", "3D", "2D_3D")),
    )
    return [name for name, on in flags if on] or ["NONE"]


def _options(src: Dataset, item: Dataset | None) -> list[str] | str:
    modifier = functional_group(src, item, "MRModifierSequence")
    fourier = _value(modifier, "PartialFourierDirection")
    partial = _value(modifier, "PartialFourier") == "YES"
    flags = (
        ("PFP", partial and fourier == "PHASE"),
        ("PFF", partial and fourier == "FREQUENCY"),
        ("CG", src.get("CardiacSynchronizationTechnique") not in (None, "", "NONE")),
        ("RG", "GATING" in _values(src.get("RespiratoryMotionCompensationTechnique"))),
        ("FC", _value(modifier, "FlowCompensation") not in (None, "NONE")),
        ("FS", src.get("SpectrallySelectedSuppression") in ("FAT", "FAT_AND_WATER")),
        ("SP", _value(modifier, "SpatialPresaturation") == "SLAB"),
    )
    return [name for name, on in flags if on] or ""


def frame_display(out: Dataset, src: Dataset, item: Dataset | None) -> None:
    """The frame's rescale (when not identity), window and anatomy as classic attributes."""
    transform = functional_group(src, item, "PixelValueTransformationSequence")
    slope = float(_value(transform, "RescaleSlope") or 1.0)
    intercept = float(_value(transform, "RescaleIntercept") or 0.0)
    if (slope, intercept) != (1.0, 0.0):
        out.RescaleIntercept = format_number_as_ds(intercept)
        out.RescaleSlope = format_number_as_ds(slope)
        out.RescaleType = str(_value(transform, "RescaleType") or "US")
    voi = functional_group(src, item, "FrameVOILUTSequence")
    for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
        if _value(voi, keyword) is not None:
            out[keyword] = copy.deepcopy(voi[keyword])  # type: ignore[index]
    anatomy = functional_group(src, item, "FrameAnatomySequence")
    if _value(anatomy, "AnatomicRegionSequence") is not None:
        out.AnatomicRegionSequence = copy.deepcopy(anatomy.AnatomicRegionSequence)  # type: ignore[union-attr]
    if _value(anatomy, "FrameLaterality") is not None:
        out.ImageLaterality = anatomy.FrameLaterality  # type: ignore[union-attr]
