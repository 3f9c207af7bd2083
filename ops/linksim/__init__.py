"""Link simulator: TCP proxies between sites with injectable network faults.

A *link* joins two sites and carries every TCP connection that crosses it: the MQTT connections to the far
site's mailbox and the HTTP pulls from its data server, in both directions. A drill rewrites the topology so
those connections go through the proxies of a `LinkSimulator`; an operator (or a test) then changes a link's
mode and every connection on it feels the fault at once:

- ``up``: transparent byte pump.
- ``cut``: existing connections are reset (RST, not FIN); new ones are accepted and reset at once.
- ``blackhole``: nothing is forwarded or answered, in either direction; bytes are read and discarded, so only
  the endpoints' timeouts reveal the fault. Leaving ``blackhole`` resets the silenced connections so the
  endpoints reconnect instead of resuming a stream with a hole in it.
- ``slow``: a bandwidth cap (Mbit/s, one token bucket per physical direction shared by the link's
  connections) plus an added one-way latency per chunk (a delay line, so latency does not throttle by itself).
- ``flaky``: each connection is reset after an exponentially distributed time (mean ``reset_interval_s``).
- ``corrupt``: one bit is flipped in a forwarded chunk with probability ``corrupt_probability``, only in
  HTTP response bodies (never in headers or chunked-encoding framing, never on MQTT), so framing survives and
  the damage shows up as a checksum mismatch.

The simulator also serves a small JSON control API (``GET /links``, ``GET/POST /links/{name}``) used by
``skyrelay drill``. Run it stand-alone with ``python -m ops.linksim SPEC.json``.

The package: :mod:`~ops.linksim.simulator` (:class:`LinkSimulator`), :mod:`~ops.linksim.link` (a link and
its proxies), :mod:`~ops.linksim.connection` (the byte pumps), :mod:`~ops.linksim.modes` (modes and their
parameters), :mod:`~ops.linksim.pacing` (``slow``), :mod:`~ops.linksim.framing` (``corrupt``),
:mod:`~ops.linksim.control` (the control API), :mod:`~ops.linksim.spec` (proxy specs and link names),
:mod:`~ops.linksim.standalone` (the stand-alone runner).
"""

from __future__ import annotations

from ops.linksim.connection import CHUNK_BYTES, CONNECT_TIMEOUT_S
from ops.linksim.errors import LinkParamsError, LinkSimError, UnknownLinkError
from ops.linksim.link import Link, Proxy
from ops.linksim.modes import DEFAULT_CORRUPT_PROBABILITY, DEFAULT_RESET_INTERVAL_S, LinkMode, LinkState
from ops.linksim.simulator import LinkSimulator
from ops.linksim.spec import ProxyKind, ProxySpec, link_name, resolve_link_name
from ops.linksim.standalone import load_spec, main

__all__ = [
    "CHUNK_BYTES",
    "CONNECT_TIMEOUT_S",
    "DEFAULT_CORRUPT_PROBABILITY",
    "DEFAULT_RESET_INTERVAL_S",
    "Link",
    "LinkMode",
    "LinkParamsError",
    "LinkSimError",
    "LinkSimulator",
    "LinkState",
    "Proxy",
    "ProxyKind",
    "ProxySpec",
    "UnknownLinkError",
    "link_name",
    "load_spec",
    "main",
    "resolve_link_name",
]
