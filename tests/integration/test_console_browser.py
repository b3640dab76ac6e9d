"""The console in a real browser (Debian's Chromium, driven by Selenium through Debian's
chromedriver; nothing downloaded), watching a real gateway: a study sent with dcmtk
``storescu`` appears and its job goes to done; the job page shows the contour preview and the
stage times; a destination that stops is shown *down* within two echo intervals, the alert
reaches a local SMTP server and a local webhook, *resolved* follows when it is back; the
operator resends a parked delivery from the job page and the destination receives it.
A screenshot of every page is saved under test-artifacts/console/."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.demo.node import ReceivingNode
from gateway.demo.phantom import make_phantom, write_dicom_series
from tests.conftest import wait_for
from tests.console_client import PASSWORD, add_user
from tests.sinks import Mailbox, Webhook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ECHO_S = 2.0
# Patient data written into the study: must appear on no page and in no alert.
NAME, PATIENT_ID = "Brightwater^Olwen Testcase", "PID-CONSOLE-93X1"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/install.sh --dev)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-gpu",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _text(driver: Any) -> str:
    return str(driver.find_element("tag name", "body").text)


def _open(driver: Any, url: str) -> str:
    driver.get(url)
    return _text(driver)


def _jobs(driver: Any, url: str) -> dict[int, str]:
    """Job id -> state as the jobs page shows them."""
    from selenium.webdriver.common.by import By

    driver.get(url + "/jobs")
    rows = driver.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]")
    return {int(r.get_attribute("data-job")): r.get_attribute("data-state") for r in rows}


def _study(folder: Path, seed: int) -> Path:
    write_dicom_series(
        make_phantom(seed), folder, seed=seed, patient_name=NAME, patient_id=PATIENT_ID
    )
    return folder


def test_an_operator_watches_a_study_a_destination_outage_and_resends(
    make_gateway, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    node = ReceivingNode(tmp_path / "planning", ae_title="ORTHANC")
    node.start()
    with Mailbox() as mail, Webhook() as hook:
        gw = make_gateway(
            node.port,
            monitor={"echo_interval_s": ECHO_S, "echo_timeout_s": 2},
            delivery={"max_attempts": 1, "backoff_base_s": 0.5, "backoff_max_s": 1},
            alerts={
                "sinks": [
                    f"mailto://127.0.0.1:{mail.port}?from=aircon@example.org"
                    f"&to=physics@example.org",
                    f"json://127.0.0.1:{hook.port}/hook",
                ],
                "check_interval_s": 1,
                "resend_minutes": 60,
                "conditions": {"destination_down_minutes": 0.05},
            },
            http={"refresh_s": 0},
        )
        add_user(gw, "olga", "operator")
        add_user(gw, "ada", "admin")
        gw.start()
        try:
            url = gw.console_url
            d = browser
            d.get(url + "/jobs")
            assert "/login" in d.current_url
            _shot(d, "login")
            d.find_element(By.ID, "username").send_keys("olga")
            d.find_element(By.ID, "password").send_keys(PASSWORD)
            d.find_element(By.ID, "signin").click()
            wait_for(lambda: d.current_url.endswith("/jobs"), 10, what="signed in")

            # 1. A study sent with storescu appears; its job goes to done.
            assert gw.storescu(_study(tmp_path / "s1", 811)).returncode == 0
            done = wait_for(
                lambda: [j for j, state in _jobs(d, url).items() if state == "done"],
                300,
                interval=2,
                what="the job done on the jobs page",
            )
            _shot(d, "jobs")
            job_id = done[0]
            d.get(f"{url}/jobs/{job_id}")
            img = d.find_element(By.ID, "preview")
            wait_for(
                lambda: d.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth", img
                ),
                10,
                what="the preview image loaded",
            )
            timings = d.find_element(By.ID, "timings").text
            assert "segment" in timings and "rtstruct" in timings and "total" in timings
            assert "delivered" in d.find_element(By.ID, "deliveries").text
            _shot(d, "job")
            for page in (
                "",
                "studies",
                "destinations",
                "peers",
                "models",
                "qa",
                "audit",
                "self-test",
            ):
                body = _open(d, f"{url}/{page}")
                assert "500" not in d.title and "Internal Server Error" not in body, page
                assert NAME.split("^")[0] not in body and PATIENT_ID not in body, page
                _shot(d, page or "overview")

            # 2. The destination stops: down within two echo intervals, alert mailed and
            #    posted; back up: resolved.
            node.stop()
            stopped = time.monotonic()
            wait_for(
                lambda: "down" in _open(d, url + "/destinations").split("planning", 1)[-1][:200],
                2 * ECHO_S + 2,
                interval=0.5,
                what="planning shown down",
            )
            assert time.monotonic() - stopped <= 2 * ECHO_S + 2
            _shot(d, "destination-down")
            wait_for(lambda: mail.messages and hook.posts, 60, what="the alert sent")
            assert any("planning" in m for m in mail.messages)
            assert any("planning" in json.dumps(p) for p in hook.posts)
            node.start()
            wait_for(
                lambda: any("RESOLVED" in m.upper() for m in mail.messages[1:]),
                60,
                what="the resolved mail",
            )
            wait_for(
                lambda: any("resolved" in json.dumps(p).lower() for p in hook.posts[1:]),
                30,
                what="the resolved webhook",
            )
            for text in [*mail.messages, *map(json.dumps, hook.posts)]:
                assert PATIENT_ID not in text and "Brightwater" not in text

            # 3. A parked delivery, resent by the operator from the job page.
            node.mode = "fail"
            before = len(node.receipts)
            assert gw.storescu(_study(tmp_path / "s2", 812)).returncode == 0
            failed = wait_for(
                lambda: [j for j, state in _jobs(d, url).items() if state == "failed"],
                300,
                interval=2,
                what="the second job failed (delivery parked)",
            )
            second = failed[0]
            d.get(f"{url}/jobs/{second}")
            assert "failed" in d.find_element(By.ID, "deliveries").text
            node.mode = "ok"
            d.find_element(By.ID, "resend").click()
            wait_for(lambda: len(node.receipts) > before, 60, what="the resent RTSTRUCT received")
            assert "queued again" in d.find_element(By.ID, "flash").text
            wait_for(
                lambda: "delivered" in _open(d, f"{url}/jobs/{second}"),
                30,
                what="the delivery shown delivered",
            )
            _shot(d, "job-resent")
            audit = gw.store().audit_page(text="olga", limit=None)[0]
            assert {"ok", "job resent"} <= {a.outcome for a in audit}

            # 4. The admin's page (accounts), for the screenshots of every page.
            d.find_element(By.ID, "logout").click()
            wait_for(lambda: "/login" in d.current_url, 10, what="signed out")
            d.get(url + "/login?next=%2Fusers")
            d.find_element(By.ID, "username").send_keys("ada")
            d.find_element(By.ID, "password").send_keys(PASSWORD)
            d.find_element(By.ID, "signin").click()
            wait_for(lambda: d.current_url.endswith("/users"), 10, what="the users page")
            users = d.find_element(By.ID, "users").text
            assert "olga" in users and "operator" in users and "ada" in users
            _shot(d, "users")
        finally:
            node.stop()
            gw.stop()
    shutil.rmtree(tmp_path / "s1", ignore_errors=True)
