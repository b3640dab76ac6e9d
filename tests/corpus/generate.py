"""A hostile and malformed input corpus for the gateway's receiving side.

    python -m tests.corpus.generate OUT_DIR

writes one folder per case under ``OUT_DIR`` and ``manifest.json``: each case's name,
description, files, how it is sent (``send``, one of :data:`SEND_KINDS`, described in the
manifest) and the outcome the gateway must produce (``expect``, an :class:`Expect`). Files are
DICOM files whose bytes after the File Meta Information are what a C-STORE carries (sent as
they are, never decoded and re-encoded), or raw bytes for a TCP connection (``.bin``).

No patient data: the pixels are synthetic phantoms (``gateway.demo.phantom``), the names are made up
and every UID is derived from the case name under pydicom's UID root. The corpus is generated at
test time (``tests/corpus/test_corpus.py``); only this script is kept in the repository.
"""

from __future__ import annotations

import argparse
import copy
import json
import struct
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import imagecodecs
import numpy as np
import SimpleITK as sitk
from pydicom import config, dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from gateway.demo.phantom import Phantom, make_phantom, write_dicom_series

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as gateway.demo.phantom uses
CALLING_AE = "STORESCU"  # an allowed peer in the test config
UNKNOWN_AE = "INTRUDER"  # not an allowed peer
ESCAPE = "aircon-escape"  # in every path-traversal UID: no file or folder may carry this name
MPEG4_AVC = "1.2.840.10008.1.2.4.102"  # a transfer syntax the gateway does not accept
PHANTOM_SEED = 4242

SendKind = Literal["c-store", "concurrent", "tcp-idle", "association-idle", "tcp-bytes"]

SEND_KINDS: dict[str, str] = {
    "c-store": (
        "one association from calling_ae proposing each file's (MediaStorageSOPClassUID, "
        "TransferSyntaxUID) plus Verification; each file whose context was accepted is sent as "
        "a C-STORE of its bytes after the File Meta Information, as they are, with Affected SOP "
        "Class and Instance UID from the File Meta (the sender's own UID checks are off, so "
        "invalid and over-long UIDs go out unchanged); then a C-ECHO on the same association"
    ),
    "concurrent": (
        "one association per file from calling_ae, all requested at the same moment from "
        "their own threads; each sends a C-ECHO, then its file as a C-STORE"
    ),
    "tcp-idle": "a TCP connection that never sends an A-ASSOCIATE-RQ (nor anything else)",
    "association-idle": "an association (Verification) that, once accepted, never sends anything",
    "tcp-bytes": "a TCP connection that sends the file's bytes as they are, then nothing",
}


@dataclass(frozen=True)
class Expect:
    """The outcome the gateway must produce for a case; fields left at None are not checked.

    ``status`` is the C-STORE status of every file; ``job`` and ``reason`` the state of the
    job of the case's study and text in its reason; ``reason_words``: words that must all be in
    that reason, in any case; ``rtstruct`` whether an RTSTRUCT of that
    study reaches the destination. ``closed``: the gateway closes the connection
    "after-idle-timeout" (not before ``limits.idle_timeout_s``, and soon after it) or
    "by-idle-timeout" (at the latest soon after it). ``absent``: names that no file or folder
    anywhere under the test's folder may carry. A case without ``job`` must leave no job.
    """

    association: Literal["accepted", "rejected"] | None = None
    context: Literal["accepted", "rejected"] | None = None
    status: str | None = None
    echo: bool = False
    job: Literal["done", "failed"] | None = None
    reason: str | None = None
    reason_words: tuple[str, ...] = ()
    rtstruct: bool = False
    closed: Literal["after-idle-timeout", "by-idle-timeout"] | None = None
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    send: SendKind
    expect: Expect
    files: tuple[str, ...] = ()  # relative to the corpus folder, in sending order
    calling_ae: str = CALLING_AE
    study_uid: str | None = None  # the StudyInstanceUID the case's instances carry

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Case:
        e = raw["expect"]
        expect = Expect(
            **{**e, "absent": tuple(e["absent"]), "reason_words": tuple(e["reason_words"])}
        )
        return cls(**{**raw, "expect": expect, "files": tuple(raw["files"])})


def load(out_dir: Path) -> list[Case]:
    """The cases listed in ``out_dir/manifest.json``."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    return [Case.from_json(c) for c in manifest["cases"]]


# ---------------------------------------------------------------------------------------------
# Encoding helpers


def _uid(*parts: str) -> UID:
    return generate_uid(prefix=UID_ROOT, entropy_srcs=list(parts))


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _ds(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


@contextmanager
def _lenient_pydicom() -> Iterator[None]:
    """Let pydicom write and read back the invalid values this corpus is made of, quietly."""
    settings = config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def _encode(ds: Dataset) -> bytes:
    """``ds`` as Explicit VR Little Endian bytes, without File Meta Information."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_file_meta_info(fp, meta, enforce_standard=True)
    return fp.getvalue()


def _element_header(group: int, element: int, vr: str, length: int) -> bytes:
    """An Explicit VR Little Endian header of a VR with a 4-byte length (OB, OW, UN, ...)."""
    return struct.pack("<HH2sHI", group, element, vr.encode(), 0, length)


def _offset(body: bytes, group: int, element: int) -> int:
    """Where the element ``(group, element)`` starts in Explicit VR Little Endian ``body``."""
    return body.index(struct.pack("<HH", group, element))


def _without(ds: Dataset, *keywords: str) -> Dataset:
    out = copy.deepcopy(ds)
    for kw in keywords:
        delattr(out, kw)
    return out


def _normal(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column direction and slice normal of an image."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    return row, col, np.cross(row, col)


# ---------------------------------------------------------------------------------------------
# The corpus


class _Corpus:
    def __init__(self, out_dir: Path) -> None:
        self.out = out_dir
        self.cases: list[Case] = []
        self.phantom = make_phantom(PHANTOM_SEED)
        with tempfile.TemporaryDirectory() as tmp:
            info = write_dicom_series(self.phantom, Path(tmp), seed=PHANTOM_SEED)
            self.slices = [dcmread(f) for f in info.files]

    def add(self, case: Case) -> None:
        if any(c.name == case.name for c in self.cases):
            raise ValueError(f"duplicate case name {case.name}")
        self.cases.append(case)

    def folder(self, name: str) -> Path:
        path = self.out / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def rel(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()

    def instance(self, name: str) -> Dataset:
        """A good phantom slice with its own study, series, instance and frame UIDs."""
        ds = copy.deepcopy(self.slices[len(self.slices) // 2])
        ds.StudyInstanceUID = _uid(name, "study")
        ds.SeriesInstanceUID = _uid(name, "series")
        ds.SOPInstanceUID = _uid(name, "instance")
        ds.FrameOfReferenceUID = _uid(name, "frame")
        return ds

    def single(
        self,
        name: str,
        description: str,
        ds: Dataset,
        expect: Expect,
        *,
        body: bytes | None = None,
        sop_class: str = MRImageStorage,
        transfer_syntax: str = ExplicitVRLittleEndian,
        calling_ae: str = CALLING_AE,
    ) -> None:
        """One instance over one association: File Meta with ``sop_class``, the SOP Instance UID
        of ``ds`` (a valid one where it has none) and ``transfer_syntax``, then ``body``
        (default: ``ds`` encoded)."""
        request_uid = str(ds.get("SOPInstanceUID") or _uid(name, "request"))
        path = self.folder(name) / "instance.dcm"
        path.write_bytes(
            bytes(128)
            + b"DICM"
            + _file_meta(sop_class, request_uid, transfer_syntax)
            + (_encode(ds) if body is None else body)
        )
        study = ds.get("StudyInstanceUID")
        self.add(
            Case(
                name,
                description,
                "c-store",
                expect,
                (self.rel(path),),
                calling_ae=calling_ae,
                study_uid=str(study) if study else None,
            )
        )

    def write_series(
        self,
        name: str,
        change: Callable[[int, Dataset], None] | None = None,
        *,
        keep: Callable[[int], bool] = lambda k: True,
        phantom: Phantom | sitk.Image | None = None,
    ) -> tuple[str, list[str]]:
        """Write a phantom T2 series (24 slices unless ``phantom`` says otherwise) with its own
        UIDs, each slice passed through ``change(k, ds)``, leaving out slices where ``keep(k)``
        is false; return its Study Instance UID and files."""
        info = write_dicom_series(
            self.phantom if phantom is None else phantom, self.folder(name), seed=_seed(name)
        )
        files = []
        for k, path in enumerate(info.files):
            if not keep(k):
                path.unlink()
                continue
            if change is not None:
                ds = dcmread(path)
                change(k, ds)
                ds.save_as(path)
            files.append(self.rel(path))
        return info.study_uid, files

    def series(
        self,
        name: str,
        description: str,
        expect: Expect,
        change: Callable[[int, Dataset], None] | None = None,
        *,
        keep: Callable[[int], bool] = lambda k: True,
        send: SendKind = "c-store",
        phantom: Phantom | sitk.Image | None = None,
    ) -> None:
        """A series case: :meth:`write_series`, sent as ``send``."""
        study_uid, files = self.write_series(name, change, keep=keep, phantom=phantom)
        self.add(Case(name, description, send, expect, tuple(files), study_uid=study_uid))

    def raw(self, name: str, description: str, send: SendKind, expect: Expect, data: bytes) -> None:
        files: tuple[str, ...] = ()
        if data:
            path = self.folder(name) / "stream.bin"
            path.write_bytes(data)
            files = (self.rel(path),)
        self.add(Case(name, description, send, expect, files))


CANNOT_UNDERSTAND = Expect(association="accepted", context="accepted", status="0xC210", echo=True)
MISMATCH = Expect(association="accepted", context="accepted", status="0xA900", echo=True)
UID_CONFLICT = Expect(association="accepted", context="accepted", status="0xC211", echo=True)
CONTOURED = Expect(status="0x0000", job="done", rtstruct=True)


def _failed(reason: str) -> Expect:
    return Expect(status="0x0000", job="failed", reason=reason)


def _decoding_cases(c: _Corpus) -> None:
    ds = c.instance("truncated_in_header")
    body = _encode(ds)
    c.single(
        "truncated_in_header",
        "the dataset ends half-way through the PatientName value (declared length longer than "
        "what follows), before the Study and Series UIDs",
        ds,
        CANNOT_UNDERSTAND,
        body=body[: _offset(body, 0x0010, 0x0010) + 10],
    )
    ds = c.instance("truncated_in_element_header")
    body = _encode(ds)
    c.single(
        "truncated_in_element_header",
        "the dataset ends three bytes into the StudyInstanceUID element's header",
        ds,
        CANNOT_UNDERSTAND,
        body=body[: _offset(body, 0x0020, 0x000D) + 3],
    )
    ds = c.instance("truncated_in_pixel_data")
    body = _encode(ds)
    c.single(
        "truncated_in_pixel_data",
        "the dataset ends half-way through the PixelData value: the element declares 18432 "
        "bytes and 9216 follow",
        ds,
        CANNOT_UNDERSTAND,
        body=body[: len(body) - len(ds.PixelData) // 2],
    )
    rng = np.random.default_rng(_seed("garbage"))
    c.single(
        "garbage_dataset",
        "4 KiB of random bytes as the dataset of an MR C-STORE",
        c.instance("garbage_dataset"),
        CANNOT_UNDERSTAND,
        body=rng.bytes(4096),
    )
    ds = c.instance("whole_file_as_dataset")
    c.single(
        "whole_file_as_dataset",
        "a broken sender puts the whole file (128-byte preamble, 'DICM', File Meta, dataset) "
        "into the C-STORE instead of the dataset alone",
        ds,
        CANNOT_UNDERSTAND,
        body=bytes(128)
        + b"DICM"
        + _file_meta(MRImageStorage, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        + _encode(ds),
    )
    ds = c.instance("element_declared_2gb")
    body = _encode(ds)
    at = _offset(body, 0x0010, 0x0010)
    c.single(
        "element_declared_2gb",
        "a private UN element (0009,1001) declaring 0x7FFFFFF0 bytes (2 GB) followed by 16 "
        "bytes, between the SOP module and the patient module: the rest cannot be parsed",
        ds,
        CANNOT_UNDERSTAND,
        body=body[:at] + _element_header(0x0009, 0x1001, "UN", 0x7FFFFFF0) + bytes(16) + body[at:],
    )
    ds = c.instance("pixel_data_declared_2gb")
    body = _encode(ds)
    c.single(
        "pixel_data_declared_2gb",
        "PixelData (OW) declaring 0x7FFFFFF0 bytes (2 GB) followed by 64 bytes",
        ds,
        CANNOT_UNDERSTAND,
        body=body[: _offset(body, 0x7FE0, 0x0010)]
        + _element_header(0x7FE0, 0x0010, "OW", 0x7FFFFFF0)
        + bytes(64),
    )


def _uid_cases(c: _Corpus) -> None:
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        name = f"missing_{keyword}"
        c.single(
            name,
            f"no {keyword} in the dataset (the File Meta carries an MR SOP class and a valid "
            "SOP Instance UID)",
            _without(c.instance(name), keyword),
            CANNOT_UNDERSTAND,
        )
    ds = c.instance("empty_StudyInstanceUID")
    ds.StudyInstanceUID = ""
    c.single(
        "empty_StudyInstanceUID",
        "StudyInstanceUID present with an empty value",
        ds,
        CANNOT_UNDERSTAND,
    )
    bad: list[tuple[str, str, str, str]] = [
        ("uid_with_letters", "StudyInstanceUID", UID_ROOT + "abc.1", "letters"),
        ("uid_leading_zero", "SeriesInstanceUID", "1.02.3.4", "a component with a leading zero"),
        ("uid_trailing_dot", "SOPInstanceUID", UID_ROOT + "7.", "a trailing dot"),
        ("uid_empty_component", "StudyInstanceUID", UID_ROOT + "1..2", "an empty component"),
        ("uid_65_chars", "StudyInstanceUID", UID_ROOT + "1" * (65 - len(UID_ROOT)), "65 chars"),
        (
            "study_uid_slash_traversal",
            "StudyInstanceUID",
            f"1.2.3/../../../{ESCAPE}-study",
            "'/' and '..' climbing out of the spool",
        ),
        (
            "series_uid_backslash_traversal",
            "SeriesInstanceUID",
            f"1.2.3\\..\\..\\{ESCAPE}-series",
            "'\\' and '..'",
        ),
        ("series_uid_dotdot", "SeriesInstanceUID", "..", "'..' alone: the study folder's parent"),
        (
            "sop_uid_dotdot_traversal",
            "SOPInstanceUID",
            f"../../../{ESCAPE}-sop",
            "'../../../'",
        ),
        (
            "study_uid_absolute_path",
            "StudyInstanceUID",
            str(c.out.resolve() / f"{ESCAPE}-absolute"),
            "an absolute path into the corpus folder",
        ),
    ]
    for name, keyword, value, what in bad:
        ds = c.instance(name)
        setattr(ds, keyword, value)
        c.single(
            name,
            f"{keyword} with {what}: {value!r}"
            + (" (in the request too)" if keyword == "SOPInstanceUID" else ""),
            ds,
            replace(CANNOT_UNDERSTAND, absent=_markers(value)),
        )


def _request_uid_cases(c: _Corpus) -> None:
    # 65 characters in the C-STORE request's Affected SOP Instance UID as well: pynetdicom cannot
    # decode such a request, so the gateway aborts the association (A-ABORT) instead of
    # answering; nothing is stored and the sender sees no response.
    value = UID_ROOT + "2" * (65 - len(UID_ROOT))
    ds = c.instance("sop_uid_65_chars")
    ds.SOPInstanceUID = value
    c.single(
        "sop_uid_65_chars",
        f"SOPInstanceUID with 65 chars, in the request too: {value!r}",
        ds,
        Expect(association="accepted", context="accepted", status="no response"),
    )


def _markers(value: str) -> tuple[str, ...]:
    return tuple(part for part in value.replace("\\", "/").split("/") if ESCAPE in part)


def _pixel_cases(c: _Corpus) -> None:
    ds = c.instance("wrong_sop_class")
    ds.SOPClassUID = CTImageStorage
    c.single(
        "wrong_sop_class",
        "File Meta and the request say MR Image Storage, the dataset's SOPClassUID says CT",
        ds,
        MISMATCH,
    )
    c.single(
        "missing_pixel_data",
        "an MR image without PixelData",
        _without(c.instance("missing_pixel_data"), "PixelData"),
        MISMATCH,
    )
    ds = c.instance("pixel_data_too_short")
    ds.PixelData = ds.PixelData[: -2 * ds.Columns]
    c.single(
        "pixel_data_too_short",
        "96 x 96 x 16 bits declared, 95 rows of pixel data",
        ds,
        MISMATCH,
    )
    ds = c.instance("pixel_data_too_long")
    ds.PixelData = ds.PixelData * 2
    c.single(
        "pixel_data_too_long",
        "96 x 96 x 16 bits declared, twice that much pixel data",
        ds,
        MISMATCH,
    )
    ds = c.instance("huge_dimensions")
    ds.Rows = ds.Columns = 65535
    ds.PixelData = bytes(8)
    c.single(
        "huge_dimensions",
        "Rows = Columns = 65535 (8 GiB at 16 bits) declared over 8 bytes of pixel data",
        ds,
        MISMATCH,
    )
    for keyword in ("Rows", "BitsAllocated"):
        name = f"missing_{keyword}"
        c.single(
            name,
            f"an MR image with pixel data but no {keyword}",
            _without(c.instance(name), keyword),
            MISMATCH,
        )


def _transport_cases(c: _Corpus) -> None:
    c.single(
        "unknown_calling_ae",
        f"a good instance from calling AE {UNKNOWN_AE!r}, which is not an allowed peer",
        c.instance("unknown_calling_ae"),
        Expect(association="rejected"),
        calling_ae=UNKNOWN_AE,
    )
    c.single(
        "unsupported_transfer_syntax",
        "an MR instance proposed only in MPEG-4 AVC/H.264 (1.2.840.10008.1.2.4.102): the "
        "context is rejected, so no C-STORE can be sent; the association still answers C-ECHO",
        c.instance("unsupported_transfer_syntax"),
        Expect(association="accepted", context="rejected", echo=True),
        transfer_syntax=MPEG4_AVC,
    )
    ds = c.instance("unsupported_sop_class")
    ds.SOPClassUID = SecondaryCaptureImageStorage
    c.single(
        "unsupported_sop_class",
        "a Secondary Capture instance: the gateway offers no such context; C-ECHO still works",
        ds,
        Expect(association="accepted", context="rejected", echo=True),
        sop_class=SecondaryCaptureImageStorage,
    )
    c.raw(
        "idle_tcp_connection",
        "a TCP connection that never sends an A-ASSOCIATE-RQ",
        "tcp-idle",
        Expect(closed="after-idle-timeout"),
        b"",
    )
    c.raw(
        "idle_association",
        "an accepted association that never sends a request or a release",
        "association-idle",
        Expect(association="accepted", closed="after-idle-timeout"),
        b"",
    )
    rng = np.random.default_rng(_seed("pdu"))
    c.raw(
        "garbage_pdu_unknown_type",
        "1 KiB of random bytes starting with PDU type 0x99",
        "tcp-bytes",
        Expect(closed="by-idle-timeout"),
        b"\x99\x00" + struct.pack(">L", 1018) + rng.bytes(1018),
    )
    c.raw(
        "garbage_associate_rq",
        "an A-ASSOCIATE-RQ PDU (type 0x01) with a consistent length and 1 KiB of random content",
        "tcp-bytes",
        Expect(closed="by-idle-timeout"),
        b"\x01\x00" + struct.pack(">L", 1024) + rng.bytes(1024),
    )
    c.raw(
        "pdu_declares_4gb",
        "an A-ASSOCIATE-RQ header declaring 0xFFFFFFF0 bytes (4 GB), then 68 bytes and silence",
        "tcp-bytes",
        Expect(closed="by-idle-timeout"),
        b"\x01\x00" + struct.pack(">L", 0xFFFFFFF0) + struct.pack(">HH", 1, 0) + bytes(64),
    )
    c.series(
        "fifty_concurrent_associations",
        "a 50-slice phantom series, each slice over its own association, all 50 at once; each "
        "association sends a C-ECHO, then its C-STORE",
        Expect(association="accepted", status="0x0000", echo=True, job="done", rtstruct=True),
        send="concurrent",
        phantom=make_phantom(PHANTOM_SEED + 1, shape=(50, 96, 96)),
    )


def _jpeg_ls(k: int, ds: Dataset) -> None:
    original = ds.pixel_array.copy()
    ds.compress(JPEGLSLossless)
    _check_decodes(ds, original)


def _jpeg_2000(k: int, ds: Dataset) -> None:
    original = ds.pixel_array.copy()
    frame = imagecodecs.jpeg2k_encode(
        original,
        level=0,
        codecformat=imagecodecs.JPEG2K.CODEC.J2K,
        reversible=True,
        bitspersample=int(ds.BitsStored),
    )
    if not np.array_equal(imagecodecs.jpeg2k_decode(frame), original):
        raise RuntimeError("imagecodecs JPEG 2000 round trip is not lossless")
    ds.PixelData = encapsulate([bytes(frame)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    _check_decodes(ds, original)


def _check_decodes(ds: Dataset, original: np.ndarray) -> None:
    """The compressed dataset, written and read back, decodes (pydicom) to ``original``."""
    fp = DicomBytesIO()
    ds.save_as(fp)
    fp.seek(0)
    if not np.array_equal(dcmread(fp).pixel_array, original):
        raise RuntimeError(f"{ds.file_meta.TransferSyntaxUID.name} does not decode losslessly")


def _name(value: str | bytes, charset: str = "ISO_IR 192") -> Callable[[int, Dataset], None]:
    def change(k: int, ds: Dataset) -> None:
        ds.SpecificCharacterSet = charset
        ds.PatientName = value

    return change


def _accepted_series_cases(c: _Corpus) -> None:
    c.series(
        "jpeg_ls_lossless_series",
        "the phantom T2 series in JPEG-LS Lossless (pydicom + pyjpegls), checked to decode",
        CONTOURED,
        _jpeg_ls,
    )
    c.series(
        "jpeg2000_lossless_series",
        "the phantom T2 series in JPEG 2000 Lossless (imagecodecs, encapsulated by pydicom), "
        "checked to decode with imagecodecs and pydicom",
        CONTOURED,
        _jpeg_2000,
    )
    c.series(
        "patient_name_chinese",
        "PatientName '王^小明' (made up) in ISO_IR 192 (UTF-8)",
        CONTOURED,
        _name("王^小明"),
    )
    c.series(
        "patient_name_greek",
        "PatientName 'Παπαδοπούλου^Ελένη' (made up) in ISO_IR 192 (UTF-8)",
        CONTOURED,
        _name("Παπαδοπούλου^Ελένη"),
    )
    c.series(
        "patient_name_10000_chars",
        "a 10 000-character PatientName (PN allows 64 per component group)",
        CONTOURED,
        _name("LONG^" + "X" * 9995, "ISO_IR 100"),
    )
    c.series(
        "patient_name_invalid_utf8",
        "ISO_IR 192 declared, PatientName bytes that are not UTF-8 (0xC3 0x28, 0xFF)",
        CONTOURED,
        _name(b"INVALID^UTF8\xc3\x28\xff"),
    )
    preamble = b"MZ" + np.random.default_rng(_seed("preamble")).bytes(126)

    def polyglot(k: int, ds: Dataset) -> None:
        ds.preamble = preamble

    c.series(
        "garbage_preamble",
        "every file's 128-byte preamble is an 'MZ' executable header and random bytes (a "
        "DICOM/PE polyglot); the preamble never travels in a C-STORE",
        CONTOURED,
        polyglot,
    )


def _uid_reuse_cases(c: _Corpus) -> None:
    """UIDs of one study reused by another: the second is refused, the first contoured from its
    own files (recording the second under the first's rows would mix two patients)."""
    name = "uid_reuse_original"
    study_uid, files = c.write_series(name)
    c.add(
        Case(
            name,
            "a good T2 series whose SOP Instance and Series Instance UIDs the next two cases "
            "reuse in other studies",
            "c-store",
            CONTOURED,
            tuple(files),
            study_uid=study_uid,
        )
    )
    original = dcmread(c.out / files[12], stop_before_pixels=True)
    ds = c.instance("sop_uid_reused_by_another_study")
    ds.SOPInstanceUID = original.SOPInstanceUID
    ds.PixelData = np.ascontiguousarray(np.flipud(ds.pixel_array)).tobytes()
    c.single(
        "sop_uid_reused_by_another_study",
        "a slice of another study and series (its pixels flipped top to bottom) under the SOP "
        "Instance UID of a slice of uid_reuse_original",
        ds,
        UID_CONFLICT,
    )
    name = "series_uid_reused_by_another_study"
    study_uid, files = c.write_series(
        name,
        lambda k, ds: setattr(ds, "SeriesInstanceUID", original.SeriesInstanceUID),
        keep=lambda k: k in (11, 12, 13),
    )
    c.add(
        Case(
            name,
            "3 slices of another study, with their own SOP Instance UIDs, under the Series "
            "Instance UID of uid_reuse_original",
            "c-store",
            UID_CONFLICT,
            tuple(files),
            study_uid=study_uid,
        )
    )


def _geometry_cases(c: _Corpus) -> None:
    other_frame = _uid("mixed_frames_of_reference", "second frame")

    def mixed_frames(k: int, ds: Dataset) -> None:
        if k >= 12:
            ds.FrameOfReferenceUID = other_frame

    c.series(
        "mixed_frames_of_reference",
        "slices 13-24 of the series carry another FrameOfReferenceUID",
        _failed("frames of reference in one series"),
        mixed_frames,
    )
    c.series(
        "missing_slice_gap",
        "slice 12 of 24 is missing: a 6 mm step where the spacing is 3 mm",
        _failed("gap in slice positions"),
        keep=lambda k: k != 11,
    )

    def progressive(k: int, ds: Dataset) -> None:
        normal = _normal(ds)[2]
        origin = np.array([float(v) for v in ds.ImagePositionPatient]) - 3.0 * k * normal
        ds.ImagePositionPatient = [_ds(v) for v in origin + (3.0 * k + 0.02 * k * k) * normal]

    c.series(
        "non_uniform_spacing",
        "slice positions at 3k + 0.02k^2 mm along the normal: steps from 3.02 to 3.9 mm",
        _failed("non-uniform slice spacing"),
        progressive,
    )

    def sheared(k: int, ds: Dataset) -> None:
        col = _normal(ds)[1]
        position = np.array([float(v) for v in ds.ImagePositionPatient]) + 0.5 * k * col
        ds.ImagePositionPatient = [_ds(v) for v in position]

    c.series(
        "sheared_gantry_tilt",
        "each slice shifted 0.5 mm per slice along the column direction, as a tilted gantry "
        "gives: positions are not along the slice normal",
        _failed("not along the slice normal (sheared or tilted)"),
        sheared,
    )

    def turned(k: int, ds: Dataset) -> None:
        if k >= 12:
            row, col, _ = _normal(ds)
            a = np.deg2rad(10.0)
            new_row, new_col = np.cos(a) * row + np.sin(a) * col, np.cos(a) * col - np.sin(a) * row
            ds.ImageOrientationPatient = [_ds(v) for v in (*new_row, *new_col)]

    c.series(
        "orientation_changes_midway",
        "slices 13-24 are rotated 10 degrees in plane (another ImageOrientationPatient)",
        _failed("ImageOrientationPatient differs between slices"),
        turned,
    )
    c.series(
        "single_slice",
        "one slice of the T2 series, nothing else",
        _failed("outside the model's intended use"),
        keep=lambda k: k == 12,
    )
    tiny = sitk.GetImageFromArray(np.full((24, 1, 1), 700, dtype=np.float32))
    tiny.SetSpacing((1.25, 1.25, 3.0))
    c.series(
        "one_by_one_pixel_images",
        "a 24-slice series of 1 x 1 pixel images",
        _failed("outside the model's intended use"),
        phantom=tiny,
    )
    _duplicate_position(c)
    _enhanced_mr(c)


def _duplicate_position(c: _Corpus) -> None:
    name = "duplicate_slice_position"
    study_uid, files = c.write_series(name)
    twin = dcmread(c.out / files[11])
    twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = _uid(name, "twin")
    twin.InstanceNumber = 25
    path = c.folder(name) / "MR_0025.dcm"
    twin.save_as(path)
    c.add(
        Case(
            name,
            "25 slices: the 25th repeats slice 12 (position, pixels) under another SOP Instance "
            "UID",
            "c-store",
            _failed("duplicate slice position"),
            (*files, c.rel(path)),
            study_uid=study_uid,
        )
    )


def _enhanced_mr(c: _Corpus) -> None:
    """The T2 phantom as one Enhanced MR instance: 24 frames with per-frame positions."""
    name = "enhanced_mr_multiframe"
    first = c.slices[0]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = _uid(name, "instance")
    for kw in ("StudyDate", "StudyTime", "ContentDate", "ContentTime"):
        setattr(ds, kw, first[kw].value)
    ds.AcquisitionDateTime = first.AcquisitionDate + first.AcquisitionTime
    ds.Modality = "MR"
    ds.Manufacturer = "AIRCON phantom"
    ds.SeriesDescription = "T2 TSE tra enhanced (phantom)"
    ds.PatientName = "PHANTOM^ENHANCED"
    ds.PatientID = "PHANTOM-0002"
    ds.StudyInstanceUID = _uid(name, "study")
    ds.SeriesInstanceUID = _uid(name, "series")
    ds.SeriesNumber = 9
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = _uid(name, "frame")
    ds.NumberOfFrames = len(c.slices)
    for kw in (
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
    ):
        setattr(ds, kw, first[kw].value)
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k, s in enumerate(c.slices):
        position = Dataset()
        position.ImagePositionPatient = s.ImagePositionPatient
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        group = Dataset()
        group.PlanePositionSequence = Sequence([position])
        group.FrameContentSequence = Sequence([content])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = b"".join(s.PixelData for s in c.slices)
    c.single(
        name,
        "the T2 phantom as one Enhanced MR Image Storage instance with 24 frames (no per-frame "
        "type): read from its frames, contoured and sent",
        ds,
        Expect(status="0x0000", job="done", rtstruct=True),
        sop_class=EnhancedMRImageStorage,
    )


def generate(out_dir: Path) -> list[Case]:
    """Write the corpus and its ``manifest.json`` into ``out_dir``; return the cases."""
    from tests.corpus.multiframe_cases import multiframe_cases  # it builds on this module

    out_dir.mkdir(parents=True, exist_ok=True)
    with _lenient_pydicom():
        corpus = _Corpus(out_dir)
        for group in (
            _decoding_cases,
            _uid_cases,
            _request_uid_cases,
            _pixel_cases,
            _transport_cases,
            _accepted_series_cases,
            _uid_reuse_cases,
            _geometry_cases,
            multiframe_cases,
        ):
            group(corpus)
    manifest = {
        "about": __doc__,
        "send_kinds": SEND_KINDS,
        "cases": [asdict(case) for case in corpus.cases],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    return corpus.cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    cases = generate(args.out_dir)
    print(f"{len(cases)} cases in {args.out_dir / 'manifest.json'}")


if __name__ == "__main__":
    main()
