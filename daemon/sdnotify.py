"""systemd notification protocol (READY=1, WATCHDOG=1, STATUS=...), without a dependency."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

STATUS_MIN_INTERVAL_S = 5.0
"""At most one STATUS= line this often (``systemctl status`` shows the latest)."""
STATUS_REFRESH_S = 60.0
"""Re-read the status this often even without a wake-up: a safety net for a change nothing announced."""


def notify(message: str) -> bool:
    """Send ``message`` to $NOTIFY_SOCKET; return False when not run under a notify-aware supervisor."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(target)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog period systemd asked for, or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


class StatusLine:
    """``STATUS=`` lines for systemd: the site's one-line summary, sent when it changes, rate-limited.

    Parts that change what the summary says (the queue, a route's health, a link) call :meth:`wake`;
    the line is re-read then, sent only if its text changed, and never more often than
    ``min_interval_s``.
    """

    def __init__(
        self,
        describe: Callable[[], str],
        *,
        min_interval_s: float = STATUS_MIN_INTERVAL_S,
        refresh_s: float = STATUS_REFRESH_S,
    ) -> None:
        self.describe = describe
        self.min_interval_s = min_interval_s
        self.refresh_s = refresh_s
        self.changed = asyncio.Event()
        self.sent: str | None = None

    def wake(self) -> None:
        """Something the summary shows may have changed."""
        self.changed.set()

    async def run(self, ready: asyncio.Event) -> None:
        """After ``ready``, send the summary whenever it changes, until cancelled (at once if not under systemd)."""
        if not os.environ.get("NOTIFY_SOCKET"):
            return
        await ready.wait()
        while True:
            self.changed.clear()
            text = self.describe()
            if text != self.sent:
                if notify(f"STATUS={text}"):
                    self.sent = text
                await asyncio.sleep(self.min_interval_s)  # the rate limit, not a poll: changes meanwhile set `changed`
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_s):
                    await self.changed.wait()
