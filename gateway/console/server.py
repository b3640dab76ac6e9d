"""The console's HTTP server: uvicorn in a thread of the gateway process."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn

from gateway.config import HttpConfig
from gateway.errors import GatewayError

log = logging.getLogger(__name__)


class ConsoleServer:
    """Serve an ASGI app on ``http.host``/``http.port`` (HTTPS with ``http.tls``)."""

    def __init__(self, app: Any, http: HttpConfig):
        tls = http.tls
        self.scheme = "https" if tls else "http"
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=http.host,
                port=http.port,
                log_level="warning",
                access_log=False,  # no query strings in logs; actions are in the audit
                lifespan="off",
                server_header=False,
                ssl_certfile=str(tls.certificate) if tls else None,
                ssl_keyfile=str(tls.private_key) if tls else None,
                timeout_graceful_shutdown=3,
            )
        )
        self._thread: threading.Thread | None = None
        self.port = http.port
        self.host = http.host

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        self._thread = threading.Thread(target=self._server.run, name="console", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise GatewayError(
                    f"the console could not listen on {self.host}:{self.port} (port in use?)"
                )
            time.sleep(0.02)
        for server in self._server.servers:
            for sock in server.sockets:
                self.port = sock.getsockname()[1]
                break
        log.info("console on %s", self.url)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
