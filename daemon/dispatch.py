"""Message dispatch: each message from the site's own mailbox is verified, then goes to the part for its kind.

A message must be sealed by a signer allowed to send its kind here and name that signer as its
sender; an unsigned or wrongly signed one is rejected with a ``bad_signature`` problem, a malformed
or misaddressed one with ``bad_message``. Nothing it carries changes any state, and no task ends.
"""

from __future__ import annotations

from typing import Any

import structlog

from daemon.custody import CustodyRelay
from daemon.logcontext import bound_file
from daemon.receiving import Receiver
from daemon.report import Reporter
from daemon.sending.router import ControlOutcome, Router
from daemon.sending.sender import Sender
from daemon.trust import Trust
from protocol import topics
from protocol.control import RouteControl
from protocol.custody import Custody
from protocol.errors import ProtocolError
from protocol.signing import SignatureError
from protocol.transfer import Ack, Offer

log = structlog.get_logger()


class Dispatcher:
    """Routes offers to the receiver, acks to the sender, custody to the relay, control to the router."""

    def __init__(
        self,
        site: str,
        trust: Trust,
        reporter: Reporter,
        sender: Sender,
        custody: CustodyRelay,
        receiver: Receiver | None,
        router: Router | None,
    ) -> None:
        self.site = site
        self.trust = trust
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
            sealed = self.trust.open(kind, payload)
            body = sealed.body
            if kind == "offer":
                if self.receiver is None:
                    raise ProtocolError(f"{self.site} takes no offers", field="topic")
                offer = Offer.from_json(body)
                _signed_by(offer.sender, sealed.signer)
                with bound_file(offer.name, transfer_id=offer.transfer_id):
                    await self.receiver.on_offer(offer)
            elif kind == "ack":
                ack = Ack.from_json(body)
                _signed_by(ack.sender, sealed.signer)
                acked = self.sender.items.get(ack.transfer_id)
                with bound_file(acked.name if acked is not None else None, transfer_id=ack.transfer_id):
                    await self.sender.on_ack(ack)
            elif kind == "custody":
                custody = Custody.from_json(body)
                _signed_by(custody.sender, sealed.signer)
                receipt = self.trust.open_receipt(custody.receipt)
                with bound_file(receipt.name):
                    await self.custody.on_custody(custody, receipt)
            elif kind == "control":
                await self._control(body, sealed.signer)
        except SignatureError as exc:
            # Bytes that are no envelope at all are a bad message; a readable envelope that does not
            # verify, or comes from the wrong signer, is a bad signature.
            problem = "bad_message" if exc.reason == "malformed" else "bad_signature"
            await self.rejected(topic, f"rejected {kind} message: {exc}", payload, kind=problem, signer=exc.signer)
        except ProtocolError as exc:
            await self.rejected(topic, f"rejected {kind} message: {exc}", payload, kind="bad_message", field=exc.field)

    async def control(self, payload: bytes) -> ControlOutcome:
        """A sealed route command from the operator's HTTP endpoint, verified as one from the mailbox.

        Raises:
            SignatureError: unsigned, or not signed by an operator (reported as a problem).
            ProtocolError: not a route command, or this site has no routes (reported as a problem).
        """
        topic = topics.site(self.site, "control")
        try:
            sealed = self.trust.open("control", payload)
            return await self._control(sealed.body, sealed.signer)
        except SignatureError as exc:
            problem = "bad_message" if exc.reason == "malformed" else "bad_signature"
            await self.rejected(topic, f"rejected control message: {exc}", payload, kind=problem, signer=exc.signer)
            raise
        except ProtocolError as exc:
            await self.rejected(topic, f"rejected control message: {exc}", payload, kind="bad_message", field=exc.field)
            raise

    async def _control(self, body: bytes, signer: str) -> ControlOutcome:
        if self.router is None:
            raise ProtocolError(f"route control goes to the summit, not {self.site}", field="command")
        control = RouteControl.from_json(body)
        _signed_by(control.issued_by, signer)
        return await self.router.control(control)

    async def rejected(
        self, topic: str, reason: str, payload: bytes, *, kind: str = "bad_signature", **details: Any
    ) -> None:
        """Report a refused message (nothing it says was acted on)."""
        await self.reporter.problem(
            kind,
            reason,
            topic=topic,
            payload_bytes=len(payload),
            payload_preview=payload[:160].decode("utf-8", "replace"),
            **details,
        )


def _signed_by(claimed: str, signer: str) -> None:
    """The message's own sender field must be its signer."""
    if claimed != signer:
        raise SignatureError(
            "signer_not_allowed", f"signed by {signer!r} but claims to be from {claimed!r}", signer=signer
        )
