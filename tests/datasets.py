"""The header every made-up test instance starts from (no pytest import: benchmarks use it)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid


def new_instance(sop_class_uid: str) -> Dataset:
    """An MR instance of ``sop_class_uid`` with fresh SOP, Study, Series and Frame of Reference
    UIDs, series and instance number 1, no patient data."""
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "MR"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    return ds
