"""Sending: the sender (timers, retries, backoff), the router (custody deadlines, failover), routes (breakers).

- :mod:`~daemon.sending.sender` — :class:`Sender`: one channel per peer; an item stays until its ack matches;
- :mod:`~daemon.sending.items` — the Offer and custody items and what their acks journal;
- :mod:`~daemon.sending.routes` — :class:`RouteTable`, breakers and the operator's :class:`RoutePolicy`;
- :mod:`~daemon.sending.router` — the summit's :class:`Router`: route choice, failover, failback.
"""
