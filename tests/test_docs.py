"""The documents the MDR file needs stay true to the code.

- every test named in ``docs/risk-table.md`` exists (file, function or ``Class::method``), read
  with ``ast`` so no test module is imported; ids marked ``(planned)`` are skipped and counted;
- the risk table has a row for each hazard the file must cover;
- every ``aircon <command>`` in ``docs/user-manual.md`` is a subcommand of the ``aircon`` parser.
"""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RISK_TABLE = REPO / "docs" / "risk-table.md"
USER_MANUAL = REPO / "docs" / "user-manual.md"

# `tests/x/test_y.py::test_name`, `...::Class::method`, `...::test_name[param]`; then maybe
# " (planned)" (a test specified but not yet written).
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::([\w:]+)(?:\[[^`]*\])?`( \(planned\))?")

# One keyword per hazard row the risk table must have (searched in the hazard column).
REQUIRED_HAZARDS = (
    "wrong patient",
    "wrong series",
    "shifted or flipped",
    "missing slices",
    "model version",
    "lost study",
    "duplicate delivery",
    "patient data",
    "unauthorised sender",
    "wrong destination",
    "disk full",
    "not reviewed",
    "drift",
)

# Subcommands being added now (issue 10); the lead removes each once it lands in gateway/cli.py.
PLANNED_COMMANDS: set[str] = set()


def risk_rows() -> list[list[str]]:
    """The risk table's body rows, as cells (header and separator left out)."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in RISK_TABLE.read_text(encoding="utf-8").splitlines()
        if line.startswith("|")
    ]
    return [r for r in rows[2:] if len(r) == 4]


def defined_tests(path: Path) -> set[str]:
    """``name`` for module-level functions and ``Class::method`` for methods of classes."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, functions):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(f"{node.name}::{f.name}" for f in node.body if isinstance(f, functions))
    return names


def missing_tests(text: str) -> tuple[list[str], list[str], int]:
    """(ids whose file or test does not exist, planned ids, number of ids checked)."""
    missing: list[str] = []
    planned: list[str] = []
    checked = 0
    cache: dict[Path, set[str]] = {}
    for m in TEST_ID.finditer(text):
        file, name, is_planned = m[1], m[2], m[3]
        if is_planned:
            planned.append(f"{file}::{name}")
            continue
        checked += 1
        path = REPO / file
        if not path.is_file():
            missing.append(f"{file}::{name} (no such file)")
            continue
        if path not in cache:
            cache[path] = defined_tests(path)
        if name not in cache[path]:
            missing.append(f"{file}::{name} (not defined in {file})")
    return missing, planned, checked


def cli_subcommands() -> set[str]:
    """The subcommands of the real ``aircon`` argument parser."""
    import argparse

    from gateway.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def manual_commands() -> set[str]:
    """Every word following ``aircon`` in the user manual (``.venv/bin/aircon demo`` too)."""
    text = USER_MANUAL.read_text(encoding="utf-8")
    return set(re.findall(r"(?<![\w-])aircon ([a-z][a-z0-9-]*)", text))


# ---------------------------------------------------------------------------------------------


def test_every_test_named_in_the_risk_table_exists() -> None:
    missing, planned, checked = missing_tests(RISK_TABLE.read_text(encoding="utf-8"))
    assert checked >= len(REQUIRED_HAZARDS), f"only {checked} test ids found in {RISK_TABLE}"
    if planned:
        warnings.warn(
            f"{len(planned)} planned test id(s) in docs/risk-table.md not checked: "
            + ", ".join(planned),
            stacklevel=1,
        )
    assert not missing, "docs/risk-table.md names tests that do not exist:\n" + "\n".join(missing)


def test_every_risk_row_names_a_test() -> None:
    rows = risk_rows()
    assert rows, f"no table rows in {RISK_TABLE}"
    without = [r[0] for r in rows if not TEST_ID.search(r[3])]
    assert not without, f"rows without a test id: {without}"


def test_the_risk_table_covers_the_required_hazards() -> None:
    hazards = [re.sub(r"[*_`]", "", r[0]).lower() for r in risk_rows()]
    absent = [k for k in REQUIRED_HAZARDS if not any(k in h for h in hazards)]
    assert not absent, f"hazards without a row in docs/risk-table.md: {absent}"


def test_every_aircon_command_in_the_manual_exists() -> None:
    known = cli_subcommands()
    assert {"serve", "check-config", "studies", "jobs", "resend", "audit"} <= known
    used = manual_commands()
    assert used, f"no aircon commands found in {USER_MANUAL}"
    unknown = sorted(used - known - PLANNED_COMMANDS)
    assert not unknown, f"docs/user-manual.md names commands gateway/cli.py lacks: {unknown}"


def test_the_checks_find_what_is_wrong(tmp_path: Path) -> None:
    text = (
        "`tests/test_docs.py::test_every_risk_row_names_a_test` "
        "`tests/test_docs.py::test_every_risk_row_names_a_test[x-1]` "
        "`tests/test_docs.py::no_such_test` `tests/no_such_file.py::test_x` "
        "`tests/unit/test_x.py::test_later` (planned)"
    )
    missing, planned, checked = missing_tests(text)
    assert checked == 4
    assert missing == [
        "tests/test_docs.py::no_such_test (not defined in tests/test_docs.py)",
        "tests/no_such_file.py::test_x (no such file)",
    ]
    assert planned == ["tests/unit/test_x.py::test_later"]
    module = tmp_path / "test_m.py"
    module.write_text("class TestA:\n    def test_b(self): ...\n\ndef test_c(): ...\n")
    assert defined_tests(module) == {"TestA::test_b", "test_c"}
