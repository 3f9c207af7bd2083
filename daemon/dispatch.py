"""Message dispatch: each message from the site's own mailbox is verified, then goes to the part for its kind.

A message must be sealed by a signer allowed to send its kind here and name that signer as its
sender; an unsigned or wrongly signed one is rejected with a ``bad_signature`` problem, a malformed
or misaddressed one with ``bad_message``. Nothing it carries changes any state, and no task ends.
A batch (:mod:`protocol.batch`) is verified once; each message in it must be one its signer may send,
and is then handled exactly as if it had come alone (a bad one is rejected, the others are not).

From the mailbox (:meth:`Dispatcher.deliver`), messages about different files are handled
concurrently (so their journal writes share group commits); messages about one file keep their
order, one after the other, as do all messages of other kinds, which wait for everything before
them. Verification and parsing happen in arrival order, before any handling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog

from daemon.custody import CustodyRelay
from daemon.logcontext import bound_file
from daemon.receiving import Receiver
from daemon.report import Reporter
from daemon.sending.router import ControlOutcome, Router
from daemon.sending.sender import Sender
from daemon.trust import Trust
from protocol import topics
from protocol.batch import decode_batch
from protocol.codec import load_object
from protocol.control import RouteControl
from protocol.custody import Custody
from protocol.errors import ProtocolError
from protocol.signing import SignatureError
from protocol.transfer import Ack, Offer

log = structlog.get_logger()

MAX_CONCURRENT: Final = 64
"""Messages handled at once; the mailbox waits for a place beyond this (back-pressure on the broker)."""


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
        self.tg: asyncio.TaskGroup | None = None
        """Where :meth:`deliver` runs its handlers; without one, it handles each message before returning."""
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._lanes: dict[str, tuple[asyncio.Lock, int]] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def deliver(self, topic: str, payload: bytes) -> None:
        """A message from the mailbox: verify and parse it now, handle it in its file's lane.

        Returns once the message is verified and its handling has started its turn (or, for kinds
        that are not about one file, once it is handled).
        """
        if self.tg is None:
            await self.on_message(topic, payload)
            return
        for lane, run in await self._prepare(topic, payload):
            await self._start(lane, run)

    async def _start(self, lane: str | None, run: Callable[[], Awaitable[None]]) -> None:
        assert self.tg is not None
        if lane is None:
            if self._running:  # control and the like: after everything before it, alone
                await asyncio.wait(set(self._running))
            await run()
            return
        await self._slots.acquire()
        locks = self._lanes
        lock, users = locks.get(lane, (asyncio.Lock(), 0))
        locks[lane] = (lock, users + 1)

        async def in_lane() -> None:
            try:
                async with lock:
                    await run()
            finally:
                lock_now, left = locks[lane]
                if left == 1:
                    del locks[lane]
                else:
                    locks[lane] = (lock_now, left - 1)
                self._slots.release()

        task = self.tg.create_task(in_lane(), name=f"{self.site}.dispatch")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def on_message(self, topic: str, payload: bytes) -> None:
        """Dispatch one message from the site's own mailbox; reject anything malformed."""
        for _, run in await self._prepare(topic, payload):
            await run()

    async def _prepare(self, topic: str, payload: bytes) -> list[tuple[str | None, Callable[[], Awaitable[None]]]]:
        """Verify and parse a message (or each message of a batch); return each one's lane (None: not about
        one file) and its handling.

        A message that does not verify or parse is reported here and left out.
        """
        kind = "?"
        try:
            site, kind = topics.parse_site(topic)
            if site != self.site:
                raise ProtocolError(f"addressed to {site}, this is {self.site}", field="topic")
            sealed = self.trust.open(kind, payload)
            if kind != "batch":
                handle = await self._parse(topic, payload, kind, sealed.body, sealed.signer)
                return [handle] if handle is not None else []
            entries = decode_batch(sealed.body)
        except SignatureError as exc:
            # Bytes that are no envelope at all are a bad message; a readable envelope that does not
            # verify, or comes from the wrong signer, is a bad signature.
            problem = "bad_message" if exc.reason == "malformed" else "bad_signature"
            await self.rejected(topic, f"rejected {kind} message: {exc}", payload, kind=problem, signer=exc.signer)
            return []
        except ProtocolError as exc:
            await self.rejected(topic, f"rejected {kind} message: {exc}", payload, kind="bad_message", field=exc.field)
            return []
        handles = []
        for entry in entries:
            if entry.error is not None:
                await self.rejected(
                    topic, f"rejected batch entry: {entry.error}", payload, kind="bad_message", field=entry.error.field
                )
                continue
            if sealed.signer not in self.trust.allowed(entry.kind):
                reason = f"{sealed.signer!r} may not send {entry.kind!r} here"
                await self.rejected(topic, f"rejected {entry.kind} in a batch: {reason}", payload, signer=sealed.signer)
                continue
            handle = await self._parse(topic, payload, entry.kind, entry.body, sealed.signer, batch_index=entry.index)
            if handle is not None:
                handles.append(handle)
        return handles

    async def _parse(
        self,
        topic: str,
        payload: bytes,
        kind: str,
        body: bytes | dict[str, Any],
        signer: str,
        *,
        batch_index: int | None = None,
    ) -> tuple[str | None, Callable[[], Awaitable[None]]] | None:
        """Parse one verified message (its JSON text, or its object from a batch) signed by ``signer``.

        A message that does not parse, or claims another sender than its signer, is reported and gives None.
        """
        where = {} if batch_index is None else {"batch_index": batch_index}
        try:
            if kind == "control" and isinstance(body, bytes):
                control_body = body

                async def controlled() -> None:
                    await self._control(control_body, signer)

                return None, lambda: self._guarded(topic, payload, kind, controlled)
            data = load_object(body) if isinstance(body, bytes) else body
            if kind == "offer":
                receiver = self.receiver
                if receiver is None:
                    raise ProtocolError(f"{self.site} takes no offers", field="topic")
                offer = Offer.from_dict(data)
                _signed_by(offer.sender, signer)

                async def offered() -> None:
                    with bound_file(offer.name, transfer_id=offer.transfer_id):
                        await receiver.on_offer(offer)

                return f"file:{offer.identity.key}", lambda: self._guarded(topic, payload, kind, offered)
            if kind == "ack":
                ack = Ack.from_dict(data)
                _signed_by(ack.sender, signer)
                acked = self.sender.items.get(ack.transfer_id)

                async def answered() -> None:
                    with bound_file(acked.name if acked is not None else None, transfer_id=ack.transfer_id):
                        await self.sender.on_ack(ack)

                lane = f"file:{acked.file_key}" if acked is not None else f"ack:{ack.transfer_id}"
                return lane, lambda: self._guarded(topic, payload, kind, answered)
            if kind == "custody":
                custody = Custody.from_dict(data)
                _signed_by(custody.sender, signer)
                receipt = self.trust.open_receipt(custody.receipt)

                async def held() -> None:
                    with bound_file(receipt.name):
                        await self.custody.on_custody(custody, receipt)

                return f"file:{receipt.file_key}", lambda: self._guarded(topic, payload, kind, held)
            raise ProtocolError(f"{kind!r} is not a mailbox message kind", field="topic")
        except SignatureError as exc:
            problem = "bad_message" if exc.reason == "malformed" else "bad_signature"
            await self.rejected(
                topic, f"rejected {kind} message: {exc}", payload, kind=problem, signer=exc.signer, **where
            )
        except ProtocolError as exc:
            await self.rejected(
                topic, f"rejected {kind} message: {exc}", payload, kind="bad_message", field=exc.field, **where
            )
        except (TypeError, ValueError, RecursionError) as exc:  # as Message.from_json words them
            reason = f"rejected {kind} message: cannot decode {kind!r}: {exc}"
            await self.rejected(topic, reason, payload, kind="bad_message", **where)
        return None

    async def _guarded(self, topic: str, payload: bytes, kind: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run a handler; a message it refuses is reported as rejected, not raised."""
        try:
            await work()
        except SignatureError as exc:
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
