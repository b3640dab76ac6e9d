"""Access control of the console, route by route: every route the app has is enumerated, so a
route added later without a guard fails here. Anonymous requests are sent to the login page
(pages) or refused with 401 (actions); a viewer gets 403 on every action; a POST without the
session's CSRF token is refused; wrong passwords lock an account; all of it is audited."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.config import parse_config
from gateway.console.app import all_routes, create_app
from gateway.console.security import Passwords
from gateway.db.database import Store

MODELS = Path(__file__).resolve().parents[2] / "models"
PASSWORD = "a long enough secret"
PUBLIC = {"/login", "/static"}
PARAMS = {"job_id": "1", "alert_id": "1", "name": "viewer", "incident_id": "1"}


class Ops:
    """The running gateway's side, recorded (the console's seam)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any) -> Any:
            self.calls.append((name, args))
            return True if name == "scp_listening" else (1 if name == "self_test" else "ok")

        return call


def _config(tmp_path: Path, **http: Any) -> Any:
    raw = {
        "paths": {"models": str(MODELS), "spool": str(tmp_path / "spool")},
        "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "destinations": {"planning": {"ae_title": "PLAN", "host": "127.0.0.1", "port": 104}},
        "http": {"auth": {"max_failures": 10, "lockout_minutes": 0.02}, **http},
    }
    return parse_config(raw, tmp_path)


@pytest.fixture
def console(tmp_path: Path) -> tuple[Any, Store, Ops]:
    cfg = _config(tmp_path, metrics_token="scrape-token")
    store = Store(cfg.database.url)
    hashed = Passwords().hash(PASSWORD)
    for role in ("viewer", "operator", "admin"):
        store.add_user(role, role, hashed, time.time())
    ops = Ops()
    return create_app(cfg, store, ops), store, ops


def _path(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: PARAMS.get(m.group(1), "1"), path)


def _csrf(client: TestClient, page: str = "/login") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(page).text)
    assert found, f"no CSRF field on {page}"
    return found.group(1)


def login(client: TestClient, name: str, password: str = PASSWORD) -> Any:
    return client.post(
        "/login",
        data={"csrf": _csrf(client), "username": name, "password": password, "next": "/"},
        follow_redirects=False,
    )


def _guard(endpoint: Any) -> tuple[str, str]:
    return getattr(endpoint, "guard", ("", ""))


def _audit(store: Store, event: str) -> list[tuple[str, str]]:
    rows, _ = store.audit_page(event=event, limit=None)
    return [(r.outcome, r.detail) for r in rows]


def test_every_route_has_a_guard_and_anonymous_requests_get_none_of_it(console: Any) -> None:
    app, _, ops = console
    client = TestClient(app)
    routes = all_routes(app)
    assert len(routes) >= 12
    for path, methods, endpoint in routes:
        kind, _ = _guard(endpoint)
        if path in PUBLIC:
            continue
        assert kind in ("page", "action", "probe"), f"{path} has no guard"
        url = _path(path)
        for method in methods - {"HEAD"}:
            r = client.request(method, url, follow_redirects=False)
            if kind == "page":
                assert r.status_code == 303, (method, path)
                assert r.headers["location"].startswith("/login?next="), path
            elif kind == "action":
                assert r.status_code == 401, (method, path)
            else:  # a probe with a token configured
                assert r.status_code == 401, (method, path)
                assert r.headers.get("www-authenticate") == "Bearer"
    assert not ops.calls  # nothing reached the gateway


def test_a_viewer_gets_403_on_every_action_and_it_is_audited(console: Any) -> None:
    app, store, ops = console
    client = TestClient(app)
    assert login(client, "viewer").status_code == 303
    token = _csrf(client, "/jobs")
    refused = 0
    for path, _methods, endpoint in all_routes(app):
        kind, role = _guard(endpoint)
        if kind != "action" or role == "viewer":
            continue
        r = client.post(_path(path), data={"csrf": token}, follow_redirects=False)
        assert r.status_code == 403, path
        refused += 1
    assert refused >= 5
    assert not ops.calls
    assert sum(o == "refused: role" for o, _ in _audit(store, "action")) == refused


def test_a_post_without_or_with_a_wrong_csrf_token_is_refused(console: Any) -> None:
    app, store, ops = console
    client = TestClient(app)
    assert login(client, "admin").status_code == 303
    n = 0
    for path, _methods, endpoint in all_routes(app):
        if _guard(endpoint)[0] != "action":
            continue
        for data in ({}, {"csrf": "x" * 43}):
            r = client.post(_path(path), data=data, follow_redirects=False)
            assert r.status_code == 403, path
            n += 1
    assert not ops.calls
    assert sum(o == "refused: csrf" for o, _ in _audit(store, "action")) == n
    # The login form itself is CSRF-checked too.
    r = client.post("/login", data={"username": "admin", "password": PASSWORD})
    assert r.status_code == 403


def test_roles_admin_pages_for_admins_actions_for_operators(console: Any) -> None:
    app, store, ops = console
    operator = TestClient(app)
    login(operator, "operator")
    assert operator.get("/users").status_code == 403
    assert operator.get("/jobs").status_code == 200
    token = _csrf(operator, "/jobs")
    r = operator.post("/jobs/7/resend", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 303 and ("resend", (7, "operator")) in ops.calls
    assert any("by operator" in d for o, d in _audit(store, "action") if o == "job resent")
    admin = TestClient(app)
    login(admin, "admin")
    assert "operator" in admin.get("/users").text


def test_ten_wrong_passwords_lock_the_account_for_the_configured_time(console: Any) -> None:
    app, store, _ = console
    client = TestClient(app)
    for _ in range(9):
        assert login(client, "operator", "wrong password!").status_code == 401
    r = login(client, "operator", "wrong password!")
    # The same answer as any failure: it tells nobody whether the name exists or is locked.
    assert r.status_code == 401 and "Sign-in failed" in r.text
    assert (store.user("operator").locked_until or 0) > time.time()
    assert login(client, "operator").status_code == 401  # even the right password, for now
    outcomes = [o for o, d in _audit(store, "login") if "operator" in d]
    assert outcomes.count("failed") == 9 and outcomes.count("locked") == 1
    assert "refused: locked" in outcomes
    time.sleep(1.3)  # lockout_minutes 0.02 = 1.2 s
    assert login(client, "operator").status_code == 303
    assert [o for o, _ in _audit(store, "login")][0] == "ok"


def test_a_lock_by_someone_else_does_not_end_a_session_but_sign_out_and_password_do(
    console: Any,
) -> None:
    app, store, _ = console
    mine = TestClient(app)
    login(mine, "operator")
    copied = TestClient(app, cookies=dict(mine.cookies))
    attacker = TestClient(app)
    for _ in range(10):
        login(attacker, "operator", "guess guess guess")
    assert (store.user("operator").locked_until or 0) > time.time()
    assert mine.get("/jobs", follow_redirects=False).status_code == 200  # still working
    token = _csrf(mine, "/jobs")
    mine.post("/logout", data={"csrf": token}, follow_redirects=False)
    # A copy of the cookie taken before the sign-out is worth nothing after it.
    assert copied.get("/jobs", follow_redirects=False).status_code == 303
    viewer = TestClient(app)
    login(viewer, "viewer")
    store.update_user("viewer", time.time(), password_hash=Passwords().hash("a new password 9"))
    assert viewer.get("/jobs", follow_redirects=False).status_code == 303


def test_large_or_multipart_forms_are_refused_before_they_are_read(console: Any) -> None:
    app, _, ops = console
    client = TestClient(app)
    login(client, "operator")
    token = _csrf(client, "/jobs")
    big = client.post("/jobs/1/resend", data={"csrf": token, "x": "y" * 70000})
    assert big.status_code == 413
    multipart = client.post("/jobs/1/resend", data={"csrf": token}, files={"f": b"0" * 10})
    assert multipart.status_code == 415
    assert client.get("/jobs/99999999999999999999999").status_code == 404
    assert not ops.calls


def test_unknown_users_and_disabled_accounts_cannot_sign_in(console: Any) -> None:
    app, store, _ = console
    client = TestClient(app)
    assert login(client, "nobody").status_code == 401
    assert "unknown user" in [o for o, _ in _audit(store, "login")]
    store.update_user("viewer", time.time(), disabled=True)
    assert login(client, "viewer").status_code == 401


def test_a_session_ends_when_the_account_is_disabled_and_on_sign_out(console: Any) -> None:
    app, store, _ = console
    client = TestClient(app)
    login(client, "operator")
    assert client.get("/jobs").status_code == 200
    token = _csrf(client, "/jobs")
    assert client.post("/logout", data={"csrf": token}, follow_redirects=False).status_code == 303
    assert client.get("/jobs", follow_redirects=False).status_code == 303
    login(client, "operator")
    store.update_user("operator", time.time(), disabled=True)
    assert client.get("/jobs", follow_redirects=False).status_code == 303


def test_cookie_flags_and_no_open_redirect(console: Any, tmp_path: Path) -> None:
    app, _, _ = console
    client = TestClient(app)
    r = client.post(
        "/login",
        data={
            "csrf": _csrf(client),
            "username": "viewer",
            "password": PASSWORD,
            "next": "//evil.example/x",
        },
        follow_redirects=False,
    )
    assert r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    page = client.get("/jobs")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    # Under TLS the cookie is Secure.
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("-")
    cfg = _config(
        tmp_path, host="0.0.0.0", tls={"certificate": "cert.pem", "private_key": "key.pem"}
    )
    secure = TestClient(create_app(cfg, Store(cfg.database.url), Ops()), base_url="https://x")
    r = login(secure, "viewer")
    assert "secure" in r.headers["set-cookie"].lower()


def test_the_console_beyond_loopback_needs_tls(tmp_path: Path) -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="HTTPS"):
        _config(tmp_path, host="0.0.0.0")


def test_text_from_the_network_is_escaped_on_the_pages(console: Any) -> None:
    """Series descriptions, reasons and AE titles come from senders: shown as text, never as
    markup (templates are autoescaped whatever their file extension)."""
    from gateway.db.records import InstanceRecord

    app, store, _ = console
    hostile = '<script>alert("x")</script>'
    rec = InstanceRecord(
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        path="/nonexistent",
        series_attributes={"SeriesDescription": hostile},
        geometry={},
    )
    store.record_instance(rec, "EVIL<b>", "AIRCON")
    store.set_study_reason("1.2.3", hostile)
    client = TestClient(app)
    login(client, "viewer")
    page = client.get("/studies").text
    assert hostile not in page and "&lt;script&gt;" in page
    assert "EVIL<b>" not in page
