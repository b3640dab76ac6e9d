"""DICOM UIDs: validation of untrusted UIDs and deterministic derivation of our own."""

from __future__ import annotations

import hashlib
import re

# PS3.5 9.1: components of digits separated by '.', no leading zero unless the component is "0",
# at most 64 characters.
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a str obeying the UID grammar (safe to use as a file name)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID_RE.fullmatch(value))


def derive_uid(root: str, *parts: str) -> str:
    """A UID under ``root`` that depends only on ``parts`` (same inputs -> same UID).

    The suffix is the SHA-256 of the parts as a decimal integer, cut to fit 64 characters.
    """
    if not root.endswith("."):
        raise ValueError("UID root must end with '.'")
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    suffix = str(int.from_bytes(digest, "big"))
    uid = (root + suffix)[:64]
    # A component must not end up with a leading zero after cutting: the suffix starts with a
    # non-zero digit (int() never yields leading zeros), so only the cut matters, never the start.
    assert is_valid_uid(uid), uid
    return uid
