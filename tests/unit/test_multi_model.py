"""Several series per model and several models per rule: selection conditions, primary channel,
frames of reference, guardrails, the merge plan and clinic naming (all pure, fake clock)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config import ModelSpec, RoiSpec, RuleConfig, SeriesSelector
from gateway.contour.structures import clinic_roi, plan_structures
from gateway.db.records import SeriesInfo
from gateway.study.assembly import Failed, Ready, Waiting, decide, decide_rule
from gateway.study.routing import select_series, series_matches
from tests.unit.test_assembly import CFG, OPENED, oblique, slices, study

T2_ATTRS = {
    "Modality": "MR",
    "SeriesDescription": "t2_tse_tra",
    "SeriesNumber": 4,
    "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"],
    "EchoTime": 104.0,
    "SliceThickness": 3.0,
}
WATER_ATTRS = {
    "Modality": "MR",
    "SeriesDescription": "t1_vibe_dixon_tra_W",
    "SeriesNumber": 7,
    "ImageType": ["DERIVED", "PRIMARY", "DIXON", "WATER"],
    "EchoTime": 2.46,
    "SliceThickness": 3.5,
}


def mk_series(uid: str, attrs: dict[str, Any], last: float, **geo: Any) -> SeriesInfo:
    return SeriesInfo(uid, dict(attrs), last - 5.0, last, tuple(slices(prefix=uid + ".", **geo)))


def spec(
    name: str, inputs: list[dict[str, Any]], labels: dict[int, str] | None = None, **extra: Any
) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": name,
            "kind": "nnunet",
            "version": "2.0",
            "nnunet": {"folder": "nnunet"},
            "inputs": inputs,
            "labels": {
                k: {"name": v, "color": [1, 2, 3]} for k, v in (labels or {1: "Prostate"}).items()
            },
            **extra,
        }
    )


T2 = {"name": "T2", "primary": True, "select": {"Modality": "^MR$", "SeriesDescription": "t2"}}
WATER = {"name": "Water", "select": {"ImageType": ["DIXON", "WATER"]}}
TWO = spec("two", [WATER, T2])  # primary is the second channel
ONE = spec("one", [T2], {1: "Prostate", 2: "Bladder"})


# -- selection ---------------------------------------------------------------------------------


def test_selector_conditions_regex_contains_and_range() -> None:
    sel = SeriesSelector.model_validate(
        {"Modality": "^MR$", "ImageType": ["water", "DIXON"], "EchoTime": {"min": 1, "max": 5}}
    )
    assert series_matches(sel, WATER_ATTRS)
    assert not series_matches(sel, T2_ATTRS)  # no DIXON/WATER in ImageType, TE 104
    assert not series_matches(sel, {**WATER_ATTRS, "EchoTime": 6.0})
    assert not series_matches(sel, {k: v for k, v in WATER_ATTRS.items() if k != "EchoTime"})
    # ImageType as the backslash-joined string some stores keep
    assert series_matches(sel, {**WATER_ATTRS, "ImageType": "DERIVED\\PRIMARY\\DIXON\\WATER"})


def test_pre_release_keywords_form_is_rejected() -> None:
    with pytest.raises(ValidationError, match="not a DICOM keyword"):
        SeriesSelector.model_validate({"keywords": {"Modality": "^MR$"}})


def test_repeat_scan_latest_series_number_is_chosen() -> None:
    first = mk_series("1.2.9.4", T2_ATTRS, 900.0)
    repeat = mk_series("1.2.9.14", {**T2_ATTRS, "SeriesNumber": 14}, 800.0)
    water = mk_series("1.2.9.7", WATER_ATTRS, 900.0)
    chosen = select_series(ONE.inputs[0], [first, water, repeat])
    assert chosen is not None and chosen.series_uid == "1.2.9.14"


# -- readiness per model -----------------------------------------------------------------------


def test_two_channel_model_waits_for_both_series_and_records_channel_order() -> None:
    t2 = mk_series("1.2.9.4", T2_ATTRS, 900.0)
    only_t2 = decide(TWO, study(t2), opened_at=OPENED, now=1000.0, cfg=CFG)
    assert isinstance(only_t2, Waiting)
    assert "input 0 'Water': no matching series received" in only_t2.reason
    water = mk_series("1.2.9.7", WATER_ATTRS, 900.0, spacing=3.5, n=18)
    both = decide(TWO, study(t2, water), opened_at=OPENED, now=1000.0, cfg=CFG)
    assert isinstance(both, Ready)
    assert [s.series_uid for s in both.series] == ["1.2.9.7", "1.2.9.4"]
    assert TWO.primary_index == 1


def test_missing_channel_fails_after_the_timeout_naming_it() -> None:
    t2 = mk_series("1.2.9.4", T2_ATTRS, 900.0)
    d = decide(TWO, study(t2), opened_at=OPENED, now=OPENED + CFG.study_timeout_s, cfg=CFG)
    assert isinstance(d, Failed)
    assert "not ready after 600 s" in d.reason and "'Water': no matching series" in d.reason


def test_series_in_another_frame_of_reference_are_refused() -> None:
    t2 = mk_series("1.2.9.4", T2_ATTRS, 900.0)
    water = mk_series("1.2.9.7", WATER_ATTRS, 900.0, frame="1.2.9.2")
    d = decide(TWO, study(t2, water), opened_at=OPENED, now=1000.0, cfg=CFG)
    assert isinstance(d, Failed)
    assert "another frame of reference" in d.reason and "'Water'" in d.reason


def test_rule_runs_the_ready_model_once_the_other_has_timed_out() -> None:
    t2 = mk_series("1.2.9.4", T2_ATTRS, 900.0)
    early = decide_rule([ONE, TWO], study(t2), opened_at=OPENED, now=1000.0, cfg=CFG)
    assert early.waiting is not None and "two: input 0 'Water'" in early.waiting.reason
    assert early.waiting.recheck_at == OPENED + CFG.study_timeout_s
    late = decide_rule([ONE, TWO], study(t2), opened_at=OPENED, now=OPENED + 600, cfg=CFG)
    assert late.waiting is None
    assert set(late.ready) == {"one"}
    assert "Water" in late.failed["two"]


# -- guardrails --------------------------------------------------------------------------------

RAILS = {
    "modality": ["MR"],
    "max_oblique_deg": 20,
    "slice_thickness_mm": [2.5, 4.0],
    "pixel_spacing_mm": [0.3, 1.0],
    "slices": [12, 64],
    "field_of_view_mm": [100, 300],
}
GUARDED = spec("guarded", [T2], guardrails=RAILS)


def _guarded(attrs: dict[str, Any], **geo: Any) -> Ready | Waiting | Failed:
    s = mk_series("1.2.9.4", attrs, 900.0, **geo)
    return decide(GUARDED, study(s), opened_at=OPENED, now=1000.0, cfg=CFG)


def test_within_guardrails_is_ready() -> None:
    assert isinstance(_guarded(T2_ATTRS, orientation=oblique(12.0)), Ready)


@pytest.mark.parametrize(
    ("attrs", "geo", "reason"),
    [
        ({"SliceThickness": 6.0}, {"spacing": 6.0}, "T2 slice thickness 6.0 mm outside 2.5-4 mm"),
        ({}, {"orientation": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)}, "T2 is not axial: slices tilted 90"),
        ({}, {"n": 8}, "T2 slice count 8 outside 12-64"),
    ],
)
def test_outside_guardrails_is_refused_with_a_readable_reason(
    attrs: dict[str, Any], geo: dict[str, Any], reason: str
) -> None:
    d = _guarded({**T2_ATTRS, **attrs}, **geo)
    assert isinstance(d, Failed)
    assert d.reason.startswith("outside the model's intended use: ")
    assert reason in d.reason


# -- merge plan and naming ---------------------------------------------------------------------


def _rule(models: list[str], prefer: dict[str, str] | None = None) -> RuleConfig:
    return RuleConfig.model_validate(
        {"name": "r", "models": models, "prefer": prefer or {}, "destinations": ["planning"]}
    )


MODELS = {
    "pelvis": spec("pelvis", [T2], {1: "Prostate", 2: "Bladder", 3: "Rectum"}),
    "taps": spec("taps", [T2], {1: "prostate"}),
    "sv": spec("sv", [T2], {1: "seminal vesicles"}),
}


def test_clinic_names_tg263_by_default_and_config_overrides() -> None:
    label = RoiSpec(name="seminal vesicles", color=(1, 2, 3))
    assert clinic_roi(label, {}).name == "SeminalVes"
    clinic = {"Seminal Vesicles": RoiSpec(name="SV_Clinic", color=(9, 9, 9), type="CTV")}
    assert clinic_roi(label, clinic) == clinic["Seminal Vesicles"]
    assert clinic_roi(RoiSpec(name="Tumour_X", color=(1, 1, 1)), {}).name == "Tumour_X"


def test_the_preferred_model_keeps_a_shared_roi() -> None:
    plan = plan_structures(_rule(["pelvis", "taps", "sv"], {"Prostate": "taps"}), MODELS, {})
    assert [(p.roi.name, p.model) for p in plan] == [
        ("Bladder", "pelvis"),
        ("Rectum", "pelvis"),
        ("Prostate", "taps"),
        ("SeminalVes", "sv"),
    ]


def test_a_clash_without_preference_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="'Prostate' is made by pelvis and taps"):
        plan_structures(_rule(["pelvis", "taps"]), MODELS, {})
    with pytest.raises(ValueError, match="not by sv"):
        plan_structures(_rule(["pelvis", "taps"], {"Prostate": "sv"}), MODELS, {})


def test_when_the_preferred_model_did_not_run_the_other_keeps_the_roi() -> None:
    plan = plan_structures(
        _rule(["pelvis", "taps"], {"Prostate": "taps"}), MODELS, {}, available={"pelvis"}
    )
    assert {(p.roi.name, p.model) for p in plan} == {
        ("Prostate", "pelvis"),
        ("Bladder", "pelvis"),
        ("Rectum", "pelvis"),
    }


def test_modality_guardrail_applies_to_every_channel() -> None:
    any_t2 = {"name": "T2", "select": {"SeriesDescription": "t2"}}
    model = spec("m", [any_t2], guardrails={"modality": ["MR"]})
    ct = mk_series("1.2.9.4", {**T2_ATTRS, "Modality": "CT"}, 900.0)
    d = decide(model, study(ct), opened_at=OPENED, now=1000.0, cfg=CFG)
    assert isinstance(d, Failed) and "T2 modality 'CT' is not MR" in d.reason
