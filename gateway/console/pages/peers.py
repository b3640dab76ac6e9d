"""Peers: the senders allowed to associate (AE title, address pin, TLS, QA peer), when each
last associated, and the associations the SCP rejected (from the audit)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console.web import console, page
from gateway.db.tables import UserRow


@page("viewer")
def peers(request: Request, user: UserRow) -> Response:
    c = console(request)
    last, rejected = c.store.peer_activity()
    qa_peers = set(c.cfg.qa.peers)
    allowed = [
        {
            "ae_title": p.ae_title,
            "host": p.host or "",
            "require_tls": p.require_tls,
            "qa": p.ae_title in qa_peers,
            "last": last.get(p.ae_title.strip()),
        }
        for p in c.cfg.peers
    ]
    known = {p.ae_title.strip() for p in c.cfg.peers}
    return c.render(
        request,
        "peers.html.j2",
        title="Peers",
        active="/peers",
        user=user,
        refresh=True,
        peers=allowed,
        others=sorted((ae, t) for ae, t in last.items() if ae not in known),
        rejected=rejected,
    )


ROUTES = [Route("/peers", peers, methods=["GET"], name="peers")]
