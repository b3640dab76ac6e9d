"""Pure building of a classic single-frame copy of a multi-frame primary: for planning systems
that do not accept references to frames of multi-frame images (``rtstruct.multiframe_reference:
classic_copy``), the RTSTRUCT references this copy, sent along, instead.

Each slice of the volume (a frame of an Enhanced MR or Legacy Converted Enhanced MR instance)
becomes one MR Image Storage instance holding the frame's stored pixel values unchanged, its
geometry, and what the MR Image module needs, taken per frame from the Legacy Converted
object's unassigned converted attributes, else from the Enhanced MR functional groups and
modules (EffectiveEchoTime -> EchoTime, EchoPulseSequence -> ScanningSequence, ...: see
:mod:`gateway.contour.classic_mr`). The copy is
marked DERIVED\\SECONDARY, references its frame (SourceImageSequence with
ReferencedFrameNumber) and names AIRCON as frame extracting equipment. Its UIDs depend only on
``uid_root`` and the source's UIDs and frame numbers, so the same study sent twice gives the same
copy.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import MRImageStorage
from pydicom.valuerep import format_number_as_ds

from gateway.contour.classic_mr import frame_display, image_type, mr_image_module
from gateway.contour.rtstruct import MANUFACTURER_MODEL_NAME, file_meta, gateway_version
from gateway.errors import InvalidInput
from gateway.grid import slice_normal
from gateway.imaging import Volume
from gateway.uids import derive_uid

logger = logging.getLogger(__name__)

SERIES_NUMBER_OFFSET = 1000
_SUFFIX = " (classic copy)"
_IS_MAX = 2**31 - 1

# Top-level attributes of the modules both IODs share (Patient, Clinical Trial Subject, General
# Study, Patient Study, Clinical Trial Study, General Series less its identity, Clinical Trial
# Series, Frame of Reference, General Equipment) and of SOP Common / General Image that stay true
# for a copy. Copied as the source has them; private attributes are not copied.
_FROM_SOURCE = """
ReferencedPatientSequence PatientName PatientID IssuerOfPatientID TypeOfPatientID
IssuerOfPatientIDQualifiersSequence SourcePatientGroupIdentificationSequence
GroupOfPatientsIdentificationSequence PatientBirthDate PatientBirthTime
PatientBirthDateInAlternativeCalendar PatientDeathDateInAlternativeCalendar
PatientAlternativeCalendar PatientSex QualityControlSubject StrainDescription
StrainNomenclature StrainStockSequence StrainAdditionalInformation StrainCodeSequence
GeneticModificationsSequence OtherPatientNames OtherPatientIDsSequence EthnicGroupCodeSequence
PatientSpeciesDescription PatientSpeciesCodeSequence PatientBreedDescription
PatientBreedCodeSequence BreedRegistrationSequence ResponsiblePerson ResponsiblePersonRole
ResponsibleOrganization PatientComments PatientIdentityRemoved DeidentificationMethod
DeidentificationMethodCodeSequence ClinicalTrialSponsorName ClinicalTrialProtocolID
ClinicalTrialProtocolName IssuerOfClinicalTrialProtocolID OtherClinicalTrialProtocolIDsSequence
ClinicalTrialSiteID ClinicalTrialSiteName IssuerOfClinicalTrialSiteID ClinicalTrialSubjectID
IssuerOfClinicalTrialSubjectID ClinicalTrialSubjectReadingID
IssuerOfClinicalTrialSubjectReadingID ClinicalTrialProtocolEthicsCommitteeName
ClinicalTrialProtocolEthicsCommitteeApprovalNumber StudyDate StudyTime AccessionNumber
IssuerOfAccessionNumberSequence ReferringPhysicianName ReferringPhysicianIdentificationSequence
ConsultingPhysicianName ConsultingPhysicianIdentificationSequence StudyDescription
ProcedureCodeSequence PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence
NameOfPhysiciansReadingStudy PhysiciansReadingStudyIdentificationSequence
ReferencedStudySequence StudyInstanceUID StudyID RequestingService
RequestingServiceCodeSequence ReasonForPerformedProcedureCodeSequence
AdmittingDiagnosesDescription AdmittingDiagnosesCodeSequence PatientAge PatientSize
PatientSizeCodeSequence PatientBodyMassIndex MeasuredAPDimension MeasuredLateralDimension
PatientWeight MedicalAlerts Allergies Occupation SmokingStatus AdditionalPatientHistory
PregnancyStatus LastMenstrualDate PatientSexNeutered ReasonForVisit ReasonForVisitCodeSequence
AdmissionID IssuerOfAdmissionIDSequence ServiceEpisodeID ServiceEpisodeDescription
IssuerOfServiceEpisodeIDSequence PatientState ClinicalTrialTimePointID
ClinicalTrialTimePointDescription LongitudinalTemporalOffsetFromEvent
LongitudinalTemporalEventType ClinicalTrialTimePointTypeCodeSequence
IssuerOfClinicalTrialTimePointID ConsentForClinicalTrialUseSequence SeriesDate SeriesTime
PerformingPhysicianName PerformingPhysicianIdentificationSequence OperatorsName
OperatorIdentificationSequence ReferencedPerformedProcedureStepSequence
AnatomicalOrientationType BodyPartExamined ProtocolName PatientPosition Laterality
PerformedProcedureStepStartDate PerformedProcedureStepStartTime PerformedProcedureStepEndDate
PerformedProcedureStepEndTime PerformedProcedureStepID PerformedProcedureStepDescription
PerformedProtocolCodeSequence RequestAttributesSequence CommentsOnThePerformedProcedureStep
TreatmentSessionUID ClinicalTrialCoordinatingCenterName ClinicalTrialSeriesID
ClinicalTrialSeriesDescription IssuerOfClinicalTrialSeriesID FrameOfReferenceUID
PositionReferenceIndicator Manufacturer InstitutionName InstitutionAddress StationName
InstitutionalDepartmentName InstitutionalDepartmentTypeCodeSequence ManufacturerModelName
DeviceSerialNumber DeviceUID GantryID UDISequence ManufacturerDeviceClassUID SoftwareVersions
SpatialResolution DateOfLastCalibration TimeOfLastCalibration DateOfManufacture
DateOfInstallation PixelPaddingValue PixelPaddingRangeLimit
SpecificCharacterSet TimezoneOffsetFromUTC LongitudinalTemporalInformationModified
ContentQualification BurnedInAnnotation RecognizableVisualFeatures LossyImageCompression
LossyImageCompressionRatio LossyImageCompressionMethod PresentationLUTShape
""".split()

# Type 2 attributes written empty when the source lacks them.
_TYPE2 = """
PatientName PatientID PatientBirthDate PatientSex StudyDate StudyTime AccessionNumber
ReferringPhysicianName StudyID PositionReferenceIndicator Manufacturer PatientPosition
ContentDate ContentTime ScanOptions MRAcquisitionType EchoTime EchoTrainLength
""".split()


def classic_copy(
    volume: Volume,
    sources: Mapping[str, Path],
    *,
    uid_root: str,
    manufacturer: str = "AIRCON",
    now: datetime | None = None,
) -> tuple[list[Dataset], Volume]:
    """One MR Image Storage instance per slice of ``volume`` (frames of multi-frame instances;
    ``sources`` maps their SOP Instance UIDs to their files), and the volume as it reads from
    those copies.

    The copies (``file_meta`` set, Explicit VR Little Endian) are in ``volume``'s z order,
    InstanceNumber = slice index + 1, pixel data = the frame's stored values; a frame rescale
    other than identity is written as RescaleSlope/RescaleIntercept/RescaleType. The returned
    :class:`Volume` has ``volume``'s image, the copies' headers (no pixel data) as ``datasets``
    and no ``frames``, so an RTSTRUCT built on it references the copies.

    Raises :class:`InvalidInput` when ``volume`` has no frames, a source file is not given or
    its frames cannot be read as monochrome 8- or 16-bit images.
    """
    if not volume.frames:
        raise InvalidInput("a classic copy needs a volume of frames of multi-frame images")
    when = now or datetime.now()
    made_by = f"AIRCON {gateway_version()}"
    objects, pixels = _read(volume, sources)
    refs = [
        f"{ds.SOPInstanceUID}/{f}" for ds, f in zip(volume.datasets, volume.frames, strict=True)
    ]
    series_uid = derive_uid(uid_root, "classic-copy-series", *refs)
    spacing = volume.image.GetSpacing()[2] if len(volume.datasets) > 1 else None
    copies: list[Dataset] = []
    headers: list[Dataset] = []
    for k, (header, frame) in enumerate(zip(volume.datasets, volume.frames, strict=True)):
        src = objects[str(header.SOPInstanceUID)]
        out = _header(src, header, frame, when, (manufacturer, made_by))
        out.SOPInstanceUID = derive_uid(
            uid_root, "classic-copy", str(src.SOPInstanceUID), str(frame)
        )
        out.SeriesInstanceUID = series_uid
        out.InstanceNumber = k + 1
        if spacing is not None:
            out.SpacingBetweenSlices = format_number_as_ds(float(spacing))
        headers.append(out)
        full = Dataset()
        full.update(out)
        full.PixelData = pixels[k].tobytes()
        full.file_meta = file_meta(MRImageStorage, str(out.SOPInstanceUID))
        copies.append(full)
    logger.debug(
        "classic copy of series %s: %d frames -> series %s",
        volume.series_instance_uid,
        len(copies),
        series_uid,
    )
    return copies, Volume(image=volume.image, datasets=tuple(headers), frames=())


def _read(
    volume: Volume, sources: Mapping[str, Path]
) -> tuple[dict[str, Dataset], list[np.ndarray]]:
    """The source objects' headers by SOP Instance UID and each slice's stored pixels as
    little-endian 16-bit (8-bit stored values widened), each file opened once."""
    import highdicom

    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    missing = sorted(set(uids) - set(sources))
    if missing:
        raise InvalidInput(f"no file given for {len(missing)} multi-frame instance(s)")
    objects: dict[str, Dataset] = {}
    pixels: list[np.ndarray] = [np.empty(0)] * len(uids)
    for uid in dict.fromkeys(uids):
        src = pydicom.dcmread(sources[uid], stop_before_pixels=True)
        stored = _stored_dtype(src)
        ks = [k for k, u in enumerate(uids) if u == uid]
        try:
            image = highdicom.imread(sources[uid], lazy_frame_retrieval=True)
            frames = image.get_frames(
                [volume.frames[k] for k in ks],
                dtype=stored,
                apply_modality_transform=False,
                apply_real_world_transform=False,
                apply_voi_transform=False,
                apply_presentation_lut=False,
                apply_palette_color_lut=False,
                apply_icc_profile=False,
            )
        except (ValueError, IndexError, KeyError, AttributeError, TypeError) as exc:
            raise InvalidInput(
                f"the frames of a multi-frame instance could not be read: {exc}"
            ) from None
        wide = np.dtype("<i2" if stored.kind == "i" else "<u2")
        for k, frame in zip(ks, frames, strict=True):
            pixels[k] = frame.astype(wide)
        objects[uid] = src
    return objects, pixels


def _stored_dtype(src: Dataset) -> np.dtype:
    if int(src.get("SamplesPerPixel", 1)) != 1 or not _photometric(src).startswith("MONOCHROME"):
        raise InvalidInput("a classic copy of a colour multi-frame image is not supported")
    bits = int(src.get("BitsAllocated", 0))
    if bits not in (8, 16):
        raise InvalidInput(f"a classic copy of {bits}-bit frames is not supported")
    return np.dtype(f"{'i' if int(src.get('PixelRepresentation', 0)) else 'u'}{bits // 8}")


def _photometric(src: Dataset) -> str:
    return str(src.get("PhotometricInterpretation", "MONOCHROME2"))


def _header(
    src: Dataset, header: Dataset, frame: int, when: datetime, maker: tuple[str, str]
) -> Dataset:
    """Everything of one copy but its SOP Instance UID, Series UID, InstanceNumber and pixels."""
    per = src.get("PerFrameFunctionalGroupsSequence") or []
    item = per[frame - 1] if frame - 1 < len(per) else None
    out = Dataset()
    for keyword in _FROM_SOURCE:
        if keyword in src:
            out.add(copy.deepcopy(src[keyword]))
    out.SOPClassUID = MRImageStorage
    out.Modality = "MR"
    out.ImageType = image_type(src, item)
    out.InstanceCreationDate = when.strftime("%Y%m%d")
    out.InstanceCreationTime = when.strftime("%H%M%S")
    out.SeriesNumber = _series_number(src)
    description = str(src.get("SeriesDescription") or "multi-frame image")
    out.SeriesDescription = description[: 64 - len(_SUFFIX)] + _SUFFIX
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        out[keyword] = copy.deepcopy(header[keyword])
    out.SliceThickness = header.get("SliceThickness", "")
    _pixel_module(out, src)
    mr_image_module(out, src, item)
    if "SliceLocation" not in out:
        position = np.array([float(v) for v in header.ImagePositionPatient])
        normal = slice_normal(header.ImageOrientationPatient)
        out.SliceLocation = format_number_as_ds(float(position @ normal))
    frame_display(out, src, item)
    _derivation(out, src, frame, when, maker)
    for keyword in _TYPE2:
        if keyword not in out:
            setattr(out, keyword, "")
    return out


def _series_number(src: Dataset) -> int:
    """The source's SeriesNumber + 1000, within IS's range (1000 when it has none)."""
    try:
        number = int(src.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        number = 0
    return min(max(number + SERIES_NUMBER_OFFSET, -_IS_MAX), _IS_MAX)


def _pixel_module(out: Dataset, src: Dataset) -> None:
    out.SamplesPerPixel = 1
    out.PhotometricInterpretation = _photometric(src)
    out.Rows = src.Rows
    out.Columns = src.Columns
    out.BitsAllocated = 16  # the MR Image module's only value; 8-bit stored values widened
    out.BitsStored = int(src.BitsStored)
    out.HighBit = int(src.HighBit)
    out.PixelRepresentation = int(src.get("PixelRepresentation", 0))


def _code(code: Any) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _derivation(
    out: Dataset, src: Dataset, frame: int, when: datetime, maker: tuple[str, str]
) -> None:
    """SourceImageSequence, derivation and the contributing equipment (the source's, then
    AIRCON as frame extracting equipment); ``maker`` is (Manufacturer, "AIRCON <version>")."""
    manufacturer, made_by = maker
    source = Dataset()
    source.ReferencedSOPClassUID = src.SOPClassUID
    source.ReferencedSOPInstanceUID = src.SOPInstanceUID
    source.ReferencedFrameNumber = frame
    source.PurposeOfReferenceCodeSequence = DicomSequence(
        [_code(codes.DCM.SourceImageForImageProcessingOperation)]
    )
    out.SourceImageSequence = DicomSequence([source])
    out.DerivationDescription = (
        f"Single-frame copy of frame {frame} of a multi-frame image, stored pixel values "
        f"unchanged, made by {made_by} for a planning system that needs "
        "single-frame images."
    )[:1024]
    out.DerivationCodeSequence = DicomSequence(
        [_code(codes.DCM.SpatiallyRelatedFramesExtractedFromTheVolume)]
    )
    equipment = Dataset()
    equipment.PurposeOfReferenceCodeSequence = DicomSequence(
        [_code(codes.DCM.FrameExtractingEquipment)]
    )
    equipment.Manufacturer = manufacturer
    equipment.ManufacturerModelName = MANUFACTURER_MODEL_NAME
    equipment.SoftwareVersions = made_by
    equipment.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
    equipment.ContributionDescription = (
        "Single-frame copy of a multi-frame image for a planning system that needs "
        "single-frame images"
    )
    earlier = copy.deepcopy(list(src.get("ContributingEquipmentSequence") or []))
    out.ContributingEquipmentSequence = DicomSequence([*earlier, equipment])
