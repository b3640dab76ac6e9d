"""A recorded series split into image sets: the series itself, and one per channel of its
multi-frame instances (see :mod:`gateway.multiframe` for what a channel is)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from gateway.db.records import SeriesInfo, SliceGeometry
from gateway.multiframe import CHANNEL_KEYS


def _slices(
    sop_uid: str, g: dict[str, Any], described: dict[str, Any]
) -> dict[int, list[SliceGeometry]]:
    """Per channel index, the :class:`SliceGeometry` of its frames (as recorded)."""

    def tup(v: Any) -> tuple[float, ...] | None:
        return tuple(float(x) for x in v) if v is not None else None

    out: dict[int, list[SliceGeometry]] = {}
    for number, f in enumerate(described.get("frames") or [], 1):
        position = tup(f.get("p"))
        out.setdefault(int(f.get("c", 0)), []).append(
            SliceGeometry(
                sop_instance_uid=sop_uid,
                frame_of_reference_uid=g.get("FrameOfReferenceUID"),
                position=position,  # type: ignore[arg-type]
                orientation=tup(f.get("o", described.get("orientation"))),
                pixel_spacing=tup(f.get("s", described.get("spacing"))),  # type: ignore[arg-type]
                rows=g.get("Rows"),
                columns=g.get("Columns"),
                frames=g.get("NumberOfFrames"),
                frame=number,
                stack=f.get("st"),
            )
        )
    return out


def image_sets(base: SeriesInfo, geometry: dict[str, dict[str, Any]]) -> list[SeriesInfo]:
    """Split a recorded series (``base``, a :class:`gateway.db.records.SeriesInfo` whose
    ``slices`` hold one entry per instance) into its image sets: the single-frame instances as
    the series itself, and one image set per channel of its multi-frame instances (channels with
    the same attributes in several instances are one). ``geometry`` is each instance's recorded
    geometry (SOP Instance UID -> dict with ``Frames`` for a multi-frame instance). A channel's
    key is ``<Series Instance UID>#<hash of its channel attributes>``."""
    classic = [s for s in base.slices if not (geometry.get(s.sop_instance_uid) or {}).get("Frames")]
    channels: dict[str, tuple[dict[str, Any], list[SliceGeometry]]] = {}
    for s in base.slices:
        described = (geometry.get(s.sop_instance_uid) or {}).get("Frames")
        if not described:
            continue
        attrs = described.get("channels") or [{}]
        for c, frames in _slices(
            s.sop_instance_uid, geometry[s.sop_instance_uid], described
        ).items():
            channel = attrs[c] if c < len(attrs) else {}
            key = json.dumps({k: channel.get(k) for k in CHANNEL_KEYS}, sort_keys=True)
            channels.setdefault(key, (channel, []))[1].extend(frames)
    if not channels:
        return [base]
    out = []
    if classic:
        out.append(dataclasses.replace(base, slices=tuple(classic)))
    for key in sorted(channels):
        channel, frames = channels[key]
        attributes = {**base.attributes, **channel}
        out.append(
            dataclasses.replace(
                base,
                attributes=attributes,
                slices=tuple(frames),
                paths={
                    uid: p
                    for uid, p in base.paths.items()
                    if any(f.sop_instance_uid == uid for f in frames)
                },
                # Named by what the channel is, not by its place among the channels received
                # so far: a job's plan names the same frames whatever arrives later.
                part="#" + hashlib.sha256(key.encode()).hexdigest()[:12],
            )
        )
    return out
