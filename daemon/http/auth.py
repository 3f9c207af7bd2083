"""Who may ask the site's HTTP server what: pullers, operators, subscribers and Prometheus.

Everything but ``/healthz`` needs a credential. A pull needs the pull token and the signature of the
site its offer named (and the transfer must still be pending); ``/metrics`` takes an operator login,
the metrics bearer token, or nothing when the topology says ``metrics_open``; ``/v1/notices`` takes a
subscriber or operator login; everything else an operator login (HTTP Basic, which a browser asks
for, checked against the site broker's password file).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from daemon.config import Topology
from daemon.credentials import Logins

log = structlog.get_logger()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REALM = 'Basic realm="skyrelay", charset="UTF-8"'


def bearer_ok(request: web.Request, token: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <token>``."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


def basic_login(request: web.Request) -> tuple[str, str] | None:
    """(username, password) of an ``Authorization: Basic`` header, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(given, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class Access:
    """The site's HTTP access rules, applied by :meth:`middleware` to every request."""

    def __init__(self, topology: Topology, logins: Logins | None) -> None:
        self.topology = topology
        self.logins = logins

    def _login_as(self, request: web.Request, accounts: tuple[str, ...]) -> bool:
        login = basic_login(request)
        return login is not None and self.logins is not None and self.logins.check(*login, accounts)

    def _refuse(self, request: web.Request, what: str) -> web.HTTPUnauthorized:
        log.warning("http_unauthorised", peer=request.remote, path=request.path, need=what)
        return web.HTTPUnauthorized(text=f"{what} credential required\n", headers={"WWW-Authenticate": REALM})

    def check(self, request: web.Request) -> None:
        """Raise 401 unless the request carries the credential its path needs."""
        path = request.path
        topology = self.topology
        if path == "/healthz":
            return
        if path.startswith("/v1/transfers/"):
            if not bearer_ok(request, topology.token):
                raise self._refuse(request, "pull token")
            return  # the handler checks the puller's signature against the transfer's receiver
        if path == "/metrics":
            if topology.metrics_open or self._login_as(request, topology.operator_accounts):
                return
            if topology.metrics_token is not None and bearer_ok(request, topology.metrics_token):
                return
            raise self._refuse(request, "operator or metrics")
        if path.startswith("/v1/notices"):
            if self._login_as(request, topology.subscriber_accounts + topology.operator_accounts):
                return
            raise self._refuse(request, "subscriber or operator")
        if not self._login_as(request, topology.operator_accounts):
            raise self._refuse(request, "operator")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp middleware applying :meth:`check`."""
        self.check(request)
        return await handler(request)
