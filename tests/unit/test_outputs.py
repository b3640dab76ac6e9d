"""What each destination gets of a job: its ``outputs`` (rtstruct, seg) and the classic copy the
structure set references, in sending order."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config import DestinationConfig
from gateway.job import Artifact, JobOutcome

ARTIFACTS = (
    Artifact(kind="image", path="/out/s/1.dcm", uid="1.1"),
    Artifact(kind="image", path="/out/s/2.dcm", uid="1.2"),
    Artifact(kind="rtstruct", path="/out/rt.dcm", uid="2.1"),
    Artifact(kind="seg", path="/out/seg.dcm", uid="3.1"),
)


@pytest.mark.parametrize(
    ("outputs", "files"),
    [
        (("rtstruct",), ["/out/s/1.dcm", "/out/s/2.dcm", "/out/rt.dcm"]),
        (("seg",), ["/out/s/1.dcm", "/out/s/2.dcm", "/out/seg.dcm"]),
        (("seg", "rtstruct"), ["/out/s/1.dcm", "/out/s/2.dcm", "/out/rt.dcm", "/out/seg.dcm"]),
    ],
)
def test_images_go_first_then_the_outputs_the_destination_takes(outputs, files) -> None:
    assert JobOutcome(artifacts=ARTIFACTS).files_for(outputs, "/out/rt.dcm") == files


def test_a_job_from_before_artifacts_sends_its_rtstruct() -> None:
    assert JobOutcome().files_for(("rtstruct",), "/old/rt.dcm") == ["/old/rt.dcm"]
    assert JobOutcome().files_for(("seg",), "/old/rt.dcm") == []


def test_outputs_are_checked() -> None:
    base = {"ae_title": "TPS", "host": "127.0.0.1", "port": 104}
    assert DestinationConfig.model_validate(base).outputs == ("rtstruct",)
    for bad in ([], ["rtstruct", "rtstruct"], ["nifti"]):
        with pytest.raises(ValidationError):
            DestinationConfig.model_validate({**base, "outputs": bad})
