"""DICOM UIDs: validation of untrusted UIDs and deterministic derivation of our own."""

from __future__ import annotations

import re

from pydicom.uid import RE_VALID_UID, generate_uid


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a str obeying the UID grammar (PS3.5 9.1, pydicom's pattern) in at
    most 64 characters: digits and dots only, so safe to use as a file name.

    Not ``pydicom.uid.UID(value).is_valid``: ``UID()`` strips surrounding whitespace first, so
    ``" 1.2"`` or ``"1.2\\n"`` would pass while the raw value is what reaches a path; and
    ``fullmatch``, because the pattern's ``$`` also matches before a trailing newline.
    """
    return isinstance(value, str) and len(value) <= 64 and bool(re.fullmatch(RE_VALID_UID, value))


def derive_uid(root: str, *parts: str) -> str:
    """A UID under ``root`` (ending with '.') that depends only on ``parts``: the same inputs give
    the same UID in every run and process (pydicom's ``generate_uid`` with the parts as entropy:
    SHA-512 as a decimal suffix, cut to 64 characters). Raises ValueError for an invalid root.
    """
    # generate_uid concatenates its sources: join them with a separator ourselves, so that
    # ("ab", "c") and ("a", "bc") give different UIDs.
    return str(generate_uid(root, entropy_srcs=["\x00".join(parts)]))
