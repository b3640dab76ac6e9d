"""Large multi-frame MR instances for the tests and benchmarks of memory-bounded reception.

An Enhanced MR Image as scanners send it: the functional groups (shared and per frame) before
the pixel data, one frame per slice, random 16-bit pixels (so nothing compresses them away).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.datasets import new_instance


def _item(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def enhanced_mr(megabytes: float, size: int = 512, seed: int = 0) -> Dataset:
    """An Enhanced MR Image of about ``megabytes`` MB of native pixel data (``size`` x ``size``
    uint16 frames, 3 mm apart), fresh UIDs, file meta, no patient data."""
    frames = max(1, math.ceil(megabytes * 1e6 / (size * size * 2)))
    ds = new_instance(EnhancedMRImageStorage)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            _item(
                PixelMeasuresSequence=Sequence(
                    [_item(PixelSpacing=[0.5, 0.5], SliceThickness=3.0)]
                ),
                PlaneOrientationSequence=Sequence(
                    [_item(ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0])]
                ),
            )
        ]
    )
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [
            _item(
                PlanePositionSequence=Sequence(
                    [_item(ImagePositionPatient=[-128.0, -128.0, 3.0 * k])]
                ),
                FrameContentSequence=Sequence([_item(InStackPositionNumber=k + 1)]),
            )
            for k in range(frames)
        ]
    )
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, (frames, size, size), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def save_copies(ds: Dataset, folder: Path, n: int) -> list[Path]:
    """``n`` files of ``ds``, each its own study (fresh Study, Series and SOP Instance UIDs)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"large-{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
