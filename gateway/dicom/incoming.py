"""Incoming C-STORE data sets whose size is the sender's word: kept in memory while small,
spilled to a temporary Part 10 file on the spool's file system once large.

pynetdicom gathers a C-STORE data set in a ``BytesIO`` until its last fragment; a 100 MB
multi-frame object then sits in memory (several times over once decoded and copied). A
:class:`SpillingBuffer` takes its place (:mod:`gateway.dicom.reactor` swaps it in): up to
``threshold`` bytes it is that ``BytesIO``; beyond, it writes the preamble, the File Meta
Information (of the C-STORE command and its accepted presentation context, as pynetdicom's
``Event.encoded_dataset()`` builds it) and every data set byte to ``<directory>/.<random>.part``,
so that the complete file is there when the message ends, and the spool can take it by rename
(same file system). Not pynetdicom's ``STORE_RECV_CHUNKED_DATASET``: a process-wide flag whose
files go to the system's temporary directory, often a RAM file system, never the spool's.

:class:`Incoming` keeps one association's buffers that hold files: whatever is left when the
association ends (a message cut off, a request never served) is deleted then; a crash leaves
``.part`` files that :meth:`gateway.receive.spool.Spool.remove_stale_temporaries` deletes at
start-up.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.uid import UID
from pynetdicom.dsutils import create_file_meta, encode_file_meta

log = logging.getLogger(__name__)

SPILL_BYTES = 4 << 20  # data sets up to this size stay in memory (a classic slice: < 1 MiB)


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and File Meta Information: the bytes pynetdicom's
    ``Event.encoded_dataset()`` puts before a received data set."""
    meta = create_file_meta(
        sop_class_uid=UID(sop_class_uid),
        sop_instance_uid=UID(sop_instance_uid),
        transfer_syntax=UID(transfer_syntax),
    )
    return b"\x00" * 128 + b"DICM" + encode_file_meta(meta)


def _reads_from(f: BinaryIO, offset: int) -> dict[str, Callable[..., Any]]:
    """``read``/``seek``/``tell``/``getvalue``/``getbuffer`` of a BytesIO holding what ``f``
    holds from ``offset`` on."""

    def read(size: int | None = -1) -> bytes:
        f.flush()
        return f.read(-1 if size is None else size)

    def seek(pos: int, whence: int = os.SEEK_SET) -> int:
        f.flush()
        return f.seek(pos + offset if whence == os.SEEK_SET else pos, whence) - offset

    def tell() -> int:
        return f.tell() - offset

    def getvalue() -> bytes:
        f.flush()
        return os.pread(f.fileno(), os.fstat(f.fileno()).st_size - offset, offset)

    def getbuffer() -> memoryview:
        raise io.UnsupportedOperation("the data set is in a file: read it from .path")

    return {"read": read, "seek": seek, "tell": tell, "getvalue": getvalue, "getbuffer": getbuffer}


class SpillingBuffer(io.BytesIO):
    """A ``BytesIO`` for a data set that writes itself to a file once over ``threshold`` bytes.

    Written to by appending only (pynetdicom's DIMSE decoder). Once spilled, :attr:`path` is
    the Part 10 file (``header()`` then the data set), the in-memory buffer is emptied, and
    ``read``/``seek``/``tell``/``getvalue`` work on the file's data set bytes (``getvalue``
    loads them: for callers that do not know about :attr:`path`); until then they are the
    ``BytesIO``'s own, at its speed (set on the instance at the spill, not overridden). A failed
    file write is kept in :attr:`error` and raised by :meth:`finish`; later bytes are dropped,
    never held in memory instead.
    """

    def __init__(
        self,
        directory: Path,
        header: Callable[[], bytes],
        threshold: int = SPILL_BYTES,
        on_spill: Callable[[SpillingBuffer], bool] | None = None,
        on_discard: Callable[[SpillingBuffer], None] | None = None,
    ):
        super().__init__()
        self.directory = directory
        self.threshold = threshold
        self.path: Path | None = None
        self.error: OSError | None = None
        self.size = 0  # data set bytes received
        self._header = header
        self._file: BinaryIO | None = None
        self._lock = threading.Lock()
        self._on_spill = on_spill
        self._on_discard = on_discard

    @property
    def spilled(self) -> bool:
        return self.path is not None or self.error is not None

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        with self._lock:
            if not self.spilled:
                if self.size + n <= self.threshold:
                    self.size += n
                    return super().write(data)
                self._spill()
            self.size += n
            if self._file is not None and self.error is None:
                try:
                    self._file.seek(0, os.SEEK_END)
                    self._file.write(data)
                except OSError as exc:
                    self._fail(exc)
        return n

    def _spill(self) -> None:
        if self._on_spill is not None and not self._on_spill(self):
            self._fail(OSError("the association has ended"))
            return
        path = self.directory / f".{secrets.token_hex(8)}.part"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            self._fail(exc)
            return
        self.path = path
        self._file = os.fdopen(fd, "w+b")
        try:
            header = self._header()
            self._file.write(header)
            self._file.write(super().getbuffer())
        except Exception as exc:  # a header pydicom cannot encode, a full disk: not stored
            self._fail(exc if isinstance(exc, OSError) else OSError(f"file meta: {exc}"))
        else:
            vars(self).update(_reads_from(self._file, len(header)))
        super().seek(0)
        super().truncate(0)  # frees the memory

    def _fail(self, exc: OSError) -> None:
        if self.error is None:
            log.error("incoming data set could not be written to %s: %s", self.directory, exc)
        self.error = exc
        super().seek(0)
        super().truncate(0)

    def finish(self) -> Path | None:
        """The complete file's path (None while in memory), its bytes handed to the OS.
        Raises the OSError that stopped the file being written."""
        with self._lock:
            if self.error is not None:
                raise self.error
            if self._file is not None:
                self._file.flush()
            return self.path

    def discard(self) -> None:
        """Close and delete the file (if still there: the spool may have taken it), free the
        memory; the buffer takes no more bytes. Idempotent."""
        with self._lock:
            if self.error is None:
                self.error = OSError("incoming data set discarded")
            if self._file is not None:
                self._file.close()
                self._file = None
            if self.path is not None:
                self.path.unlink(missing_ok=True)
            if not self.closed:
                super().seek(0)
                super().truncate(0)
        if self._on_discard is not None:
            self._on_discard(self)

    def close(self) -> None:
        self.discard()
        super().close()


class Incoming:
    """One association's incoming data sets that hold files (see the module's docstring)."""

    def __init__(self, directory: Path, threshold: int = SPILL_BYTES):
        self.directory = directory
        self.threshold = threshold
        self._files: set[SpillingBuffer] = set()
        self._lock = threading.Lock()
        self._closed = False

    def buffer(self, header: Callable[[], bytes]) -> SpillingBuffer | None:
        """A buffer for the next data set; None once the association has ended."""
        if self._closed:
            return None
        return SpillingBuffer(
            self.directory, header, self.threshold, on_spill=self._add, on_discard=self._remove
        )

    def _add(self, buf: SpillingBuffer) -> bool:
        with self._lock:
            if not self._closed:  # else nobody would take (or delete) its file
                self._files.add(buf)
            return not self._closed

    def _remove(self, buf: SpillingBuffer) -> None:
        with self._lock:
            self._files.discard(buf)

    @property
    def open_files(self) -> int:
        with self._lock:
            return len(self._files)

    def close(self) -> int:
        """The association has ended: delete every file still held; return how many."""
        with self._lock:
            self._closed = True
            left = list(self._files)
        for buf in left:
            buf.discard()
        if left:
            log.info("deleted %d incoming data set(s) the association left unfinished", len(left))
        return len(left)
