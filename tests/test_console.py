"""The operator's console in a real headless browser (Debian's chromium), on a real drill cluster.

The archive's page shows the whole system and is pushed every change by server-sent events: the test
measures, and prints, the seconds from each event (a file archived, a link cut, a link restored) to the
page showing it. With ``SKYRELAY_SCREENS=<dir>`` it also saves screenshots and the figures there.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser import open_page, require_browser
from conftest import DRILL_TUNING, MakeCluster, http_ssl, login, operator_headers, write_files
from parts import open_journal, topology

from daemon.counters import SiteCounters
from daemon.http.console import PeerFeed, system_view
from daemon.http.status import conditions
from daemon.journal import console as journal_console
from daemon.report import Reporter
from ops.cluster import Cluster
from ops.linksim import link_name

pytestmark = pytest.mark.timeout(120)

TUNING = DRILL_TUNING
SEEN_S = 20_000  # ms: a change must be on the page within this (generous under load; the figures are printed)


async def system_until(
    cluster: Cluster, site: str, predicate: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """Follow ``site``'s ``/v1/stream`` (the system view, as the page gets it) until ``predicate`` holds."""
    url = cluster.http_url(site) + "/v1/stream"
    seen: dict[str, Any] = {}
    try:
        async with (
            asyncio.timeout(timeout_s),
            aiohttp.ClientSession() as session,
            session.get(url, headers=operator_headers(cluster), ssl=http_ssl(cluster)) as resp,
        ):
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            async for line in resp.content:
                if line.startswith(b"data:"):
                    seen = json.loads(line[5:])
                    if predicate(seen):
                        return seen
    except TimeoutError:
        pass
    raise AssertionError(f"{site}'s system view never got there in {timeout_s}s: {json.dumps(seen)[:3000]}")


def _route(name: str, healthy: bool) -> str:
    return f"document.querySelector('tr[data-route=\"{name}\"]')?.dataset.healthy === '{str(healthy).lower()}'"


def _hop_down(route: str, a: str, b: str) -> Callable[[dict[str, Any]], bool]:
    def check(view: dict[str, Any]) -> bool:
        found = next((r for r in view["routes"] if r["name"] == route), None)
        hops = found["hops"] if found is not None else []
        return any(h["from"] == a and h["to"] == b and h["healthy"] is False for h in hops)

    return check


def _level(level: str) -> str:
    return f"document.getElementById('banner').dataset.level === '{level}'"


async def test_the_archive_page_shows_arrivals_a_cut_and_its_restore_live_and_keeps_the_timeline(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """On the archive's page, pushed by server-sent events: a file just archived appears; a cut of the
    summit-base link turns the primary route DOWN and the verdict DEGRADED with the route as its reason;
    the restore brings both back; the timeline (journaled at the summit) still shows the cut after the
    summit daemon is killed and restarted."""
    require_browser()
    screens = Path(os.environ.get("SKYRELAY_SCREENS") or tmp_path / "screens")
    await asyncio.to_thread(screens.mkdir, parents=True, exist_ok=True)
    figures: dict[str, float] = {}
    cluster = await make_cluster(drill=True, tuning=TUNING)
    async with open_page(cluster.http_url("archive") + "/", credentials=login(cluster)) as page:
        await page.wait_for_function(_level("OK"), timeout=30_000)
        assert await page.text_content("#here") == "seen from archive"
        for site in ("summit", "base", "archive"):
            assert await page.get_attribute(f'#sites tr[data-site="{site}"]', "data-reachable") == "true"
        async with aiohttp.ClientSession() as session:
            async with session.get(cluster.http_url("base") + "/v1/stream", ssl=http_ssl(cluster)) as resp:
                assert resp.status == 401, "the stream needs the operator's login"
            headers = operator_headers(cluster)
            async with session.get(cluster.http_url("base") + "/v1/system", headers=headers) as resp:
                system = await resp.json()
        assert system["verdict"]["level"] == "OK", system["verdict"]
        assert all(s["reachable"] for s in system["sites"].values()), system["sites"]

        # A file that just arrived appears.
        closed_at = time.time()
        [path] = await write_files(cluster, seqnum=1, size_bytes=64 * 1024, detectors=["R22_S11"])
        row = f'#arrivals tr[data-file="{path.name}"]'
        await page.wait_for_selector(row, timeout=SEEN_S)
        arrived_at = float(await page.get_attribute(row, "data-arrived-at") or 0)
        shown_at = float(await page.get_attribute(row, "data-shown-at") or 0)
        figures["archived_to_page_s"] = shown_at - arrived_at
        figures["close_to_page_s"] = shown_at - closed_at
        assert "primary" in (await page.text_content(row) or "")
        assert "1/1" in (await page.text_content("#exposures") or "") or "R22_S11" in (
            await page.text_content("#arrivals") or ""
        )
        # (each panel follows its own part of the pushed view: the arrival can be shown before its latency)
        await page.wait_for_function(
            "() => (document.querySelector('#latency')?.textContent || '').includes('median')", timeout=SEEN_S
        )

        # A cut: the primary route goes down, the verdict says why.
        link = cluster.linksim.link(link_name("summit", "base"))
        cut_at = time.time()
        await link.set_mode("cut")
        await page.wait_for_function(_route("primary", False), timeout=SEEN_S)
        figures["cut_to_page_s"] = time.time() - cut_at
        await page.wait_for_function(_level("DEGRADED"), timeout=SEEN_S)
        reason = await page.text_content("#verdict-reason") or ""
        assert "primary" in reason and "base" in reason, reason
        assert await page.get_attribute('tr[data-route="direct"]', "data-healthy") == "true"
        problems = await page.text_content("#conditions") or ""
        assert "no connection to base's mailbox" in problems, problems
        await page.wait_for_selector('#timeline tr[data-kind="route_down"][data-site="summit"]', timeout=SEEN_S)
        # The base, too, shows its primary down: the hop feeding it is cut (it used to show it healthy).
        await page.wait_for_function(
            "document.getElementById('conditions').textContent"
            ".includes('route primary down at base: no link from summit')",
            timeout=SEEN_S,
        )
        await page.screenshot(path=str(screens / "console-during-cut.png"), full_page=True)

        # The restore: the route comes back, the verdict returns to OK.
        restore_at = time.time()
        await link.set_mode("up")
        await page.wait_for_function(_route("primary", True), timeout=SEEN_S)
        figures["restore_to_page_s"] = time.time() - restore_at
        await page.wait_for_function(_level("OK"), timeout=SEEN_S)
        figures["restore_to_ok_s"] = time.time() - restore_at
        await page.wait_for_selector('#timeline tr[data-kind="route_up"][data-site="summit"]', timeout=SEEN_S)
        await page.screenshot(path=str(screens / "console-after-restore.png"), full_page=True)
        down_at = await page.get_attribute('#timeline tr[data-kind="route_down"][data-site="summit"]', "data-at")

        # The timeline is the summit's journal: it survives the summit daemon's SIGKILL and restart.
        old_pid = cluster.daemons["summit"].pid
        await cluster.daemons["summit"].kill()
        await page.wait_for_selector('#sites tr[data-site="summit"][data-reachable="false"]', timeout=SEEN_S)
        await cluster.restart_daemon("summit")
        assert cluster.daemons["summit"].pid != old_pid
        await page.wait_for_selector('#sites tr[data-site="summit"][data-reachable="true"]', timeout=SEEN_S)
        assert (
            await page.get_attribute('#timeline tr[data-kind="route_down"][data-site="summit"]', "data-at") == down_at
        )
        assert str(cluster.daemons["summit"].pid) in (await page.text_content('#sites tr[data-site="summit"]') or "")

        # The archive frozen (SIGSTOP): the base's view says primary is down at base -> archive, and why,
        # even though the summit (which cannot see that hop) still counts the route healthy.
        pid = cluster.daemons["archive"].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            frozen = await system_until(cluster, "base", _hop_down("primary", "base", "archive"), 30)
        finally:
            os.kill(pid, signal.SIGCONT)
        [primary] = [r for r in frozen["routes"] if r["name"] == "primary"]
        assert primary["healthy"] is False and "archive is offline" in primary["hops"][1]["reason"], primary
        assert frozen["verdict"]["level"] in ("DEGRADED", "FAILING"), frozen["verdict"]
        assert any("still counts the route healthy" in r for r in frozen["verdict"]["reasons"]), frozen["verdict"]

        # Both routes cut: a new file is held at the summit, and the summit's own page says FAILING because of it.
        await page.goto(cluster.http_url("summit") + "/")
        await page.wait_for_function(_level("OK"), timeout=30_000)
        direct = cluster.linksim.link(link_name("summit", "archive"))
        await link.set_mode("cut")
        await direct.set_mode("cut")
        [held] = await write_files(cluster, seqnum=2, size_bytes=64 * 1024, detectors=["R22_S11"])
        await page.wait_for_function(_level("FAILING"), timeout=SEEN_S)
        reason = await page.text_content("#verdict-reason") or ""
        assert "1 file(s) held at summit: no usable route" in reason, reason
        assert "held" in (await page.text_content("#queues") or "")
        # The sites table words the summit's own copy as kept until custody returns, not as "held".
        await page.wait_for_function(
            "document.getElementById('sites').textContent.includes('awaiting custody')", timeout=SEEN_S
        )
        await page.wait_for_selector('#timeline tr[data-kind="no_route"]', timeout=SEEN_S)
        await page.screenshot(path=str(screens / "console-summit-both-routes-cut.png"), full_page=True)
        await link.set_mode("up")
        await direct.set_mode("up")
        await page.wait_for_function(
            "!document.getElementById('conditions').textContent.includes('held')", timeout=SEEN_S
        )
        assert held.name

        # A daemon whose page is open still stops at once on SIGTERM (the open stream ends with it).
        stop_at = time.time()
        await cluster.daemons["summit"].stop()
        figures["summit_stop_with_page_open_s"] = time.time() - stop_at
        assert cluster.daemons["summit"].proc is not None and cluster.daemons["summit"].proc.returncode == 0
        await page.wait_for_function("document.getElementById('live').dataset.state === 'down'", timeout=SEEN_S)

    report: dict[str, Any] = {k: round(v, 3) for k, v in figures.items()}
    print("\nconsole: seconds from event to page:", json.dumps(report))
    await asyncio.to_thread((screens / "console-figures.json").write_text, json.dumps(report, indent=2) + "\n")
    assert all(v >= 0 for v in figures.values() if v is not None), figures


# ---- the system view, from statuses (no cluster) --------------------------------------------


def _status(site: str, role: str, links: dict[str, tuple[bool, bool]], **extra: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "site": site,
        "role": role,
        "links": {p: {"connected": c, "peer_online": o} for p, (c, o) in links.items()},
        "timeline": [],
        **extra,
    }
    status["conditions"] = conditions(status)
    return status


def _route_status(
    name: str, next_hop: str, *, healthy: bool = True, in_use: bool = False, **evidence: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "healthy": healthy,
        "policy": "auto",
        "evidence": {"next_hop": next_hop, "connected": True, "breaker": "closed", "in_use": in_use, **evidence},
    }


def _feed(site: str, status: dict[str, Any] | None, error: str | None = None) -> PeerFeed:
    feed = PeerFeed(site, "http://unused", None, lambda: None)
    feed.status, feed.error = status, error
    return feed


UP = (True, True)


def test_files_held_at_the_summit_make_the_verdict_failing_with_the_held_files_as_its_reason(tmp_path: Path) -> None:
    """Both routes down and a file held: FAILING, and the reason says files are held (not "Recent problems: none")."""
    summit = _status(
        "summit",
        "summit",
        {"base": (False, False), "archive": (False, False)},
        routes=[
            _route_status("primary", "base", healthy=False, connected=False, in_use=True),
            _route_status("direct", "archive", healthy=False, connected=False),
        ],
        held={"count": 18, "oldest_at": 1.0},
    )
    view = system_view(
        "summit", topology(tmp_path), summit, {"base": _feed("base", None, "x"), "archive": _feed("archive", None, "x")}
    )
    assert view["verdict"]["level"] == "FAILING"
    assert view["verdict"]["reason"] == "18 file(s) held at summit: no usable route"
    assert "no route from the summit to the archive is healthy" in view["verdict"]["reasons"]


def test_a_hop_down_beyond_the_summits_sight_takes_the_route_down_in_the_view_and_says_so(tmp_path: Path) -> None:
    """The archive frozen: the summit still counts primary healthy, the base sees the archive offline; the
    view shows primary DOWN at base -> archive and says that the summit still counts it healthy."""
    summit = _status(
        "summit",
        "summit",
        {"base": UP, "archive": (True, False)},
        routes=[_route_status("primary", "base", in_use=True), _route_status("direct", "archive", healthy=False)],
    )
    base = _status(
        "base",
        "relay",
        {"summit": UP, "archive": (True, False)},
        routes=[_route_status("primary", "archive", healthy=False)],
    )
    view = system_view(
        "base",
        topology(tmp_path),
        base,
        {"summit": _feed("summit", summit), "archive": _feed("archive", None, "no answer for 5 s")},
    )
    primary = next(r for r in view["routes"] if r["name"] == "primary")
    assert primary["healthy"] is False and primary["in_use"]
    assert [h["healthy"] for h in primary["hops"]] == [True, False]
    assert primary["hops"][1]["reason"] == "archive is offline"
    assert view["verdict"]["level"] == "FAILING"  # and direct is down too: no route is healthy
    assert any("while summit still counts the route healthy" in r for r in view["verdict"]["reasons"])
    assert any("archive's page cannot be read from base: no answer for 5 s" in r for r in view["verdict"]["reasons"])


def test_a_relay_whose_link_from_the_summit_is_down_shows_its_route_down(tmp_path: Path) -> None:
    """The base with its summit link down: its primary is DOWN (the bug: it showed its own primary healthy)."""
    base = _status(
        "base",
        "relay",
        {"summit": (False, False), "archive": UP},
        routes=[_route_status("primary", "archive", healthy=False, upstream_unreachable=["summit"])],
    )
    assert "route primary down at base: no link from summit" in [c["what"] for c in base["conditions"]]
    archive = _status("archive", "archive", {"summit": UP, "base": UP})
    view = system_view(
        "base",
        topology(tmp_path),
        base,
        {"summit": _feed("summit", None, "connection lost"), "archive": _feed("archive", archive)},
    )
    assert view["verdict"]["level"] == "DEGRADED", view["verdict"]


def test_a_summit_no_site_reaches_makes_the_archives_verdict_failing(tmp_path: Path) -> None:
    """Both summit links cut, seen from the archive (which cannot read the summit's held files): FAILING,
    because no site reaches the summit, so no file can leave it."""
    archive = _status("archive", "archive", {"summit": (False, False), "base": UP})
    base = _status("base", "relay", {"summit": (False, False), "archive": UP})
    feeds = {"summit": _feed("summit", None, "connection lost"), "base": _feed("base", base)}
    view = system_view("archive", topology(tmp_path), archive, feeds)
    assert view["verdict"]["level"] == "FAILING"
    assert (
        view["verdict"]["reason"]
        == "summit is unreachable: no site that can be read has it online (no file can leave it)"
    )


async def test_routine_deletions_do_not_push_a_failover_out_of_the_timeline(tmp_path: Path) -> None:
    """A night of routine retention events after a route went down: the timeline still shows the route_down
    (and the problem) among its 40 entries, with only the newest few routine events, oldest first."""
    journal = await open_journal(tmp_path / "journal.sqlite")
    try:
        reporter = Reporter("base", journal, SiteCounters())
        await reporter.event("route_down", "route primary down: no connection to archive's mailbox", route="primary")
        await reporter.problem("no_route", "3 file(s) held: no usable route")
        for n in range(200):
            await reporter.event("retention_deleted", f"deleted 9 relay copies ({n})", what="relay")
        shown = await journal.read(journal_console.timeline, 40)
    finally:
        await journal.close()
    kinds = [e["kind"] for e in shown]
    assert kinds[:2] == ["route_down", "no_route"], kinds
    assert kinds[2:] == ["retention_deleted"] * journal_console.ROUTINE_KEPT, kinds
    assert shown[-1]["message"] == "deleted 9 relay copies (199)" and shown[1]["stream"] == "problem"
