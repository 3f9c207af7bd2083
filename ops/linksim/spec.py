"""What a proxy is and how links and flows are named: ``ProxySpec``, ``link_name``, ``resolve_link_name``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ops.linksim.errors import LinkParamsError

__all__ = ["ProxyKind", "ProxySpec", "flow_names", "link_name", "resolve_link_name"]


ProxyKind = Literal["mqtt", "http"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxySpec:
    """One TCP proxy of a link: connections to ``listen`` are forwarded to ``target``.

    Attributes:
        listen_host: address to listen on, usually 127.0.0.1.
        listen_port: port to listen on; 0 picks a free port (read it from `Proxy.listen_port` after start).
        target_host: host of the real endpoint (a mosquitto broker or an aiohttp data server).
        target_port: port of the real endpoint.
        kind: "mqtt" or "http"; only "http" proxies are subject to ``corrupt``.
        direction: which way connections cross the link, written ``"summit->base"`` (client site first;
            ``→`` also accepted). It names the byte counters and the bandwidth buckets.
    """

    listen_host: str
    listen_port: int
    target_host: str
    target_port: int
    kind: ProxyKind
    direction: str

    def __post_init__(self) -> None:
        if self.kind not in ("mqtt", "http"):
            raise LinkParamsError(f"proxy kind must be 'mqtt' or 'http', not {self.kind!r}")
        for name, port in (("listen_port", self.listen_port), ("target_port", self.target_port)):
            if not 0 <= port <= 65535:
                raise LinkParamsError(f"{name} out of range: {port}")
        if self.target_port == 0:
            raise LinkParamsError("target_port must not be 0")


def link_name(a: str, b: str) -> str:
    """Canonical name of the link between sites ``a`` and ``b``: the two names sorted, joined by ``-``.

    ``link_name("summit", "base") == link_name("base", "summit") == "base-summit"``. The simulator accepts
    any name for a link; `resolve_link_name` matches either site order against the names it knows.
    """
    first, second = sorted((a, b))
    return f"{first}-{second}"


def resolve_link_name(requested: str, known: Sequence[str]) -> str | None:
    """Find ``requested`` among ``known`` link names, accepting the sites in either order.

    ``"base-summit"`` resolves to a link named ``"summit-base"`` and vice versa. Site names may themselves
    contain ``-``: every split point is tried. Returns None when nothing matches.
    """
    if requested in known:
        return requested
    for index, char in enumerate(requested):
        if char != "-":
            continue
        a, b = requested[:index], requested[index + 1 :]
        if a and b and f"{b}-{a}" in known:
            return f"{b}-{a}"
    return None


def flow_names(direction: str) -> tuple[str, str]:
    """Names of the physical byte flows of a proxy: (client to target, target to client)."""
    for separator in ("->", "→"):
        client_site, sep, server_site = direction.partition(separator)
        if sep and client_site.strip() and server_site.strip():
            a, b = client_site.strip(), server_site.strip()
            return f"{a}->{b}", f"{b}->{a}"
    return f"{direction}:request", f"{direction}:response"
