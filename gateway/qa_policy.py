"""The clinic's QA policy (``qa:`` of config.yaml): who sends approved structure sets back, the
tolerances of the QA metrics, and the control charts' settings. Part of :mod:`gateway.config`'s
one frozen config; kept here so that each stays a readable size."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

from gateway.segment.spec import Frozen


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


class ControlChartConfig(Frozen):
    """Control charts on surface Dice and added path length per model version and ROI
    (gateway.qa.drift; docs/qa-drift.md). The baseline (centre and sigma) is the model.yaml
    ``qa.baseline`` when given, else the first ``baseline_cases`` compared cases; sigma is never
    taken below the floors (a run of unchanged contours has no spread)."""

    baseline_cases: Annotated[int, Field(ge=3)] = 20
    ewma_lambda: Annotated[float, Field(gt=0, le=1)] = 0.2
    limit_sigma: Annotated[float, Field(gt=0)] = 3.0
    min_sigma_surface_dice: Annotated[float, Field(gt=0)] = 0.02
    min_sigma_apl_mm: Annotated[float, Field(gt=0)] = 10.0


class QaConfig(Frozen):
    """The clinical QA loop: approved structure sets sent back by ``peers`` are compared with
    the AI structure set AIRCON sent for the same study.

    ``peers``: calling AE titles (each also listed in ``peers`` of the gateway) whose RTSTRUCTs
    are approved structure sets. ``tolerance_mm``: surface Dice tolerance, per clinic ROI name
    in ``roi_tolerance_mm``; ``apl_tolerance_mm``: added path length tolerance.
    ``candidate_dice``: a single case below this Dice (or an AI ROI deleted) is an incident
    candidate."""

    peers: tuple[str, ...] = ()  # checked against the gateway's peers
    tolerance_mm: Annotated[float, Field(gt=0)] = 2.0
    roi_tolerance_mm: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    apl_tolerance_mm: Annotated[float, Field(ge=0)] = 1.0
    candidate_dice: Annotated[float, Field(ge=0, le=1)] = 0.5
    control: ControlChartConfig = ControlChartConfig()

    def tolerance_for(self, roi: str) -> float:
        """The ROI's tolerance; names compared without case, spaces or punctuation."""
        key = _key(roi)
        return next(
            (mm for name, mm in self.roi_tolerance_mm.items() if _key(name) == key),
            self.tolerance_mm,
        )
