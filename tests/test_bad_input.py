"""Hostile input: bad messages in a site's mailbox and bad pulls from a data server.

Each bad message must be reported on ``problems/<site>`` with a reason, never crash the daemon,
and never make it write outside its own directories.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    DAYOBS,
    INSTRUMENT,
    MakeCluster,
    Subscribe,
    blake3_of,
    obsid_of,
    publish,
    query_journal,
    read_catalog,
    site_key,
    site_status,
    wait_settled,
    write_files,
)

from daemon.config import load_topology
from daemon.trust import PULL_HEADER, Trust
from ops.cluster import Cluster
from protocol.signing import seal, seal_receipt, signed_bytes

pytestmark = pytest.mark.timeout(180)

CHECKSUM = "blake3:" + "0" * 64
LONG_COMPONENT = "a" * 300 + ".fits"
LONG_TOTAL = "/".join(["b" * 200] * 6) + ".fits"


@dataclass(frozen=True)
class Hostile:
    """One bad message and the problem it must cause.

    ``signer`` seals the payload as that site would (a site whose key was stolen sends well-signed
    nonsense); None sends the raw bytes, as anyone holding a broker account could.
    """

    label: str
    kind: str  # mailbox topic kind
    payload: bytes
    problem: str  # expected Problem.kind
    field: str | None = None  # expected offending field (bad_message problems)
    signer: str | None = "summit"


def _offer(site: str, **changes: Any) -> bytes:
    """A well-formed offer from the summit into ``site``'s mailbox, with ``changes`` applied."""
    route, sites = ("primary", ["summit", "base", "archive"]) if site == "base" else ("direct", ["summit", "archive"])
    data: dict[str, Any] = {
        "type": "offer",
        "v": 1,
        "transfer_id": f"t-hostile-{time.monotonic_ns()}",
        "sender": "summit",
        "receiver": site,
        "name": "CC_O_20250601_000099_R22_S11.fits",
        "size": 1024,
        "checksum": CHECKSUM,
        "closed_at": time.time(),
        "route": route,
        "route_sites": sites,
        "hop": 0,
        "source_path": "/v1/transfers/t-hostile",
        "attempt": 1,
        "sent_at": time.time(),
    }
    data.update(changes)
    return json.dumps(data).encode()


def _custody(cluster: Cluster, site: str, *, sender: str, **changes: Any) -> bytes:
    """A custody hop from ``sender`` into ``site``'s mailbox carrying an archive-signed receipt with ``changes``."""
    receipt: dict[str, Any] = {
        "type": "custody_receipt",
        "v": 1,
        "receipt_id": f"r-hostile-{time.monotonic_ns()}",
        "archive": "archive",
        "name": "x.fits",
        "size": 1024,
        "checksum": CHECKSUM,
        "status": "archived",
        "archive_path": "raw/x.fits",
        "archived_at": time.time(),
        "route": "primary",
    }
    receipt.update(changes)
    envelope = seal_receipt(json.dumps(receipt).encode(), archive="archive", key=site_key(cluster, "archive"))
    hop = {
        "type": "custody",
        "v": 1,
        "custody_id": f"c-hostile-{time.monotonic_ns()}",
        "sender": sender,
        "receiver": site,
        "receipt": envelope.decode(),
    }
    return json.dumps(hop).encode()


def _oversized(cluster: Cluster, site: str) -> bytes:
    """A well-signed envelope whose body is larger than any message may be (seal itself refuses to make one)."""
    body = json.dumps({"type": "offer", "pad": "x" * 100_000}).encode()
    sig = site_key(cluster, "summit").sign(signed_bytes(body, kind="offer", signer="summit", to=site))
    envelope = {"v": 1, "kind": "offer", "signer": "summit", "to": site, "body": body.decode(), "sig": ""}
    envelope["sig"] = base64.urlsafe_b64encode(sig).decode().rstrip("=")
    return json.dumps(envelope).encode()


def hostile_messages(cluster: Cluster, site: str, outside: Path) -> list[Hostile]:
    """The bad messages sent into ``site``'s mailbox; ``outside`` is a directory the site must not touch.

    (A mailbox topic of an unknown kind cannot be published at all: the broker's ACL refuses it.)
    """
    own_route = ["summit", "base", "archive"] if site == "base" else ["summit", "archive"]
    other = "archive" if site == "base" else "base"
    relay = "archive" if site == "base" else "base"  # a peer that relays custody into this site's mailbox
    forger = "summit" if site == "base" else "base"  # a peer that is not the archive
    return [
        Hostile("name ../x", "offer", _offer(site, name="../x"), "bad_message", "name"),
        Hostile("name escaping a subdir", "offer", _offer(site, name="raw/../../../x"), "bad_message", "name"),
        Hostile("absolute name", "offer", _offer(site, name=str(outside / "abs-evil")), "bad_message", "name"),
        Hostile("NUL in name", "offer", _offer(site, name="a\x00b"), "bad_message", "name"),
        Hostile("over-long component", "offer", _offer(site, name=LONG_COMPONENT), "bad_message", "name"),
        Hostile("over-long name", "offer", _offer(site, name=LONG_TOTAL), "bad_message", "name"),
        Hostile("negative size", "offer", _offer(site, size=-1), "bad_message", "size"),
        Hostile("absurd size", "offer", _offer(site, size=1 << 50), "bad_message", "size"),
        Hostile("size over max_file_bytes", "offer", _offer(site, size=100 << 30), "offer_rejected"),
        Hostile("schema version 2", "offer", _offer(site, v=2), "bad_message", "v"),
        Hostile("bool for int", "offer", _offer(site, size=True), "bad_message", "size"),
        Hostile("unknown field", "offer", _offer(site, command="rm -rf /"), "bad_message", "command"),
        Hostile("not JSON", "offer", b"\x00\xffnot json at all", "bad_message", signer=None),
        Hostile("empty payload", "offer", b"", "bad_message", signer=None),
        Hostile("JSON array", "offer", b'[{"type": "offer"}]', "bad_message", signer=None),
        Hostile("JSON nested 1,000 deep", "offer", b"[" * 1000 + b"]" * 1000, "bad_message", signer=None),
        Hostile("unsigned offer", "offer", _offer(site), "bad_signature", signer=None),
        Hostile("oversized body, well signed", "offer", _oversized(cluster, site), "bad_message", signer=None),
        Hostile(
            "unknown sender site",
            "offer",
            _offer(site, sender="mars", route_sites=["mars", *own_route[1:]]),
            "bad_signature",
        ),
        Hostile("offer signed by the wrong peer", "offer", _offer(site), "bad_signature", signer=relay),
        Hostile("route not in the topology", "offer", _offer(site, route="smuggle"), "offer_rejected"),
        Hostile(
            "route sites not the topology's",
            "offer",
            _offer(site, route="primary" if site == "archive" else "direct"),
            "offer_rejected",
        ),
        Hostile(
            "addressed to another site",
            "offer",
            _offer(site, receiver=other, route_sites=["summit", other]),
            "bad_message",
            "receiver",
        ),
        Hostile(
            "custody naming ../x",
            "custody",
            _custody(cluster, site, sender=relay, name="../x"),
            "bad_message",
            "name",
            signer=relay,
        ),
        Hostile(
            "custody from an unknown site",
            "custody",
            _custody(cluster, site, sender="mars"),
            "bad_signature",
            signer=relay,
        ),
        Hostile(
            "custody whose receipt a relay forged",
            "custody",
            _forged_custody(cluster, site, forger),
            "bad_signature",
            signer=forger,
        ),
        Hostile("ack that is not JSON", "ack", b"{{{{", "bad_message", signer=None),
    ]


def _forged_custody(cluster: Cluster, site: str, relay: str) -> bytes:
    """A custody hop whose receipt is signed by the relay, not by the archive."""
    receipt = json.loads(json.loads(_custody(cluster, site, sender=relay))["receipt"])
    forged = seal(receipt["body"].encode(), kind="custody_receipt", signer=relay, key=site_key(cluster, relay))
    hop = json.loads(_custody(cluster, site, sender=relay))
    hop["receipt"] = forged.decode()
    return json.dumps(hop).encode()


@pytest.mark.parametrize("site", ["base", "archive"])
async def test_hostile_messages_are_reported_and_change_nothing(
    make_cluster: MakeCluster, subscribe: Subscribe, tmp_path: Path, site: str
) -> None:
    """Each hostile message yields a problem with a reason; the daemon keeps working and writes only its own dirs."""
    cluster = await make_cluster()
    problems = await subscribe(cluster, site, f"skyrelay/v1/problems/{site}")
    notices = await subscribe(cluster, "archive", "skyrelay/v1/arrivals/#")
    pid = cluster.daemons[site].pid
    outside = tmp_path.parent

    failures: list[str] = []
    for index, hostile in enumerate(hostile_messages(cluster, site, outside)):
        payload = hostile.payload
        if hostile.signer is not None:
            payload = seal(
                payload, kind=hostile.kind, signer=hostile.signer, key=site_key(cluster, hostile.signer), to=site
            )
        await publish(cluster, site, f"skyrelay/v1/site/{site}/{hostile.kind}", payload)
        try:
            await problems.wait_for(index + 1, timeout_s=5)
        except AssertionError:
            failures.append(f"{hostile.label}: no problem reported")
            break  # later problems could no longer be matched to their messages
        problem = problems.messages[index].data
        if not isinstance(problem, dict) or problem.get("type") != "problem":
            failures.append(f"{hostile.label}: not a problem message: {problem!r}")
            continue
        if problem["kind"] != hostile.problem or not problem["reason"]:
            failures.append(f"{hostile.label}: got {problem['kind']}: {problem['reason']!r}")
        if hostile.field is not None and problem["details"].get("field") != hostile.field:
            failures.append(f"{hostile.label}: field {problem['details'].get('field')!r}, want {hostile.field!r}")
    assert not failures, "\n".join(failures)
    assert cluster.daemons[site].pid == pid, f"the {site} daemon was restarted or died"

    paths = await write_files(cluster, seqnum=7)
    expected = {p.name for p in paths}
    await notices.wait_for(lambda _: expected <= {n["name"] for n in notices.of_type("arrival")}, timeout_s=30)
    statuses = await wait_settled(cluster, archived=len(paths), wake=notices)
    assert statuses[site]["pid"] == pid
    assert cluster.daemons[site].pid == pid

    assert not list(outside.rglob("x")), "a file named x was written"
    assert not list(outside.rglob("abs-evil")), "a file was written at an absolute path"
    catalog = read_catalog(cluster)
    assert sorted(r["name"] for r in catalog) == sorted(expected)
    archive_entries = {p.relative_to(cluster.archive_root).as_posix() for p in cluster.archive_root.rglob("*")}
    exposure = f"raw/{INSTRUMENT}/{DAYOBS}/{obsid_of(7)}"
    assert archive_entries == {
        ".incoming",
        "raw",
        f"raw/{INSTRUMENT}",
        f"raw/{INSTRUMENT}/{DAYOBS}",
        exposure,
        *(f"{exposure}/{name}" for name in expected),
    }
    for path in paths:
        assert blake3_of(cluster.archive_root / exposure / path.name) == blake3_of(path)
    base_files = query_journal(cluster, "base", "SELECT name FROM files")
    assert sorted(r["name"] for r in base_files) == sorted(expected)
    assert not list((cluster.workdir / "base" / "state" / "incoming").iterdir())


async def _a_transfer_id(cluster: Cluster, subscribe: Subscribe) -> tuple[str, Path]:
    """Send one file through and return one of its summit transfer ids and its path."""
    notices = await subscribe(cluster, "archive", "skyrelay/v1/arrivals/#")
    (path,) = await write_files(cluster, seqnum=8, detectors=["R22_S11"])
    await notices.wait_for(lambda _: bool(notices.of_type("arrival")), timeout_s=30)
    # The router may have re-routed the file: any of its transfers names it on the data server.
    row = query_journal(cluster, "summit", "SELECT transfer_id FROM transfers ORDER BY created_at DESC")[0]
    return str(row["transfer_id"]), path


async def test_pull_with_a_wrong_token_or_signer_is_refused(make_cluster: MakeCluster, subscribe: Subscribe) -> None:
    """The summit's data server answers 401 to a pull with a wrong or missing bearer token, 403 to the right token
    from any site but the transfer's receiver, serves the receiver, and stops serving once the transfer is done."""
    cluster = await make_cluster(routes={"direct": ["summit", "archive"]})
    problems = await subscribe(cluster, "summit", "skyrelay/v1/problems/summit")
    await cluster.daemons["archive"].kill()  # the transfer stays pending: the file waits for its receiver
    (path,) = await write_files(cluster, seqnum=8, detectors=["R22_S11"])
    await problems.wait_for(lambda _: any(p["kind"] == "no_route" for p in problems.of_type("problem")), timeout_s=15)
    (row,) = query_journal(cluster, "summit", "SELECT transfer_id, receiver FROM transfers")
    transfer_id, receiver = str(row["transfer_id"]), str(row["receiver"])
    source = f"/v1/transfers/{transfer_id}"
    url = f"http://127.0.0.1:{cluster.http_ports['summit']}{source}"
    topology = load_topology(cluster.topology_path, check_dirs=False)
    token = {"Authorization": f"Bearer {cluster.token}"}
    async with aiohttp.ClientSession() as session:
        for headers in (
            {"Authorization": "Bearer " + "0" * len(cluster.token)},
            {"Authorization": f"Bearer {cluster.token[:-1]}"},
            {"Authorization": f"Basic {cluster.token}"},
            {},
        ):
            async with session.get(url, headers=headers) as resp:
                assert resp.status == 401, headers
                assert path.name.encode() not in await resp.read()
        for signer in ("base", "summit", None):
            headers = dict(token)
            if signer is not None:
                headers[PULL_HEADER] = Trust(topology, signer, site_key(cluster, signer)).pull_header(source)
            async with session.get(url, headers=headers) as resp:
                assert resp.status == 403, signer
                assert path.name.encode() not in await resp.read()
        receiver_trust = Trust(topology, receiver, site_key(cluster, receiver))
        stale = receiver_trust.pull_header(source, now=time.time() - 3600)
        async with session.get(url, headers={**token, PULL_HEADER: stale}) as resp:
            assert resp.status == 403, "a signature an hour old"
        async with session.get(url, headers={**token, PULL_HEADER: receiver_trust.pull_header(source)}) as resp:
            assert resp.status == 200
            assert await resp.read() == path.read_bytes()
        notices = await subscribe(cluster, "archive", "skyrelay/v1/arrivals/#")
        await cluster.restart_daemon("archive")
        await notices.wait_for(lambda _: bool(notices.of_type("arrival")), timeout_s=30)
        await wait_settled(cluster, archived=1, wake=notices)
        async with session.get(url, headers={**token, PULL_HEADER: receiver_trust.pull_header(source)}) as resp:
            assert resp.status == 410, "a transfer that is done is no longer served"


async def test_pull_of_an_unknown_transfer_is_not_found(cluster: Cluster, subscribe: Subscribe) -> None:
    """With the right token, an unknown or path-like transfer id gets 404, and the server keeps serving."""
    await _a_transfer_id(cluster, subscribe)
    base = f"http://127.0.0.1:{cluster.http_ports['summit']}/v1/transfers/"
    auth = {"Authorization": f"Bearer {cluster.token}"}
    async with aiohttp.ClientSession() as session:
        for transfer_id in ("t-does-not-exist", "..%2F..%2Fetc%2Fpasswd", "%00", "'%20OR%201=1--"):
            async with session.get(base + transfer_id, headers=auth) as resp:
                assert resp.status == 404, transfer_id
        status = await site_status(session, cluster, "summit")
        assert status["pid"] == cluster.daemons["summit"].pid
