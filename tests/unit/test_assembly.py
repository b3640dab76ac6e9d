"""Assembly with a fake clock: when is a study ready, why is it not, and when to look again."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.config import AssemblyConfig, ModelSpec
from gateway.db.records import SeriesInfo, SliceGeometry, StudyInfo
from gateway.study.assembly import Failed, Ready, Waiting, decide

CFG = AssemblyConfig(series_quiet_s=10.0, study_timeout_s=600.0)
OPENED = 1000.0
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def oblique(angle_deg: float = 17.0, axis: tuple[float, float, float] = (1.0, 0.4, 0.2)):
    """An axial orientation rotated by ``angle_deg`` about ``axis`` (a real double oblique)."""
    k = np.asarray(axis) / np.linalg.norm(axis)
    a = np.radians(angle_deg)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx
    return tuple(float(v) for v in np.concatenate([rot[:, 0], rot[:, 1]]))


def slices(
    n: int = 20,
    spacing: float = 3.0,
    orientation: tuple[float, ...] = AXIAL,
    origin: tuple[float, float, float] = (-100.0, -120.0, -30.0),
    heights: list[float] | None = None,
    frame: str = "1.2.9.1",
    prefix: str = "1.2.9.5.",
) -> list[SliceGeometry]:
    """Slices stacked along the normal of ``orientation`` at ``heights`` (default: uniform)."""
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    heights = heights if heights is not None else [k * spacing for k in range(n)]
    return [
        SliceGeometry(
            sop_instance_uid=f"{prefix}{k + 1}",
            frame_of_reference_uid=frame,
            position=tuple(float(v) for v in np.asarray(origin) + h * normal),  # type: ignore[arg-type]
            orientation=orientation,
            pixel_spacing=(0.5, 0.5),
            rows=384,
            columns=384,
        )
        for k, h in enumerate(heights)
    ]


def series(uid: str, description: str, last: float, geo: list[SliceGeometry], number: int = 3):
    return SeriesInfo(
        series_uid=uid,
        attributes={"Modality": "MR", "SeriesDescription": description, "SeriesNumber": number},
        first_received_at=last - 5.0,
        last_received_at=last,
        slices=tuple(geo),
    )


def study(*members: SeriesInfo) -> StudyInfo:
    last = max((s.last_received_at for s in members), default=OPENED)
    return StudyInfo("1.2.9", "SCANNER", "AIRCON", OPENED - 10, last, members)


def model(*channels: str) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "pelvis",
            "kind": "nnunet",
            "version": "1",
            "nnunet": {"folder": "nnunet"},
            "inputs": [{"name": c, "select": {"SeriesDescription": f"(?i){c}"}} for c in channels],
            "labels": {1: {"name": "Bladder", "color": [255, 255, 0]}},
        }
    )


def decide_at(m: ModelSpec, st: StudyInfo, now: float):
    return decide(m, st, opened_at=OPENED, now=now, cfg=CFG)


def test_ready_only_after_every_input_series_is_quiet() -> None:
    m = model("t2", "adc")
    t2 = series("1.2.9.2", "t2_tse", 1000.0, slices(prefix="1.2.9.6."))
    adc = series("1.2.9.3", "ep2d_ADC", 1004.0, slices(n=10, spacing=6.0, prefix="1.2.9.7."))
    st = study(t2, adc)

    early = decide_at(m, st, 1009.0)
    assert isinstance(early, Waiting)
    assert "input 0 't2': series still receiving" in early.reason
    assert "input 1 'adc': series still receiving" in early.reason
    assert early.recheck_at == 1010.0  # the first series to fall quiet

    half = decide_at(m, st, 1010.0)
    assert isinstance(half, Waiting)
    assert "'t2'" not in half.reason and "input 1 'adc': series still receiving" in half.reason
    assert half.recheck_at == 1014.0

    ready = decide_at(m, st, 1014.0)
    assert isinstance(ready, Ready)
    assert [s.series_uid for s in ready.series] == ["1.2.9.2", "1.2.9.3"]
    assert ready.order[0] == tuple(f"1.2.9.6.{k}" for k in range(1, 21))
    assert len(ready.order[1]) == 10


@pytest.mark.parametrize(
    ("t2_key", "adc_key", "ready"),
    [
        ("a" * 64, "b" * 64, False),  # two patients
        ("a" * 64, "a" * 64, True),
        ("a" * 64, "", True),  # one series recorded before patient keys existed: not known
    ],
    ids=["two patients", "one patient", "one not known"],
)
def test_input_series_of_different_patients_fail_the_model(
    t2_key: str, adc_key: str, ready: bool
) -> None:
    from dataclasses import replace

    m = model("t2", "adc")
    t2 = series("1.2.9.2", "t2_tse", 1000.0, slices(prefix="1.2.9.6."))
    adc = series("1.2.9.3", "ep2d_ADC", 1000.0, slices(n=10, spacing=6.0, prefix="1.2.9.7."))
    st = study(replace(t2, patient_key=t2_key), replace(adc, patient_key=adc_key))
    got = decide_at(m, st, 1020.0)
    if ready:
        assert isinstance(got, Ready)
    else:
        assert got == Failed(
            "input series belong to different patients (PatientID/IssuerOfPatientID differ)"
        )


def test_waiting_reason_names_the_missing_channel_and_rechecks_at_the_deadline() -> None:
    m = model("t2", "adc")
    st = study(series("1.2.9.2", "t2_tse", 1000.0, slices()))
    got = decide_at(m, st, 1100.0)
    assert got == Waiting("input 1 'adc': no matching series received", OPENED + 600.0)

    failed = decide_at(m, st, OPENED + 600.0)
    assert failed == Failed("not ready after 600 s: input 1 'adc': no matching series received")


def test_still_receiving_recheck_is_capped_at_the_deadline() -> None:
    m = model("t2")
    st = study(series("1.2.9.2", "t2_tse", OPENED + 595.0, slices()))
    got = decide_at(m, st, OPENED + 596.0)
    assert isinstance(got, Waiting) and got.recheck_at == OPENED + 600.0


def test_oblique_series_sorted_along_its_normal_is_ready() -> None:
    orientation = oblique()
    geo = slices(n=15, spacing=3.6, orientation=orientation)
    shuffled = [geo[i] for i in np.random.default_rng(3).permutation(len(geo))]
    st = study(series("1.2.9.2", "t2_tse", 1000.0, shuffled))
    got = decide_at(model("t2"), st, 1010.0)
    assert isinstance(got, Ready)
    assert got.order[0] == tuple(s.sop_instance_uid for s in geo)


def _bad_cases() -> dict[str, tuple[list[SliceGeometry], str]]:
    orientation = oblique()
    two_frames = slices(n=10)
    two_frames[5:] = [
        SliceGeometry(
            s.sop_instance_uid,
            "1.2.9.99",
            s.position,
            s.orientation,
            s.pixel_spacing,
            s.rows,
            s.columns,
        )
        for s in two_frames[5:]
    ]
    normal = np.cross(orientation[:3], orientation[3:])
    sheared = [
        SliceGeometry(
            s.sop_instance_uid,
            s.frame_of_reference_uid,
            tuple(
                float(v)
                for v in np.asarray(s.position)  # type: ignore[arg-type]
                + k * 0.5 * np.asarray(orientation[:3])
            ),
            s.orientation,
            s.pixel_spacing,
            s.rows,
            s.columns,
        )
        for k, s in enumerate(slices(n=10, orientation=orientation))
    ]
    assert abs(np.dot(np.asarray(sheared[9].position) - sheared[0].position, normal) - 27.0) < 1e-6
    return {
        "gap": (
            slices(heights=[0, 3, 6, 9, 15, 18, 21], orientation=orientation),
            "gap in slice positions: 6.00 mm step where spacing is 3.00 mm (1 gap(s))",
        ),
        "duplicate": (slices(heights=[0, 3, 6, 6, 9, 12]), "1 duplicate slice position(s)"),
        "two frames": (two_frames, "2 frames of reference in one series"),
        "non-uniform": (
            slices(heights=[0, 3, 6, 8, 11, 14, 17]),
            "non-uniform slice spacing (2.00-3.00 mm)",
        ),
        "sheared": (sheared, "slice positions are not along the slice normal (sheared or tilted)"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_inconsistent_series_waits_then_fails_with_the_stated_reason(case: str) -> None:
    geo, problem = _bad_cases()[case]
    st = study(series("1.2.9.2", "t2_tse", 1000.0, geo, number=7))
    m = model("t2")
    expected = f"input 0 't2': series 7 is not one volume: {problem}"

    still_receiving = decide_at(m, st, 1005.0)
    assert still_receiving == Waiting("input 0 't2': series still receiving", 1010.0)

    quiet = decide_at(m, st, 1010.0)
    assert quiet == Waiting(expected, OPENED + 600.0)  # more slices may still fix it

    assert decide_at(m, st, OPENED + 600.0) == Failed(f"not ready after 600 s: {expected}")


def test_a_later_repeat_series_replaces_a_broken_one() -> None:
    broken = series("1.2.9.2", "t2_tse", 1000.0, slices(heights=[0, 3, 9]), number=4)
    repeat = series("1.2.9.3", "t2_tse", 1100.0, slices(n=5, prefix="1.2.9.8."), number=5)
    m = model("t2")
    assert isinstance(decide_at(m, study(broken), 1050.0), Waiting)
    got = decide_at(m, study(broken, repeat), 1110.0)
    assert isinstance(got, Ready) and got.series[0].series_uid == "1.2.9.3"


def test_missing_geometry_is_reported() -> None:
    geo = slices(n=4)
    geo[2] = SliceGeometry(geo[2].sop_instance_uid, "1.2.9.1", None, AXIAL, (0.5, 0.5), 384, 384)
    got = decide_at(model("t2"), study(series("1.2.9.2", "t2", 1000.0, geo)), 1020.0)
    assert isinstance(got, Waiting)
    assert "1 instance(s) lack ImagePositionPatient" in got.reason


def test_a_study_whose_association_was_cut_off_waits_for_the_sender() -> None:
    import dataclasses

    m = model("t2")
    st = study(series("1.2.9.2", "t2_tse", 1000.0, slices(prefix="1.2.9.6.")))
    assert isinstance(decide_at(m, st, 1010.0), Ready)  # quiet: it looks complete
    cut = dataclasses.replace(st, interrupted_at=1000.5)
    waiting = decide_at(m, cut, 1010.0)
    assert isinstance(waiting, Waiting) and "cut off" in waiting.reason
    assert waiting.recheck_at == 1000.5 + CFG.interrupted_wait_s
    assert isinstance(decide_at(m, cut, 1000.5 + CFG.interrupted_wait_s), Ready)


def test_a_study_an_association_is_still_sending_is_never_ready() -> None:
    """However quiet its series look, and however long past the deadline."""
    import dataclasses

    m = model("t2")
    st = study(series("1.2.9.2", "t2_tse", 1000.0, slices(prefix="1.2.9.6.")))
    assert isinstance(decide_at(m, st, 1010.0), Ready)
    sending = dataclasses.replace(st, open_associations=1)
    for now in (1010.0, OPENED + CFG.study_timeout_s + 1):
        got = decide_at(m, sending, now)
        assert isinstance(got, Waiting)
        assert got.reason == "1 association(s) still sending this study"


def test_association_end_and_restart_mark_studies_interrupted(db) -> None:  # noqa: ANN001
    from gateway.db.records import InstanceRecord

    for uid in ("1.2.1", "1.2.2", "1.2.3"):
        db.record_instance(
            InstanceRecord(uid, uid + ".1", uid + ".1.1", "1.2.840.10008.5.1.4.1.1.4", "p", {}, {}),
            calling_ae="S",
            called_ae="A",
            now=100.0,
        )
    db.association_ended(["1.2.1"], clean=True, now=101.0)
    db.association_ended(["1.2.2"], clean=False, now=101.0)
    assert db.study("1.2.1").interrupted_at is None
    assert db.study("1.2.2").interrupted_at == 101.0
    # 1.2.3's association was still open when the process stopped.
    assert db.mark_unfinished_receptions(200.0) == ["1.2.3"]
    assert db.study("1.2.3").interrupted_at == 200.0
    db.association_ended(["1.2.2"], clean=True, now=300.0)  # the sender sent it again
    assert db.study("1.2.2").interrupted_at is None
