"""The attributes of an Enhanced MR Image Storage instance for :mod:`tests.multiframe`: the
functional-group macros of a frame, built from the classic MR slice it holds (values the slice
lacks get plausible defaults, so that the macros dciodvfy requires for ORIGINAL frames are
complete), the shared/per-frame split, the dimensions and the top-level modules."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as gateway.demo.phantom uses
# Always per frame; every other macro is shared where all frames agree.
_PER_FRAME = ("FrameContentSequence", "PlanePositionSequence")

PROSTATE = ("41216001", "SCT", "Prostate")


def uid(*parts: object) -> str:
    """A UID under pydicom's root, the same for the same parts."""
    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=[str(p) for p in parts]))


def item(**attributes: object) -> Dataset:
    """A sequence item with the given attributes (DICOM keywords)."""
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _number(src: Dataset, keyword: str, default: float) -> float:
    value = src.get(keyword)
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def frame_type_item(frame_type: Sequence[str], contrast: str) -> Dataset:
    """The MR Image Frame Type macro (also the top level's image description values)."""
    return item(
        FrameType=list(frame_type),
        PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME",
        VolumeBasedCalculationTechnique="NONE",
        ComplexImageComponent="MAGNITUDE",
        AcquisitionContrast=contrast,
    )


def frame_macros(
    src: Dataset,
    frame_type: Sequence[str],
    contrast: str,
) -> dict[str, Dataset]:
    """Every macro of one frame except Frame Content and the plane ones."""
    echo_train = int(_number(src, "EchoTrainLength", 1))
    gradient = str(src.get("ScanningSequence", "")).startswith("GR")
    macros = {
        "MRImageFrameTypeSequence": frame_type_item(frame_type, contrast),
        "PixelMeasuresSequence": item(
            PixelSpacing=list(src.PixelSpacing),
            SliceThickness=_number(src, "SliceThickness", 1.0),
        ),
        "PixelValueTransformationSequence": item(
            RescaleIntercept=_number(src, "RescaleIntercept", 0.0),
            RescaleSlope=_number(src, "RescaleSlope", 1.0),
            RescaleType=str(src.get("RescaleType", "") or "US"),
        ),
        "FrameAnatomySequence": item(
            AnatomicRegionSequence=DicomSequence([_code(*PROSTATE)]), FrameLaterality="U"
        ),
        "MREchoSequence": item(EffectiveEchoTime=_number(src, "EchoTime", 10.0)),
        "MRTimingAndRelatedParametersSequence": item(
            RepetitionTime=_number(src, "RepetitionTime", 1000.0),
            FlipAngle=_number(src, "FlipAngle", 12.0 if gradient else 90.0),
            EchoTrainLength=echo_train,
            RFEchoTrainLength=0 if gradient else echo_train,
            GradientEchoTrainLength=echo_train if gradient else 0,
            SpecificAbsorptionRateSequence=DicomSequence(
                [
                    item(
                        SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                        SpecificAbsorptionRateValue=_number(src, "SAR", 0.5),
                    )
                ]
            ),
            GradientOutputType="DB_DT",
            GradientOutput=0.0,
            OperatingModeSequence=DicomSequence(
                [
                    item(OperatingModeType=kind, OperatingMode="IEC_NORMAL")
                    for kind in ("STATIC FIELD", "RF", "GRADIENT")
                ]
            ),
        ),
        "MRFOVGeometrySequence": item(
            InPlanePhaseEncodingDirection=str(src.get("InPlanePhaseEncodingDirection") or "ROW"),
            MRAcquisitionFrequencyEncodingSteps=int(src.Columns),
            MRAcquisitionPhaseEncodingStepsInPlane=int(src.Rows),
            MRAcquisitionPhaseEncodingStepsOutOfPlane=1,
            PercentSampling=_number(src, "PercentSampling", 100.0),
            PercentPhaseFieldOfView=_number(src, "PercentPhaseFieldOfView", 100.0),
        ),
        "MRModifierSequence": item(
            InversionRecovery="NO",
            FlowCompensation="NONE",
            T2Preparation="NO",
            SpectrallySelectedExcitation="NONE",
            SpatialPresaturation="NONE",
            PartialFourier="NO",
            ParallelAcquisition="NO",
        ),
        "MRImagingModifierSequence": item(
            MagnetizationTransfer="NONE",
            BloodSignalNulling="NO",
            Tagging="NONE",
            TransmitterFrequency=_number(src, "ImagingFrequency", 123.2),
            PixelBandwidth=_number(src, "PixelBandwidth", 200.0),
        ),
        "MRReceiveCoilSequence": item(
            ReceiveCoilName=str(src.get("ReceiveCoilName") or "BODY"),
            ReceiveCoilManufacturerName="",
            ReceiveCoilType="MULTICOIL",
            QuadratureReceiveCoil="NO",
            MultiCoilDefinitionSequence=DicomSequence(
                [item(MultiCoilElementName="BO1", MultiCoilElementUsed="YES")]
            ),
        ),
        "MRTransmitCoilSequence": item(
            TransmitCoilName=str(src.get("TransmitCoilName") or "Body"),
            TransmitCoilManufacturerName="",
            TransmitCoilType="BODY",
        ),
        "MRAveragesSequence": item(NumberOfAverages=_number(src, "NumberOfAverages", 1.0)),
    }
    if "WindowCenter" in src and "WindowWidth" in src:
        macros["FrameVOILUTSequence"] = item(
            WindowCenter=_first(src.WindowCenter), WindowWidth=_first(src.WindowWidth)
        )
    return macros


def _first(value: object) -> float:
    """The first of a possibly multi-valued DS (WindowCenter may hold several)."""
    return float(value[0] if isinstance(value, MultiValue | list) else value)  # type: ignore[arg-type]


def pulse_sequence(first: Dataset) -> dict[str, object]:
    """The MR Pulse Sequence module (top level), from the first classic slice."""
    gradient = str(first.get("ScanningSequence", "")).startswith("GR")
    three_d = str(first.get("MRAcquisitionType", "2D")) == "3D"
    attributes: dict[str, object] = {
        "PulseSequenceName": str(first.get("SequenceName") or "unknown").lstrip("*")[:16],
        "MRAcquisitionType": "3D" if three_d else "2D",
        "EchoPulseSequence": "GRADIENT" if gradient else "SPIN",
        "MultipleSpinEcho": "NO" if gradient else "YES",
        "MultiPlanarExcitation": "NO" if three_d else "YES",
        "PhaseContrast": "NO",
        "TimeOfFlightContrast": "NO",
        "SteadyStatePulseSequence": "NONE",
        "EchoPlanarPulseSequence": "NO",
        "SaturationRecovery": "NO",
        "SpectrallySelectedSuppression": "NONE",
        "OversamplingPhase": "NONE",
        "GeometryOfKSpaceTraversal": "RECTILINEAR",
        "RectilinearPhaseEncodeReordering": "LINEAR",
        "SegmentedKSpaceTraversal": "SINGLE" if gradient else "PARTIAL",
        "NumberOfKSpaceTrajectories": 1,
    }
    if three_d:
        attributes["CoverageOfKSpace"] = "FULL"
    return attributes


def frame_content(src: Dataset, stack: int, in_stack: int, index: list[int]) -> Dataset:
    """The Frame Content macro; acquisition times from the classic slice."""
    acquired = str(src.get("AcquisitionDate") or src.get("ContentDate") or "20240101")
    acquired += str(src.get("AcquisitionTime") or src.get("ContentTime") or "090000")
    return item(
        FrameAcquisitionNumber=int(src.get("AcquisitionNumber") or 1),
        FrameReferenceDateTime=acquired,
        FrameAcquisitionDateTime=acquired,
        FrameAcquisitionDuration=1000.0,
        StackID=str(stack),
        InStackPositionNumber=in_stack,
        DimensionIndexValues=index,
    )


def factor(groups: list[dict[str, Dataset]]) -> tuple[Dataset, list[Dataset]]:
    """The shared item (macros equal in every frame) and one per-frame item per frame."""
    keywords = sorted({kw for g in groups for kw in g})
    shared, per_frame = Dataset(), [Dataset() for _ in groups]
    for kw in keywords:
        values = [g.get(kw) for g in groups]
        if kw not in _PER_FRAME and all(v is not None and v == values[0] for v in values):
            setattr(shared, kw, DicomSequence([values[0]]))
            continue
        for target, value in zip(per_frame, values, strict=True):
            if value is not None:
                setattr(target, kw, DicomSequence([value]))
    return shared, per_frame


def dimensions(organization_uid: str, *, by_channel: bool) -> Dataset:
    """The Multi-frame Dimension module: StackID, InStackPositionNumber and, ``by_channel``,
    FrameType (index = channel + 1)."""
    pointers = [
        ("StackID", "FrameContentSequence", "Stack ID"),
        ("InStackPositionNumber", "FrameContentSequence", "In-Stack Position Number"),
    ]
    if by_channel:
        pointers.append(("FrameType", "MRImageFrameTypeSequence", "Frame Type (channel)"))
    return item(
        DimensionOrganizationSequence=DicomSequence(
            [item(DimensionOrganizationUID=organization_uid)]
        ),
        DimensionIndexSequence=DicomSequence(
            [
                item(
                    DimensionOrganizationUID=organization_uid,
                    DimensionIndexPointer=tag_for_keyword(pointer),
                    FunctionalGroupPointer=tag_for_keyword(group),
                    DimensionDescriptionLabel=label,
                )
                for pointer, group, label in pointers
            ]
        ),
    )


def _mixed(types: Sequence[Sequence[str]]) -> list[str]:
    return [v[0] if len(set(v)) == 1 else "MIXED" for v in zip(*types, strict=True)]


def top_level(
    first: Dataset,
    types: Sequence[Sequence[str]],
    contrast: str,
    series_uid: str,
    series_number: int,
    description: str,
) -> Dataset:
    """The top-level modules, from the first classic slice; ImageType value *i* is MIXED where
    the frames' FrameType values *i* differ."""
    ds = Dataset()
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 100")
    ds.ImageType = _mixed(types)
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = uid(series_uid, "instance")
    for kw in (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyID",
        "PatientPosition",
        "PositionReferenceIndicator",
        "InstitutionName",
        "BodyPartExamined",
    ):
        setattr(ds, kw, first.get(kw, ""))
    ds.ContentDate = first.get("ContentDate") or first.StudyDate
    ds.ContentTime = first.get("ContentTime") or first.StudyTime
    ds.SeriesDate, ds.SeriesTime = ds.ContentDate, ds.ContentTime
    ds.AcquisitionDateTime = str(first.get("AcquisitionDate") or ds.ContentDate) + str(
        first.get("AcquisitionTime") or ds.ContentTime
    )
    ds.AcquisitionDuration = 60.0
    ds.Modality = "MR"
    ds.Manufacturer = first.get("Manufacturer") or "AIRCON test data"
    ds.ManufacturerModelName = first.get("ManufacturerModelName") or "tests.multiframe"
    ds.DeviceSerialNumber = first.get("DeviceSerialNumber") or "0000"
    ds.SoftwareVersions = first.get("SoftwareVersions") or "tests.multiframe"
    ds.StudyInstanceUID = first.StudyInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = int(first.get("AcquisitionNumber") or 1)
    ds.ContentQualification = "RESEARCH"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = float(first.get("MagneticFieldStrength") or 3.0)
    ds.ApplicableSafetyStandardAgency = "IEC"
    description_item = frame_type_item(ds.ImageType, contrast)
    for elem in description_item:
        if elem.keyword != "FrameType":
            ds[elem.tag] = elem
    ds.AcquisitionContextSequence = DicomSequence()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = int(first.Rows), int(first.Columns)
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    if any(t[0] in ("ORIGINAL", "MIXED") for t in types):
        for keyword, value in pulse_sequence(first).items():
            setattr(ds, keyword, value)
    return ds


def write(ds: Dataset, out_path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(ds.SOPClassUID))
    meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out_path, enforce_file_format=True)
