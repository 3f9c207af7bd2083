"""Listening ports for brokers, daemons and link proxies: distinct and outside the ephemeral range."""

from __future__ import annotations

import socket

from ops.broker import _ephemeral_range, free_port


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    """No outgoing connection can take a picked port before it is bound, and none is handed out twice."""
    low, _high = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < low for port in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[-1]))


def test_a_port_in_use_is_never_handed_out() -> None:
    """A port some other listener holds is skipped."""
    first = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", first + 1))
        held.listen()
        assert free_port() != first + 1
