"""Mailboxes over TLS: a daemon verifies its broker with the topology's CA, and refuses one it cannot verify."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon.config import Endpoint, SiteConfig, Topology, Tuning
from daemon.mailbox import Mailbox
from ops.broker import Mosquitto, mosquitto_binary
from protocol import topics

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make test certificates"),
]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    directory.mkdir(parents=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name} test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=directory,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=directory,
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
        cwd=directory,
    )
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


def topology(broker: Mosquitto, ca: Path, state: Path) -> Topology:
    site = SiteConfig(
        name="summit",
        role="summit",
        broker=Endpoint(host="127.0.0.1", port=broker.port, tls=True),
        http_listen=Endpoint(host="127.0.0.1", port=1),
        state_dir=state,
    )
    return Topology(
        path=state / "topology.toml",
        sites={"summit": site},
        links={},
        routes=(),
        tuning=Tuning(),
        token="x" * 32,
        mqtt_ca_file=ca,
    )


class _Done(Exception):
    """Ends a task group once the test has seen what it needs."""


# paho-mqtt leaves the SSL socket of a failed handshake to the garbage collector (a ResourceWarning
# surfaced by pytest as an unraisable-exception warning); the daemon's own resources are all closed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_mailbox_connects_over_tls_and_refuses_an_unverifiable_broker(tmp_path: Path) -> None:
    """With the broker's CA the mailbox connects and receives its mail; with another CA it never connects."""
    mosquitto_binary()
    ca, cert, key = make_pki(tmp_path / "pki", "skyrelay")
    other_ca, _, _ = make_pki(tmp_path / "other", "stranger")
    broker = Mosquitto(tmp_path / "broker", tls=(ca, cert, key))
    await broker.start()
    try:
        received: list[tuple[str, bytes]] = []
        arrived = asyncio.Event()

        async def on_message(topic: str, payload: bytes) -> None:
            received.append((topic, payload))
            arrived.set()

        trusted = Mailbox(topology(broker, ca, tmp_path), "summit", on_message)
        try:
            async with asyncio.TaskGroup() as tg:
                await trusted.run(tg)
                async with asyncio.timeout(10):
                    await trusted.local_ready.wait()
                assert await trusted.publish_local(topics.site("summit", "control"), b"hello over tls")
                async with asyncio.timeout(10):
                    await arrived.wait()
                raise _Done  # ends the mailbox loops
        except* _Done:
            pass
        assert received == [("skyrelay/v1/site/summit/control", b"hello over tls")]

        untrusted = Mailbox(topology(broker, other_ca, tmp_path), "summit", on_message)
        try:
            async with asyncio.TaskGroup() as tg:
                await untrusted.run(tg)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(3):
                        await untrusted.local_ready.wait()
                raise _Done
        except* _Done:
            pass
        assert not untrusted.local_ready.is_set()
    finally:
        await broker.stop()
