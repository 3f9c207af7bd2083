"""Message dispatch: each message from the site's own mailbox goes to the part that handles its kind.

A malformed or misaddressed message is rejected with a ``bad_message`` problem; it never ends a task.
"""

from __future__ import annotations

import structlog

from daemon.custody import CustodyRelay
from daemon.receiving import Receiver
from daemon.report import Reporter
from daemon.sending.router import Router
from daemon.sending.sender import Sender
from protocol import topics
from protocol.control import RouteControl
from protocol.custody import Custody
from protocol.errors import ProtocolError
from protocol.transfer import Ack, Offer

log = structlog.get_logger()


class Dispatcher:
    """Routes offers to the receiver, acks to the sender, custody to the relay, control to the router."""

    def __init__(
        self,
        site: str,
        reporter: Reporter,
        sender: Sender,
        custody: CustodyRelay,
        receiver: Receiver | None,
        router: Router | None,
    ) -> None:
        self.site = site
        self.reporter = reporter
        self.sender = sender
        self.custody = custody
        self.receiver = receiver
        self.router = router

    async def on_message(self, topic: str, payload: bytes) -> None:
        """Dispatch one message from the site's own mailbox; reject anything malformed."""
        kind = "?"
        try:
            site, kind = topics.parse_site(topic)
            if site != self.site:
                raise ProtocolError(f"addressed to {site}, this is {self.site}", field="topic")
            if kind == "offer":
                if self.receiver is None:
                    raise ProtocolError(f"{self.site} takes no offers", field="topic")
                await self.receiver.on_offer(Offer.from_json(payload))
            elif kind == "ack":
                await self.sender.on_ack(Ack.from_json(payload))
            elif kind == "custody":
                await self.custody.on_custody(Custody.from_json(payload))
            elif kind == "control":
                if self.router is None:
                    raise ProtocolError(f"route control goes to the summit, not {self.site}", field="command")
                await self.router.control(RouteControl.from_json(payload))
        except ProtocolError as exc:
            await self.reporter.problem(
                "bad_message",
                f"rejected {kind} message: {exc}",
                topic=topic,
                field=exc.field,
                payload_bytes=len(payload),
                payload_preview=payload[:160].decode("utf-8", "replace"),
            )
