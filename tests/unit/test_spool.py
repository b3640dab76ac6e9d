"""The spool: paths only from valid UIDs; writes are atomic and leave nothing partial."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.errors import InvalidInput
from gateway.receive.spool import Spool
from gateway.uids import derive_uid, is_valid_uid

STUDY, SERIES, SOP = "1.2.826.0.1.1", "1.2.826.0.1.1.2", "1.2.826.0.1.1.2.3"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "..",
        "../1.2",
        "1.2/3",
        "/1.2",
        "1.2\\3",
        "1.02.3",
        "01.2",
        "1..2",
        "1.2.",
        ".1.2",
        "1.2.3a",
        " 1.2",
        "1.2 ",
        "1.2\n",  # pydicom's pattern ends in '$', which also matches before a final newline
        "1.2\x00",
        "1" * 65,
        "1." * 32 + "1",
    ],
)
def test_invalid_uids_never_become_paths(tmp_path: Path, bad: str) -> None:
    spool = Spool(tmp_path)
    for args in ((bad, SERIES, SOP), (STUDY, bad, SOP), (STUDY, SERIES, bad)):
        with pytest.raises(InvalidInput, match="not a valid UID"):
            spool.path_for(*args)
        with pytest.raises(InvalidInput):
            spool.write(*args, b"x")
    assert list(tmp_path.iterdir()) == []
    assert spool.series_files(bad, SERIES) == []


def test_uid_grammar_edges() -> None:
    assert is_valid_uid("0")
    assert is_valid_uid("1.0.2")
    assert is_valid_uid("1" * 64)
    assert not is_valid_uid("1" * 65)
    assert not is_valid_uid(None)
    assert not is_valid_uid(1.2)


def test_path_is_study_series_sop(tmp_path: Path) -> None:
    assert Spool(tmp_path).path_for(STUDY, SERIES, SOP) == tmp_path / STUDY / SERIES / f"{SOP}.dcm"


def test_write_stores_the_exact_bytes_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    data = os.urandom(300_000)
    path = spool.write(STUDY, SERIES, SOP, data)
    assert path == tmp_path / "spool" / STUDY / SERIES / f"{SOP}.dcm"
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == [f"{SOP}.dcm"]
    # A resend replaces the file in place.
    spool.write(STUDY, SERIES, SOP, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == [f"{SOP}.dcm"]
    assert spool.series_files(STUDY, SERIES) == [path]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_write_into_read_only_directory_raises_oserror_and_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    series_dir = tmp_path / STUDY / SERIES
    series_dir.mkdir(parents=True)
    series_dir.chmod(0o500)
    try:
        with pytest.raises(OSError):
            spool.write(STUDY, SERIES, SOP, b"data")
        assert list(series_dir.iterdir()) == []
    finally:
        series_dir.chmod(0o700)


def test_write_where_the_series_folder_is_a_file_raises_oserror(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / STUDY).mkdir()
    (tmp_path / STUDY / SERIES).write_bytes(b"not a folder")
    with pytest.raises(OSError):
        spool.write(STUDY, SERIES, SOP, b"data")
    assert [p.name for p in (tmp_path / STUDY).iterdir()] == [SERIES]


def test_write_that_cannot_replace_the_target_leaves_no_temporary(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    target = spool.path_for(STUDY, SERIES, SOP)
    target.mkdir(parents=True)  # os.replace() of a file onto a folder fails
    with pytest.raises(OSError):
        spool.write(STUDY, SERIES, SOP, b"data")
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_failed_write_raises_oserror_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills up mid-write: the error reaches the caller, no file remains."""
    spool = Spool(tmp_path)
    real_write = os.write
    calls = {"n": 0}

    def short_then_full(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:1000]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError, match="No space left"):
        spool.write(STUDY, SERIES, SOP, b"x" * 5000)
    monkeypatch.undo()
    assert calls["n"] == 2
    assert list((tmp_path / STUDY / SERIES).iterdir()) == []


def test_failed_write_keeps_the_previous_complete_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    path = spool.write(STUDY, SERIES, SOP, b"complete")

    def full(fd: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError):
        spool.write(STUDY, SERIES, SOP, b"replacement")
    monkeypatch.undo()
    assert path.read_bytes() == b"complete"
    assert [p.name for p in path.parent.iterdir()] == [f"{SOP}.dcm"]


def test_series_files_ignores_temporaries(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    a = spool.write(STUDY, SERIES, "1.2.3.2", b"a")
    b = spool.write(STUDY, SERIES, "1.2.3.1", b"b")
    (a.parent / ".1.2.3.3.dcm.123.tmp").write_bytes(b"partial")
    assert spool.series_files(STUDY, SERIES) == [b, a]


def test_derived_uids_are_valid_deterministic_and_distinct() -> None:
    root = "1.2.826.0.1.3680043.8.498."
    a = derive_uid(root, STUDY, "rtstruct")
    assert a == derive_uid(root, STUDY, "rtstruct")
    assert a != derive_uid(root, STUDY, "series")
    assert derive_uid(root, "1.2", "3") != derive_uid(root, "1.", "23")  # parts stay apart
    assert a.startswith(root) and len(a) == 64 and is_valid_uid(a)
    with pytest.raises(ValueError):
        derive_uid("1.2.3", "x")


def test_derived_uids_are_the_same_in_another_process() -> None:
    """A restarted gateway (the crash harness) must derive the same RTSTRUCT UIDs."""
    import subprocess
    import sys

    root = "1.2.826.0.1.3680043.8.498."
    code = f"from gateway.uids import derive_uid; print(derive_uid({root!r}, {STUDY!r}, 'x'))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert other.stdout.strip() == derive_uid(root, STUDY, "x")
