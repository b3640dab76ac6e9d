"""Clinic structure naming and the merge plan of a rule's models (pure).

A model names its labels in its own words (``model.yaml`` ``labels``); the clinic wants its own
ROI names, colours and types, TG-263 style by default. :func:`clinic_roi` maps one label;
:func:`plan_structures` decides, for a rule with several models, which model's label becomes
which ROI of the one merged structure set, and refuses a clash the config does not settle.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from gateway.config import ModelSpec, RoiSpec, RuleConfig

# TG-263 primary names (AAPM Report 263) for the pelvis, with conventional colours. Keys are
# normalised model label names (lower case, letters and digits only) and common synonyms.
_TG263 = {
    "prostate": RoiSpec(name="Prostate", color=(255, 0, 0)),
    "bladder": RoiSpec(name="Bladder", color=(255, 255, 0)),
    "rectum": RoiSpec(name="Rectum", color=(0, 200, 255)),
    "seminalves": RoiSpec(name="SeminalVes", color=(255, 128, 0)),
    "seminalvesicles": RoiSpec(name="SeminalVes", color=(255, 128, 0)),
    "urethra": RoiSpec(name="Urethra", color=(255, 0, 255)),
    "penilebulb": RoiSpec(name="PenileBulb", color=(160, 32, 240)),
    "bowel": RoiSpec(name="Bowel", color=(139, 69, 19)),
    "bowelbag": RoiSpec(name="Bag_Bowel", color=(139, 69, 19)),
    "bagbowel": RoiSpec(name="Bag_Bowel", color=(139, 69, 19)),
    "femurl": RoiSpec(name="Femur_L", color=(0, 255, 0)),
    "femurr": RoiSpec(name="Femur_R", color=(0, 128, 0)),
    "femurheadl": RoiSpec(name="Femur_Head_L", color=(0, 255, 0)),
    "femurheadr": RoiSpec(name="Femur_Head_R", color=(0, 128, 0)),
    "anorectum": RoiSpec(name="Rectum_Anal", color=(0, 150, 200)),
}
# Names clinicians also use for the same structures (English and German), matched when an
# approved structure set comes back (gateway.qa.pairing).
_SYNONYMS = {
    "prostategland": "prostate",
    "prostata": "prostate",
    "urinarybladder": "bladder",
    "blase": "bladder",
    "harnblase": "bladder",
    "rektum": "rectum",
    "enddarm": "rectum",
    "samenblasen": "seminalves",
    "seminalvesicle": "seminalves",
    "penilebulbus": "penilebulb",
    "bulbuspenis": "penilebulb",
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def clinic_roi(label: RoiSpec, roi_names: Mapping[str, RoiSpec]) -> RoiSpec:
    """The clinic's ROI for a model label: the config's ``roi_names`` first, then TG-263,
    else the model's own name, colour and type."""
    key = _key(label.name)
    for name, spec in roi_names.items():
        if _key(name) == key:
            return _with_codes(spec, label)
    if key in _TG263:
        return _with_codes(_TG263[key].model_copy(update={"type": label.type}), label)
    return label


def _with_codes(spec: RoiSpec, label: RoiSpec) -> RoiSpec:
    # A clinic name is still the same structure: it keeps the model's codes (DICOM SEG) unless
    # the clinic gives its own.
    if spec.code is not None or label.code is None:
        return spec
    return spec.model_copy(update={"code": label.code, "category": label.category})


def canonical_name(name: str, roi_names: Mapping[str, RoiSpec]) -> str:
    """The normalised clinic name an ROI name stands for: the config's ``roi_names`` first
    (by key or by clinic name), then TG-263 synonyms, else the name itself; compared without
    case, spaces or punctuation ("Seminal Vesicles" and "SeminalVes" are the same ROI)."""
    key = _key(name)
    for alias, spec in roi_names.items():
        if key in (_key(alias), _key(spec.name)):
            return _key(spec.name)
    key = _SYNONYMS.get(key, key)
    if key in _TG263:
        return _key(_TG263[key].name)
    return key


@dataclass(frozen=True)
class PlannedRoi:
    """One ROI of a merged structure set: which model and label value make it."""

    model: str
    label: int
    roi: RoiSpec


def plan_structures(
    rule: RuleConfig,
    models: Mapping[str, ModelSpec],
    roi_names: Mapping[str, RoiSpec],
    available: Collection[str] | None = None,
) -> list[PlannedRoi]:
    """The ROIs of the rule's structure set, in model order then label order.

    When several models make the same clinic ROI, the model named in ``rule.prefer[roi]`` keeps
    it; without such an entry this raises ValueError naming the clash. ``available`` limits the
    plan to the models that produced a result; when the preferred model is not among them, the
    first available model (in rule order) that makes the ROI keeps it.
    """
    if available is not None:
        return _plan_available(rule, models, roi_names, available)
    candidates: dict[str, list[PlannedRoi]] = {}
    for model_name in rule.models:
        spec = models[model_name]
        for value, label in sorted(spec.labels.items()):
            roi = clinic_roi(label, roi_names)
            candidates.setdefault(roi.name, []).append(PlannedRoi(model_name, value, roi))
    for roi_name, winner in rule.prefer.items():
        if roi_name not in candidates:
            raise ValueError(f"prefers {winner} for '{roi_name}', which no model of the rule makes")
        if winner not in {c.model for c in candidates[roi_name]}:
            by = ", ".join(sorted({c.model for c in candidates[roi_name]}))
            raise ValueError(f"'{roi_name}' is made by {by}, not by {winner}")
    plan = []
    for roi_name, made in candidates.items():
        makers = sorted({c.model for c in made})
        if len(made) == 1:
            plan.append(made[0])
        elif roi_name in rule.prefer:
            plan.append(next(c for c in made if c.model == rule.prefer[roi_name]))
        elif len(makers) == 1:
            raise ValueError(f"model {makers[0]} maps two labels to '{roi_name}'")
        else:
            raise ValueError(
                f"rule '{rule.name}': ROI '{roi_name}' is made by {' and '.join(makers)}; "
                f"say which wins with prefer: {{{roi_name}: <model>}}"
            )
    order = {m: i for i, m in enumerate(rule.models)}
    return sorted(plan, key=lambda p: (order[p.model], p.label))


def _plan_available(
    rule: RuleConfig,
    models: Mapping[str, ModelSpec],
    roi_names: Mapping[str, RoiSpec],
    available: Collection[str],
) -> list[PlannedRoi]:
    full = plan_structures(rule, models, roi_names)
    kept = [p for p in full if p.model in available]
    have = {p.roi.name for p in kept}
    for model_name in rule.models:  # ROIs whose chosen model did not produce a result
        if model_name not in available:
            continue
        for value, label in sorted(models[model_name].labels.items()):
            roi = clinic_roi(label, roi_names)
            if roi.name not in have:
                kept.append(PlannedRoi(model_name, value, roi))
                have.add(roi.name)
    order = {m: i for i, m in enumerate(rule.models)}
    return sorted(kept, key=lambda p: (order[p.model], p.label))
