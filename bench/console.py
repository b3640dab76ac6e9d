"""Console benchmark: page render times with a large database, and the reception rate with the
console open and refreshing.

    python bench/console.py [--jobs 10000] [--rounds 20] [--instances 300] [--sends 3]

1. Pages: a SQLite database filled as the pipeline leaves it after ``--jobs`` studies (the
   filler of bench/console_metrics.py), the console app (gateway.console.app.create_app) driven
   in process by Starlette's TestClient, signed in as an admin; median and range over
   ``--rounds`` requests of the overview, the jobs list (first page, and filtered), the studies
   list and /metrics. Goals: overview and jobs list under 200 ms, /metrics under 50 ms.
2. Reception: a real ``aircon serve`` (no rules: reception only) receives ``--instances``
   instances from dcmtk ``storescu`` over one association, ``--sends`` times without and
   ``--sends`` times each with one signed-in client fetching the overview, the jobs and
   studies pages and /metrics every 10 s (a browser at the default http.refresh_s) and with
   four clients doing so every second (a control room), in turn; the ratio of the median rates
   to the rate without the console open (goal: 1.0, i.e. unchanged).

Loopback only, free ports; everything is removed afterwards. Reports the CPU count.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import httpx  # noqa: E402
from console_metrics import Listening, config, setup  # noqa: E402
from ingest import dcmtk_env, write_series  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from gateway.console.app import create_app  # noqa: E402
from gateway.console.security import Passwords  # noqa: E402
from gateway.db.database import Store  # noqa: E402
from gateway.demo.launcher import Gateway, write_config  # noqa: E402

PASSWORD = "bench password 123"
PAGES = ("/", "/jobs", "/jobs?state=failed", "/studies", "/metrics")


class Ops(Listening):
    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


def _login(client: Any) -> None:
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert token
    r = client.post(
        "/login",
        data={"csrf": token.group(1), "username": "bench", "password": PASSWORD},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text


def pages(jobs: int, rounds: int) -> None:
    rng = random.Random(2026)
    with tempfile.TemporaryDirectory(prefix="aircon-bench-") as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'aircon.db'}")
        setup(store, jobs, rng)
        store.add_user("bench", "admin", Passwords().hash(PASSWORD), time.time())
        client = TestClient(create_app(config(Path(tmp)), store, Ops()))
        _login(client)
        for page in PAGES:
            client.get(page)  # warm: templates compiled, exporter's first read
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                r = client.get(page)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (page, r.status_code)
            goal = 50 if page == "/metrics" else 200
            med = statistics.median(times)
            print(
                f"{page:<20} median {med:6.1f} ms  (min {min(times):.1f}, max {max(times):.1f})"
                f"  {len(r.content) / 1024:5.0f} KB  goal < {goal} ms: "
                + ("met" if med < goal else "MISSED")
            )


def _send(port: int, files: list[Path]) -> float:
    t = time.perf_counter()
    res = subprocess.run(
        [
            "storescu",
            "-aec",
            "AIRCON",
            "-aet",
            "STORESCU",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return time.perf_counter() - t


def _refresh(url: str, stop: threading.Event, count: list[int], every_s: float) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        _login(client)
        while not stop.is_set():
            for page in ("/", "/jobs", "/studies", "/metrics"):
                client.get(page).raise_for_status()
                count[0] += 1
            stop.wait(every_s)


def reception(instances: int, sends: int) -> None:
    with tempfile.TemporaryDirectory(prefix="aircon-bench-") as tmp:
        root = Path(tmp)
        (root / "series").mkdir()
        from gateway.demo.launcher import free_port

        cfg_path = write_config(root / "gw", free_port(), overrides={"rules": []})
        files = write_series(root / "series", instances)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "-c",
                str(cfg_path),
                "user",
                "add",
                "bench",
                "--role",
                "viewer",
                "--password-stdin",
            ],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            check=True,
        )
        loads = {"without": (0, 0.0), "1 x 10 s": (1, 10.0), "4 x 1 s": (4, 1.0)}
        rates: dict[str, list[float]] = {m: [] for m in loads}
        with Gateway(cfg_path) as gw:
            for k in range(sends):
                for mode, (clients, every_s) in loads.items():
                    # Each send is a new study: new UIDs, so every round stores all instances.
                    folder = root / f"s{k}-{clients}"
                    folder.mkdir()
                    batch = write_series(folder, instances)
                    stop, count, threads = threading.Event(), [0], []
                    if clients:
                        threads = [
                            threading.Thread(
                                target=_refresh, args=(gw.console_url, stop, count, every_s)
                            )
                            for _ in range(clients)
                        ]
                        for t in threads:
                            t.start()
                        time.sleep(1.5)
                    seconds = _send(gw.port, batch)
                    stop.set()
                    for t in threads:
                        t.join()
                    shutil.rmtree(folder)
                    rates[mode].append(instances / seconds)
                    extra = f", {count[0]} console requests" if mode == "with" else ""
                    print(
                        f"send {k + 1} {mode:<7} console: {instances / seconds:6.1f} inst/s{extra}"
                    )
        del files
        med = {m: statistics.median(v) for m, v in rates.items()}
        for mode in loads:
            print(
                f"reception median, console {mode:<8}: {med[mode]:6.1f} inst/s, ratio to "
                f"without {med[mode] / med['without']:.2f}"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--instances", type=int, default=300)
    ap.add_argument("--sends", type=int, default=3)
    args = ap.parse_args()
    print(f"CPU cores: {os.cpu_count()}")
    pages(args.jobs, args.rounds)
    if shutil.which("storescu"):
        reception(args.instances, args.sends)
    else:
        print("reception: skipped (dcmtk's storescu not found)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
