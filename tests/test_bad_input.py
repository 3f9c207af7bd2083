"""Hostile input: bad messages in a site's mailbox and bad pulls from a data server.

Each bad message must be reported on ``problems/<site>`` with a reason, never crash the daemon,
and never make it write outside its own directories.
"""

from __future__ import annotations

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
    site_status,
    wait_settled,
    write_files,
)

from ops.cluster import Cluster

pytestmark = pytest.mark.timeout(180)

CHECKSUM = "blake3:" + "0" * 64
LONG_COMPONENT = "a" * 300 + ".fits"
LONG_TOTAL = "/".join(["b" * 200] * 6) + ".fits"


@dataclass(frozen=True)
class Hostile:
    """One bad message and the problem it must cause."""

    label: str
    kind: str  # mailbox topic kind, or any other last segment
    payload: bytes
    problem: str  # expected Problem.kind
    field: str | None = None  # expected offending field (bad_message problems)


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


def _custody(site: str, **changes: Any) -> bytes:
    """A well-formed custody message from the archive into ``site``'s mailbox, with ``changes`` applied."""
    data: dict[str, Any] = {
        "type": "custody",
        "v": 1,
        "custody_id": f"c-hostile-{time.monotonic_ns()}",
        "sender": "archive",
        "receiver": site,
        "name": "x.fits",
        "size": 1024,
        "checksum": CHECKSUM,
        "status": "archived",
        "archive_path": "raw/x.fits",
        "archived_at": time.time(),
        "route": "primary",
    }
    data.update(changes)
    return json.dumps(data).encode()


def hostile_messages(site: str, outside: Path) -> list[Hostile]:
    """The bad messages sent into ``site``'s mailbox; ``outside`` is a directory the site must not touch."""
    own_route = ["summit", "base", "archive"] if site == "base" else ["summit", "archive"]
    other = "archive" if site == "base" else "base"
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
        Hostile("not JSON", "offer", b"\x00\xffnot json at all", "bad_message"),
        Hostile("empty payload", "offer", b"", "bad_message"),
        Hostile("JSON array", "offer", b'[{"type": "offer"}]', "bad_message"),
        Hostile("oversized payload", "offer", b'{"pad": "' + b"x" * 300_000 + b'"}', "bad_message"),
        Hostile(
            "unknown sender site",
            "offer",
            _offer(site, sender="mars", route_sites=["mars", *own_route[1:]]),
            "bad_message",
            "sender",
        ),
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
        Hostile("custody naming ../x", "custody", _custody(site, name="../x"), "bad_message", "name"),
        Hostile("custody from an unknown site", "custody", _custody(site, sender="mars"), "bad_message", "sender"),
        Hostile("ack that is not JSON", "ack", b"{{{{", "bad_message"),
        Hostile("unknown mailbox topic", "shell", _offer(site), "bad_message", "topic"),
    ]


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
    for index, hostile in enumerate(hostile_messages(site, outside)):
        await publish(cluster, site, f"skyrelay/v1/site/{site}/{hostile.kind}", hostile.payload)
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


async def test_pull_with_a_wrong_token_is_refused(cluster: Cluster, subscribe: Subscribe) -> None:
    """The summit's data server answers 401 to a pull with a wrong or missing bearer token, and serves the right one."""
    transfer_id, path = await _a_transfer_id(cluster, subscribe)
    url = f"http://127.0.0.1:{cluster.http_ports['summit']}/v1/transfers/{transfer_id}"
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
        async with session.get(url, headers={"Authorization": f"Bearer {cluster.token}"}) as resp:
            assert resp.status == 200
            assert await resp.read() == path.read_bytes()


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
