"""TLS on both channels between sites.

- Mailboxes: a daemon verifies its broker with the topology's CA, and refuses one it cannot verify.
- Data servers: with ``http_cert_file`` set, every pull is HTTPS, verified with ``http_ca_file``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
from pathlib import Path

import aiohttp
import pytest
from conftest import (
    MakeCluster,
    Subscribe,
    checksums,
    cli_ok,
    converged,
    read_catalog,
    wait_settled,
    write_files,
)

from daemon.config import Endpoint, SiteConfig, Topology, Tuning
from daemon.errors import PullError
from daemon.mailbox import Account, Mailbox, MessageHandler
from daemon.receiving import pull_file
from daemon.trust import Trust
from ops.broker import Mosquitto, mosquitto_binary
from ops.pki import make_pki
from protocol import topics
from protocol.signing import generate_keypair, public_key_to_text

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make test certificates"),
]


KEY, _ = generate_keypair()


def topology(broker: Mosquitto, ca: Path, state: Path) -> Topology:
    site = SiteConfig(
        public_key=public_key_to_text(KEY.public_key()),
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


def _mailbox(topo: Topology, on_message: MessageHandler) -> Mailbox:
    return Mailbox(
        topo, "summit", on_message, trust=Trust(topo, "summit", KEY), account=Account(username=None, password=None)
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

        trusted = _mailbox(topology(broker, ca, tmp_path), on_message)
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

        untrusted = _mailbox(topology(broker, other_ca, tmp_path), on_message)
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


async def test_pulls_cross_every_hop_over_https_and_an_unverifiable_data_server_is_refused(
    make_cluster: MakeCluster, subscribe: Subscribe, tmp_path: Path
) -> None:
    """Every data server speaks HTTPS: an exposure crosses summit → base → archive intact, operator
    commands reach the sites over HTTPS, plain HTTP gets no answer, and a puller with another CA
    refuses the server before a byte is written."""
    pki = make_pki(tmp_path / "pki", "skyrelay")
    cluster = await make_cluster(http_tls=pki)
    # A daemon is ready before its peers' presence is in: a file written earlier may rightly go direct.
    await converged(cluster)
    arrivals = await subscribe(cluster, "archive", "skyrelay/v1/arrivals/#")
    files = await write_files(cluster, seqnum=1, size_bytes=3 << 20)
    sources = await checksums(files)
    await wait_settled(cluster, archived=len(files), wake=arrivals)

    catalog = read_catalog(cluster)
    assert {r["name"]: r["checksum"] for r in catalog} == sources
    assert {n["route"] for n in arrivals.of_type("arrival")} == {"primary"}, "both hops pulled over HTTPS"
    summit_url = cluster.info()["sites"]["summit"]["http"]  # the public cluster.json contract
    assert summit_url.startswith("https://")

    status = json.loads(await cli_ok("status", "--workdir", str(cluster.workdir), "--json"))
    assert status["archive"]["catalog"] == {"archived": len(files)}

    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            plain = summit_url.replace("https://", "http://") + "/v1/status"
            async with session.get(plain, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                await resp.read()

    other_ca, _, _ = make_pki(tmp_path / "other", "stranger")
    untrusted = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(other_ca)))
    dest = tmp_path / "pulled.part"
    async with aiohttp.ClientSession(connector=untrusted) as session:
        with pytest.raises(PullError, match=r"(?i)certificate"):
            await pull_file(
                session, f"{summit_url}/v1/transfers/any", cluster.token, dest, size=1, checksum="blake3:" + "0" * 64
            )
    assert not dest.exists()
