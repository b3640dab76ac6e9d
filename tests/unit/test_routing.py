"""Routing: which rule applies to a study, and which series feeds a model channel."""

from __future__ import annotations

from typing import Any

from gateway.config import RuleConfig
from gateway.db.records import SeriesInfo, StudyInfo
from gateway.segment.spec import InputChannel, SeriesSelector
from gateway.study.routing import explain, route, select_series, series_matches


def series(uid: str, received: float = 100.0, **attributes: Any) -> SeriesInfo:
    return SeriesInfo(uid, attributes, first_received_at=received - 10, last_received_at=received)


def study(*members: SeriesInfo, calling: str = "SCANNER", called: str = "AIRCON") -> StudyInfo:
    return StudyInfo("1.2.3", calling, called, 0.0, 100.0, members)


def rule(name: str, **match: Any) -> RuleConfig:
    return RuleConfig.model_validate(
        {"name": name, "models": ["m"], "destinations": ["d"], "match": match}
    )


T2 = series(
    "1.1",
    Modality="MR",
    SeriesDescription="t2_tse_tra",
    SeriesNumber=4,
    ImageType=["ORIGINAL", "PRIMARY", "M", "NORM"],
)
ADC = series(
    "1.2",
    Modality="MR",
    SeriesDescription="ep2d_diff_ADC",
    SeriesNumber=7,
    ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "ADC"],
)
CT = series("1.3", Modality="CT", SeriesDescription="Pelvis 3mm", SeriesNumber=2)


def test_first_matching_rule_wins_in_config_order() -> None:
    rules = [
        rule("ct-only", series={"Modality": "^CT$"}),
        rule("any-mr", series={"Modality": "^MR$"}),
        rule("t2-mr", series={"SeriesDescription": "t2"}),
        rule("catch-all"),
    ]
    chosen = route(rules, study(T2, ADC))
    assert chosen is not None and chosen.name == "any-mr"
    chosen = route(rules, study(CT))
    assert chosen is not None and chosen.name == "ct-only"
    chosen = route(rules[:1], study(T2))
    assert chosen is None
    chosen = route(rules[2:], study(CT))
    assert chosen is not None and chosen.name == "catch-all"


def test_calling_and_called_ae_regexes_must_match_the_whole_title() -> None:
    rules = [
        rule("from-scanner-to-prostate", calling_ae="SCANNER[0-9]*", called_ae="AIRCON_PRO"),
        rule("from-scanner", calling_ae="SCANNER[0-9]*"),
    ]
    got = route(rules, study(T2, calling="SCANNER2", called="AIRCON_PRO"))
    assert got is not None and got.name == "from-scanner-to-prostate"
    got = route(rules, study(T2, calling="SCANNER2", called="AIRCON"))
    assert got is not None and got.name == "from-scanner"
    # Full match: a title that merely contains the pattern does not match.
    assert route(rules, study(T2, calling="OLDSCANNER")) is None
    assert route(rules, study(T2, calling="SCANNERX")) is None


def test_all_conditions_of_a_rule_must_hold() -> None:
    r = rule("mr-from-scanner", calling_ae="SCANNER", series={"Modality": "^MR$"})
    assert route([r], study(T2, calling="SCANNER")) is r
    assert route([r], study(T2, calling="PACS")) is None
    assert route([r], study(CT, calling="SCANNER")) is None


def test_series_description_regex_is_searched_not_anchored() -> None:
    sel = SeriesSelector.model_validate({"SeriesDescription": "(?i)T2.*TRA"})
    assert series_matches(sel, T2.attributes)
    assert not series_matches(sel, ADC.attributes)
    anchored = SeriesSelector.model_validate({"SeriesDescription": "^tra"})
    assert not series_matches(anchored, T2.attributes)


def test_multivalued_image_type_is_joined_with_backslash() -> None:
    original = SeriesSelector.model_validate({"ImageType": r"^ORIGINAL\\PRIMARY"})
    adc = SeriesSelector.model_validate({"ImageType": r"\\ADC$"})
    assert series_matches(original, T2.attributes)
    assert not series_matches(original, ADC.attributes)
    assert series_matches(adc, ADC.attributes)
    assert not series_matches(adc, T2.attributes)


def test_missing_attribute_never_matches_even_a_permissive_pattern() -> None:
    sel = SeriesSelector.model_validate({"BodyPartExamined": ".*"})
    assert not series_matches(sel, T2.attributes)
    assert series_matches(SeriesSelector(), T2.attributes)  # no condition: any series


def test_integer_valued_numbers_match_as_integers() -> None:
    sel = SeriesSelector.model_validate({"SeriesNumber": "^4$"})
    assert series_matches(sel, {"SeriesNumber": 4})
    assert series_matches(sel, {"SeriesNumber": 4.0})
    assert not series_matches(sel, {"SeriesNumber": 41})


def channel(pattern: str) -> InputChannel:
    return InputChannel(
        name="T2", select=SeriesSelector.model_validate({"SeriesDescription": pattern})
    )


def test_select_series_prefers_the_highest_series_number() -> None:
    first = series("1.10", received=200.0, SeriesDescription="t2_tse_tra", SeriesNumber=4)
    repeat = series("1.11", received=100.0, SeriesDescription="t2_tse_tra", SeriesNumber=12)
    other = series("1.12", received=300.0, SeriesDescription="adc", SeriesNumber=99)
    for order in ([first, repeat, other], [other, repeat, first], [repeat, other, first]):
        got = select_series(channel("t2"), order)
        assert got is not None and got.series_uid == "1.11"


def test_select_series_breaks_ties_by_time_then_uid_independent_of_order() -> None:
    older = series("1.20", received=100.0, SeriesDescription="t2", SeriesNumber=5)
    newer = series("1.21", received=200.0, SeriesDescription="t2", SeriesNumber=5)
    for order in ([older, newer], [newer, older]):
        got = select_series(channel("t2"), order)
        assert got is not None and got.series_uid == "1.21"
    a = series("1.30", received=100.0, SeriesDescription="t2", SeriesNumber=5)
    b = series("1.31", received=100.0, SeriesDescription="t2", SeriesNumber=5)
    assert {select_series(channel("t2"), o).series_uid for o in ([a, b], [b, a])} == {"1.31"}


def test_select_series_without_series_number_loses_to_numbered() -> None:
    unnumbered = series("1.40", received=500.0, SeriesDescription="t2")
    numbered = series("1.41", received=100.0, SeriesDescription="t2", SeriesNumber=1)
    got = select_series(channel("t2"), [unnumbered, numbered])
    assert got is not None and got.series_uid == "1.41"


def test_select_series_returns_none_when_nothing_matches() -> None:
    assert select_series(channel("flair"), [T2, ADC, CT]) is None
    assert select_series(channel("t2"), []) is None


# -- why a study was not routed ----------------------------------------------------------------


def test_explain_names_each_rule_the_failed_condition_and_what_each_series_had() -> None:
    rules = [
        rule("prostate-mr", series={"Modality": "^MR$", "SeriesDescription": "(?i)t2"}),
        rule("from-scanner", calling_ae="SCANNER[0-9]*"),
    ]
    ct2 = series("1.4", Modality="CT", SeriesDescription="Abdomen", SeriesNumber=3)
    text = explain(rules, study(CT, ct2, calling="PACS"))
    assert text == (
        "rule prostate-mr: Modality '^MR$' not matched by any series "
        "(series 2: 'CT', series 3: 'CT') and SeriesDescription '(?i)t2' not matched by any "
        "series (series 2: 'Pelvis 3mm', series 3: 'Abdomen'); "
        "rule from-scanner: calling AE 'PACS' not matched by 'SCANNER[0-9]*'"
    )
    assert route(rules, study(CT, ct2, calling="PACS")) is None


def test_explain_when_conditions_are_met_only_by_different_series() -> None:
    r = rule("t2-mr", series={"Modality": "^MR$", "SeriesDescription": "t2"})
    ct_t2 = series("1.5", Modality="CT", SeriesDescription="t2 localiser")
    text = explain([r], study(ADC, ct_t2))
    assert text == (
        "rule t2-mr: no single series meets all its series conditions "
        "(series 7: SeriesDescription 'ep2d_diff_ADC' not 't2', "
        "series #2: Modality 'CT' not '^MR$')"
    )


def test_explain_stops_at_the_rule_that_matches_and_shows_no_patient_data() -> None:
    rules = [
        rule("dixon", series={"ImageType": ["DIXON", "WATER"], "EchoTime": {"min": 80}}),
        rule("any-mr", series={"Modality": "^MR$"}),
        rule("never-reached", calling_ae="X"),
    ]
    t2 = series("1.1", Modality="MR", SeriesNumber=4, ImageType=["ORIGINAL"], PatientName="DOE^J")
    text = explain(rules, study(t2))
    assert text == (
        "rule dixon: ImageType containing [DIXON, WATER] not matched by any series "
        "(series 4: 'ORIGINAL') and EchoTime in [80, inf] not matched by any series "
        "(series 4: absent); rule any-mr: matches"
    )
    assert "DOE" not in text


def test_explain_is_capped_and_counts_the_series_it_does_not_list() -> None:
    many = [series(f"1.{i}", Modality="CT", SeriesNumber=i) for i in range(1, 11)]
    rules = [rule(f"rule-{i}", series={"Modality": "^MR$"}) for i in range(20)]
    text = explain(rules, study(*many))
    assert text.startswith(
        "rule rule-0: Modality '^MR$' not matched by any series "
        "(series 1: 'CT', series 2: 'CT', series 3: 'CT', series 4: 'CT', +6 more); rule rule-1:"
    )
    assert len(text) == 500 and text.endswith("...")
    assert explain([], study(*many)) == "no routing rules configured"
    assert explain(rules[:1], study()) == "rule rule-0: the study has no series"
