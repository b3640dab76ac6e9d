"""The operator's web console: server-rendered pages (Starlette + Jinja2) over the database,
``/metrics``, ``/healthz`` and ``/readyz``, with local accounts, roles, signed session cookies and
CSRF-checked actions. Built by :func:`gateway.console.app.create_app`, served by
:class:`gateway.console.server.ConsoleServer` inside ``aircon serve``."""
