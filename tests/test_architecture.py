"""The architecture and the code's hygiene, checked by the project's tools: import contracts
(pyproject.toml [tool.importlinter]), ruff, mypy, and the size of files and classes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GATEWAY = REPO / "gateway"
BIN = Path(sys.executable).parent  # the venv's tools, whatever PATH holds
MAX_FILE_LINES = 450
MAX_CLASS_LINES = 250


def _run(tool: str, *args: str) -> None:
    exe = BIN / tool
    if not exe.exists():
        pytest.fail(f"{exe} not found: install the dev extra (pip install -e '.[dev]')")
    proc = subprocess.run([str(exe), *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{tool} {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


def test_import_contracts_hold() -> None:
    _run("lint-imports", "--no-logo")


def test_ruff_finds_nothing() -> None:
    _run("ruff", "check", "gateway", "tests", "bench")


def test_code_is_ruff_formatted() -> None:
    _run("ruff", "format", "--check", "gateway", "tests", "bench")


def test_mypy_finds_nothing() -> None:
    _run("mypy", "gateway")


def _sources() -> list[Path]:
    demo = GATEWAY / "demo"
    return sorted(p for p in GATEWAY.rglob("*.py") if demo not in p.parents)


def test_no_module_is_longer_than_the_limit() -> None:
    long = [
        f"{p.relative_to(REPO)}:1: {n} lines"
        for p in _sources()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES
    ]
    assert not long, f"modules over {MAX_FILE_LINES} lines:\n" + "\n".join(long)


def test_no_class_is_longer_than_the_limit() -> None:
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                n = node.end_lineno - node.lineno + 1
                if n > MAX_CLASS_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.name} {n} lines")
    assert not long, f"classes over {MAX_CLASS_LINES} lines:\n" + "\n".join(long)
