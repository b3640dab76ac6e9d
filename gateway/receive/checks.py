"""What a received dataset must be before it is stored: complete as encoded, and the SOP class
it was sent as, with pixel data that matches its description. Pure functions on pydicom
datasets; used by reception and by the commissioning validation's reader.

A dataset read from a file with ``defer_size`` (a large instance received into a file) keeps
its large values on disk: they are checked by their declared length and position against the
file's size, never loaded."""

from __future__ import annotations

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from gateway.errors import DatasetMismatch, InvalidInput

# Image storage SOP classes whose instances must carry pixel data we can check. Others (MR
# Spectroscopy: spectra, no Pixel Data; RT Structure Set) are stored without a pixel check.
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
}
_NATIVE_TS = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
}


_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010


def _deferred(ds: Dataset, tag: int) -> RawDataElement | None:
    """The element at ``tag`` if its value was left in the file (read with ``defer_size``)."""
    raw = ds.get_item(tag, keep_deferred=True)
    return raw if isinstance(raw, RawDataElement) and raw.value is None else None


def check_encoding(ds: Dataset, file_size: int | None = None) -> None:
    """Raise InvalidInput when a top-level element holds fewer bytes than its declared length
    (a truncated dataset, or a length such as 2 GB that was never sent): pydicom reads such a
    value short without complaint. A value left in its file (read with ``defer_size``) is
    checked against ``file_size``, the size of that file; without it, not at all."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or raw.length == _UNDEFINED_LENGTH:
            continue
        if raw.value is None:  # deferred (read with defer_size): in the file, not loaded
            if file_size is None:
                continue
            present = max(0, min(raw.length, file_size - raw.value_tell))
        else:
            present = len(raw.value)
        if present != raw.length:
            raise InvalidInput(
                f"element ({tag.group:04X},{tag.element:04X}) declares {raw.length} bytes but "
                f"{present} are present: truncated or corrupt dataset"
            )


def check_dataset(ds: Dataset, sop_class_uid: str, transfer_syntax: str) -> None:
    """Check that a received dataset matches the SOP class it was sent as.

    Raises DatasetMismatch: another SOPClassUID than the request's, an image without pixel data
    or without the attributes that describe it, or native pixel data whose length differs from
    Rows x Columns x frames x samples x bits (e.g. 65535 x 65535 declared over a few bytes).
    Pixel data is never decoded here, nor loaded when it was left in its file.
    """
    declared = str(ds.get("SOPClassUID", ""))
    if declared != sop_class_uid:
        raise DatasetMismatch(
            f"dataset SOPClassUID {declared[:64]!r} differs from the request's {sop_class_uid}"
        )
    if sop_class_uid not in IMAGE_SOP_CLASSES:
        return
    if "PixelData" not in ds:
        raise DatasetMismatch(f"{IMAGE_SOP_CLASSES[sop_class_uid]} instance without PixelData")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DatasetMismatch(f"image attributes missing or invalid: {exc}") from None
    if rows < 1 or cols < 1 or frames < 1 or samples < 1 or bits not in (1, 8, 16, 32, 64):
        raise DatasetMismatch(
            f"invalid image size: Rows {rows}, Columns {cols}, frames {frames}, "
            f"samples {samples}, BitsAllocated {bits}"
        )
    if transfer_syntax not in _NATIVE_TS:
        return  # encapsulated: the codec checks the frames when the series is read
    expected_bits = rows * cols * frames * samples * bits
    expected = (expected_bits + 7) // 8
    deferred = _deferred(ds, _PIXEL_DATA)
    actual = deferred.length if deferred is not None else len(ds["PixelData"].value or b"")
    if actual not in (expected, expected + expected % 2):
        raise DatasetMismatch(
            f"pixel data is {actual} bytes, but Rows {rows} x Columns {cols} x {frames} frame(s) "
            f"x {samples} sample(s) x {bits} bits = {expected} bytes"
        )
