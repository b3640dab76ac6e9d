"""ROI name matching between two structure sets (pure).

Two names denote the same structure when they map to the same clinic ROI: the config's
``roi_names`` first, then the TG-263 names and synonyms of :mod:`gateway.contour.structures`,
compared without case, spaces or punctuation ("Seminal Vesicles" = "SeminalVes" =
"seminal_ves").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from gateway.config import RoiSpec
from gateway.contour.structures import clinic_roi


def roi_key(name: str, roi_names: Mapping[str, RoiSpec]) -> str:
    """The normalised clinic name a structure name stands for."""
    spec = clinic_roi(RoiSpec(name=name[:64] or "?", color=(0, 0, 0)), roi_names)
    return re.sub(r"[^a-z0-9]", "", spec.name.lower())


def match_roi_names(
    ai_names: Iterable[str],
    other_names: Iterable[str],
    roi_names: Mapping[str, RoiSpec],
) -> dict[str, str]:
    """Pair each AI ROI name with the name of the same structure among ``other_names``.

    An exact name wins over a normalised match; each other name is used at most once (the first
    AI name in order takes it). AI names without a counterpart are absent from the result.
    """
    ai, other = list(ai_names), list(other_names)
    pairs: dict[str, str] = {a: a for a in ai if a in other}
    taken = set(pairs.values())
    keys = {o: roi_key(o, roi_names) for o in other}
    for a in ai:
        if a in pairs:
            continue
        key = roi_key(a, roi_names)
        match = next((o for o in other if o not in taken and keys[o] == key), None)
        if match is not None:
            pairs[a] = match
            taken.add(match)
    return {a: pairs[a] for a in ai if a in pairs}
