"""A job's outputs from its structures: the RTSTRUCT, optionally a DICOM SEG of the same ROIs,
and, for a multi-frame primary with ``rtstruct.multiframe_reference: classic_copy``, the
classic single-frame copy of its frames that both reference (sent along, before them)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydicom.dataset import Dataset

from gateway.config import RtstructConfig
from gateway.contour.rtstruct import Structure, build_structure_set, write_dataset
from gateway.imaging import Volume
from gateway.job import Artifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outputs:
    rtstruct: Dataset
    seg: Dataset | None
    images: tuple[Dataset, ...]  # the classic copy of a multi-frame primary (or none)
    reference: Volume  # what the RTSTRUCT and SEG reference: the primary or its copy
    problems: tuple[str, ...] = ()  # outputs not made, with why (the RTSTRUCT still goes out)

    def write(self, out_dir: Path) -> tuple[Artifact, ...]:
        """Write every output under ``out_dir`` (durably); the artifacts in sending order:
        images first, then the structure set, then the SEG."""
        artifacts = []
        for image in self.images:
            path = out_dir / str(image.SeriesInstanceUID) / f"{image.SOPInstanceUID}.dcm"
            write_dataset(image, path)
            artifacts.append(Artifact(kind="image", path=str(path), uid=str(image.SOPInstanceUID)))
        outputs: list[tuple[Literal["rtstruct", "seg"], Dataset | None]] = [
            ("rtstruct", self.rtstruct),
            ("seg", self.seg),
        ]
        for kind, ds in outputs:
            if ds is not None:
                path = out_dir / f"{ds.SOPInstanceUID}.dcm"
                write_dataset(ds, path)
                artifacts.append(Artifact(kind=kind, path=str(path), uid=str(ds.SOPInstanceUID)))
        return tuple(artifacts)


def build_outputs(
    reference: Volume,
    structures: Sequence[Structure],
    cfg: RtstructConfig,
    *,
    input_series_uids: Sequence[str],
    seg: bool,
    sources: Mapping[str, Path],
    now: datetime | None = None,
) -> Outputs:
    """Build the outputs on ``reference`` (``sources``: its instances' files, by SOP Instance
    UID, read for a classic copy)."""
    from gateway.contour.classic_copy import classic_copy
    from gateway.contour.seg import build_seg

    when = now or datetime.now()
    images: list[Dataset] = []
    parts = list(input_series_uids)
    if reference.frames and cfg.multiframe_reference == "classic_copy":
        images, reference = classic_copy(
            reference, sources, uid_root=cfg.uid_root, manufacturer=cfg.manufacturer, now=when
        )
        # Other references, other content: never the UIDs of the structure set on the frames.
        parts.append("classic-copy")
    rtstruct = build_structure_set(reference, structures, cfg, input_series_uids=parts, now=when)
    segmentation, problems = None, []
    if seg:
        try:
            segmentation = build_seg(
                reference,
                structures,
                uid_root=cfg.uid_root,
                manufacturer=cfg.manufacturer,
                series_description=cfg.seg_series_description,
                input_series_uids=parts,
                fractional=cfg.seg_type == "fractional",
                now=when,
            )
        except Exception as exc:  # noqa: BLE001 - the structure set still goes out
            log.warning("DICOM SEG not made: %s: %s", type(exc).__name__, exc)
            problems.append(f"DICOM SEG not made: {type(exc).__name__}: {exc}"[:300])
    return Outputs(rtstruct, segmentation, tuple(images), reference, tuple(problems))
