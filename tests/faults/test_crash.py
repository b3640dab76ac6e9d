"""Crash trials: ``aircon serve`` is SIGKILLed at every crash point and from outside (mid-
association, during inference, from the destination during its C-STORE, at a random instant),
restarted without faults, and the senders retry their broken sends. Afterwards nothing
acknowledged is lost, every study is delivered, and the destination holds one RTSTRUCT per study.

Some trials send two studies at once, kill the gateway a second time during its recovery, or
retry the send only seconds after the restart. Each trial starts the gateway two or three times
(~3 s each on 2 cores) and runs the harness's quick python model; one runs the real nnU-Net demo
model (its load takes ~20 s). With one sender, a receive crash point must fire at the instance it
names (the sender saw n - 1 acknowledged before ``receive.before_ack``, n after
``receive.after_ack``). ``tests/faults/harness.py`` says what a trial does and checks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.harness import (
    CRASH_POINTS,
    EXTERNAL,
    NNUNET_MODEL,
    CrashHarness,
    Fault,
    write_template,
)

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Trial:
    fault: Fault
    studies: int = 1  # sent concurrently
    second: Fault | None = None  # a second kill, during the recovery
    resend_delay_s: float = 0.0  # the sender retries this long after the restart
    model: str | None = None  # None: the harness's quick python model

    @property
    def name(self) -> str:
        at = f"{self.fault.delay_s:g}s" if self.fault.where == "external.delay" else self.fault.n
        name = f"{self.fault.where}-{at}-x{self.studies}"
        if self.second is not None:
            name += f"-then-{self.second.where}-{self.second.n}"
        if self.resend_delay_s:
            name += f"-resend-after-{self.resend_delay_s:g}s"
        return name + (f"-{self.model}" if self.model else "")


TRIALS = [
    Trial(Fault("receive.before_ack", 5)),
    Trial(Fault("receive.before_ack", 24)),  # the study's last instance
    Trial(Fault("receive.after_ack", 10)),
    Trial(Fault("receive.after_ack", 30), 2),  # in the second study's association
    Trial(Fault("job.queued", 1)),
    Trial(Fault("job.segment", 2), 2),
    Trial(Fault("job.segment", 1), second=Fault("job.segment", 1)),  # twice in inference
    Trial(Fault("deliver.before_send", 1)),
    Trial(Fault("deliver.after_accept", 1), 2),
    Trial(Fault("external.after_acks", 12)),  # mid-association
    Trial(Fault("external.after_acks", 20), 2),  # both associations open
    Trial(Fault("external.after_acks", 6), resend_delay_s=6.0),  # a late retry: gaps wait
    # Killed mid-association, then again while redelivering after the restart.
    Trial(Fault("external.after_acks", 8), second=Fault("deliver.before_send", 1)),
    Trial(Fault("external.inference", 2), 2),  # the second job's model runs
    Trial(Fault("node.on_store", 1)),  # the destination, during its C-STORE
    Trial(Fault("external.delay", delay_s=round(random.Random(20261128).uniform(0.5, 6.0), 2)), 2),
    Trial(Fault("external.inference", 1), model=NNUNET_MODEL),  # the real nnU-Net model runs
]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashHarness]:
    root: Path = tmp_path_factory.mktemp("faults")
    yield CrashHarness(root, write_template(root / "template"))


@pytest.mark.slow  # 8-30 s a trial (two or three gateway starts), 17 trials
@pytest.mark.parametrize("trial", TRIALS, ids=[t.name for t in TRIALS])
def test_crash_trial(harness: CrashHarness, trial: Trial) -> None:
    result = harness.run(
        trial.name,
        trial.fault,
        trial.studies,
        second=trial.second,
        resend_delay_s=trial.resend_delay_s,
        model=trial.model,
    )
    print(result.report())
    assert result.reached, result.report()
    assert not result.lost, result.report()
    assert not result.undelivered, result.report()
    assert not result.duplicated, result.report()
    assert not result.misplaced, result.report()


def test_every_fault_is_tried() -> None:
    tried = {t.fault.where for t in TRIALS}
    assert tried == set(CRASH_POINTS) | set(EXTERNAL)
