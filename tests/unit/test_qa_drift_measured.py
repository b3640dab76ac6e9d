"""The drift acceptance with measured numbers: 30 prostates contoured on a ProstateX-like grid,
the clinician touching up some and, from case 21 on, moving the apex and base out by 3 mm.
Every case is measured by gateway.qa.metrics.compare (not assumed), then charted."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from gateway.db.records import QaRecord, QaStatus
from gateway.qa.drift import evaluate
from gateway.qa.metrics import compare
from gateway.qa_policy import QaConfig

SPACING = (3.6, 0.5, 0.5)  # (z, y, x) mm, the ProstateX T2 grid
SHAPE = (19, 200, 200)  # cropped in plane: the prostate's neighbourhood


def _ellipsoid(rng: np.random.Generator) -> np.ndarray:
    """A prostate of 30-50 ml, randomly sized and placed."""
    z, y, x = np.indices(SHAPE, dtype=float)
    zc, yc, xc = 9 + rng.uniform(-1, 1), 100 + rng.uniform(-8, 8), 100 + rng.uniform(-8, 8)
    a, b, c = rng.uniform(17, 21), rng.uniform(17, 21), rng.uniform(13, 16)  # mm semi-axes
    zz, yy, xx = (z - zc) * SPACING[0], (y - yc) * SPACING[1], (x - xc) * SPACING[2]
    return (xx / a) ** 2 + (yy / b) ** 2 + (zz / c) ** 2 <= 1.0


def _grow(mask: np.ndarray, slices: list[int], mm: float) -> np.ndarray:
    out = mask.copy()
    for k in slices:
        if out[k].any():
            out[k] |= ndimage.distance_transform_edt(~mask[k], sampling=SPACING[1:]) <= mm
    return out


def _clinician(ai: np.ndarray, rng: np.random.Generator, drifted: bool) -> np.ndarray:
    zs = [int(k) for k in np.flatnonzero(ai.any(axis=(1, 2)))]
    if drifted:  # apex and base: the outer two slices at each end, a third of the gland
        return _grow(ai, zs[:2] + zs[-2:], 3.0)
    if rng.random() < 0.35:  # a touch-up: 1-1.5 mm on one or two slices
        n = int(rng.integers(1, 3))
        return _grow(ai, list(rng.choice(zs, n, replace=False)), float(rng.uniform(1.0, 1.5)))
    return ai


def _clinic(drift_from: int | None, seed: int = 2026) -> list[QaRecord]:
    rng = np.random.default_rng(seed)
    rows = []
    for case in range(1, 31):
        ai = _ellipsoid(rng)
        approved = _clinician(ai, rng, drifted=drift_from is not None and case >= drift_from)
        m = compare(ai, approved, SPACING, tolerance_mm=2.0, apl_tolerance_mm=1.0)
        values = {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}
        rows.append(
            QaRecord(
                job_id=case,
                study_uid=f"1.2.826.0.1.{case}",
                model="pelvis",
                model_version="1.0",
                roi="Prostate",
                approved_roi="Prostate",
                status=QaStatus.COMPARED,
                ai_uid=f"1.2.826.0.2.{case}",
                approved_uid=f"1.2.826.0.3.{case}",
                at=1_700_000_000.0 + case * 86400,
                **values,
            )
        )
    return rows


def test_thirty_measured_cases_last_ten_edited_by_3_mm_raise_one_alarm() -> None:
    rows = _clinic(drift_from=21)
    edited = [r for r in rows if r.job_id > 20]
    print("edited: surface Dice", [round(r.surface_dice or 0, 3) for r in edited])
    print("edited: APL mm", [round(r.apl or 0) for r in edited])
    assert all(not r.unchanged and (r.apl or 0) > 50 for r in edited)
    result = evaluate(rows, QaConfig().control, candidate_dice=0.5)
    assert len(result.alarms) == 1
    assert result.alarms[0].job_id > 20  # raised by the edited cases, not before
    # The same clinic without the drift: no alarm.
    calm = evaluate(_clinic(drift_from=None), QaConfig().control, candidate_dice=0.5)
    assert calm.alarms == ()
