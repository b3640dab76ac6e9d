"""Slice geometry from the network is untrusted: malformed values are a readable problem."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.db.records import SliceGeometry
from gateway.study.geometry import check_volume

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _stack(n: int = 4) -> list[SliceGeometry]:
    return [
        SliceGeometry(f"1.2.9.5.{k}", "1.2.9.1", (0.0, 0.0, 3.0 * k), AXIAL, (0.5, 0.5), 64, 64)
        for k in range(n)
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("orientation", (*AXIAL, 0.0)),
        ("orientation", AXIAL[:5]),
        ("position", (0.0, 3.0)),
        ("pixel_spacing", (0.5,)),
    ],
)
def test_a_value_of_the_wrong_multiplicity_is_a_problem_not_a_crash(field, value) -> None:
    geo = _stack()
    geo[1] = dataclasses.replace(geo[1], **{field: value})
    check = check_volume(geo)
    assert not check.ok
    assert check.problems == (
        "1 instance(s) have ImagePositionPatient, ImageOrientationPatient or PixelSpacing "
        "with the wrong number of values",
    )


def test_a_well_formed_stack_is_one_volume() -> None:
    check = check_volume(list(reversed(_stack())))
    assert check.ok and check.slice_spacing == pytest.approx(3.0)
    assert check.order == tuple(f"1.2.9.5.{k}" for k in range(4))
