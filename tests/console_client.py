"""Signing in to a running gateway's console over HTTP, as a browser would (for the tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import httpx

PASSWORD = "a test password 42"


def add_user(gw: Any, name: str, role: str, password: str = PASSWORD) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "-c",
            str(gw.config_path),
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=gw.work,
    )
    assert out.returncode == 0, out.stderr


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def signed_in(gw: Any, name: str, role: str) -> httpx.Client:
    """A client with a session of a new account ``name`` of ``role``."""
    add_user(gw, name, role)
    client = httpx.Client(base_url=gw.console_url, timeout=30)
    token = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"csrf": token, "username": name, "password": PASSWORD})
    assert r.status_code == 303, r.text
    return client


def html_pages(client: httpx.Client, job_ids: list[int]) -> dict[str, str]:
    """Every page of the console (each job's page for ``job_ids``) -> its HTML; the routes come
    from the app itself, so a page added later is covered."""
    from gateway.console.app import routes

    out: dict[str, str] = {}
    for route in routes():
        path = getattr(route, "path", "")
        methods = getattr(route, "methods", None) or set()
        guard = getattr(getattr(route, "endpoint", None), "guard", ("", ""))
        if "GET" not in methods or guard[0] != "page" or path.endswith(".png"):
            continue
        urls = (
            [path]
            if "{" not in path
            else [re.sub(r"\{job_id(:int)?\}", str(j), path) for j in job_ids if "{job_id" in path]
        )
        for url in urls:
            r = client.get(url)
            assert r.status_code == 200, (url, r.status_code)
            if r.headers.get("content-type", "").startswith("text/html"):
                out[url] = r.text
    return out
