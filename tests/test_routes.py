"""Route health: breakers, choice of route, failback hold-down and operator policy (no network)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from daemon.config import Endpoint, Route, SiteConfig, Topology, Tuning
from daemon.journal import Journal
from daemon.sending.routes import Breaker, RouteTable


def topology(hold_down_s: float = 10.0) -> Topology:
    def site(name: str, role: str, port: int) -> SiteConfig:
        return SiteConfig(
            name=name,
            role=role,  # type: ignore[arg-type]
            broker=Endpoint(host="127.0.0.1", port=port),
            http_listen=Endpoint(host="127.0.0.1", port=port + 1000),
            state_dir=Path("/nonexistent"),
        )

    return Topology(
        path=Path("/nonexistent/topology.toml"),
        sites={
            "summit": site("summit", "summit", 1),
            "base": site("base", "relay", 2),
            "archive": site("archive", "archive", 3),
        },
        links={},
        routes=(
            Route(name="primary", sites=("summit", "base", "archive")),
            Route(name="direct", sites=("summit", "archive")),
        ),
        tuning=dataclasses.replace(Tuning(), breaker_failures=2, breaker_hold_down_s=hold_down_s),
        token="x" * 32,
    )


def test_a_breaker_opens_after_consecutive_failures_and_probes_after_the_hold_down() -> None:
    """Failures open it; the hold-down timer lets one probe pass; a success closes it, a failure reopens it."""
    breaker = Breaker(threshold=2, hold_down_s=5.0)
    assert not breaker.record_failure("ack timeout", now=0.0)
    assert breaker.record_failure("ack timeout", now=1.0)
    assert breaker.half_open_at == 6.0
    assert not breaker.half_open(now=5.9) and not breaker.allows()
    assert breaker.half_open(now=6.0) and breaker.state == "half_open" and breaker.allows()
    assert breaker.record_failure("still failing", now=6.5)
    assert not breaker.allows()
    assert breaker.half_open(now=11.5) and breaker.allows()
    assert breaker.record_success() and breaker.state == "closed" and breaker.failures == 0


def test_reading_a_breaker_never_changes_it() -> None:
    """Status pages and /metrics read the breaker; only the hold-down timer moves it to half-open."""
    breaker = Breaker(threshold=1, hold_down_s=1.0)
    breaker.record_failure("ack timeout", now=0.0)
    for _ in range(3):
        assert not breaker.allows()
    assert breaker.state == "open"


def test_time_alone_changes_a_route_at_known_moments() -> None:
    """The router sleeps until the next change: the end of a degraded period or of a failback hold-down."""
    up = {"base": True, "archive": True}
    table = RouteTable(topology(hold_down_s=10.0), "summit", lambda peer: up[peer])
    assert table.next_change_at(0.0) is None
    table.mark_degraded("direct", now=0.0)
    assert table.next_change_at(1.0) == 10.0
    table.refresh(now=1.0)
    up["base"] = False
    table.refresh(now=2.0)
    up["base"] = True
    table.refresh(now=3.0)
    assert table.next_change_at(4.0) == 10.0
    assert table.next_change_at(10.5) == 13.0


def test_new_files_take_the_first_healthy_route() -> None:
    """With every hop up the preferred route wins; with the base unreachable, direct is chosen."""
    up = {"base": True, "archive": True}
    table = RouteTable(topology(), "summit", lambda peer: up[peer])
    assert table.choose(now=0.0).name == "primary"  # type: ignore[union-attr]
    table.current = "primary"
    up["base"] = False
    assert table.choose(now=1.0).name == "direct"  # type: ignore[union-attr]


def test_failback_waits_for_the_hold_down_after_a_failure() -> None:
    """A route that failed is preferred again only after it has been healthy for the hold-down period."""
    up = {"base": True, "archive": True}
    table = RouteTable(topology(hold_down_s=10.0), "summit", lambda peer: up[peer])
    table.current = table.choose(now=0.0).name  # type: ignore[union-attr]
    up["base"] = False
    table.current = table.choose(now=1.0).name  # type: ignore[union-attr]
    assert table.current == "direct"
    up["base"] = True
    assert table.choose(now=2.0).name == "direct"  # type: ignore[union-attr]
    assert table.choose(now=11.9).name == "direct"  # type: ignore[union-attr]
    assert table.choose(now=12.0).name == "primary"  # type: ignore[union-attr]


def test_a_route_missing_its_custody_deadline_is_avoided_for_the_hold_down() -> None:
    """A degraded route (late custody: a hop the summit cannot see) is unhealthy until the hold-down ends."""
    table = RouteTable(topology(hold_down_s=10.0), "summit", lambda peer: True)
    primary = table.routes[0]
    table.mark_degraded("primary", now=0.0)
    assert not table.route_healthy(primary, now=5.0)
    assert table.route_healthy(primary, now=10.0)


async def test_operator_policy_forces_or_disables_routes_and_is_journaled(tmp_path: Path) -> None:
    """A forced route is used even when unhealthy; a disabled one never; with all disabled there is none;
    the policy survives a restart (it is read back from the journal)."""
    journal = Journal(tmp_path / "journal.sqlite")
    await journal.open()
    table = RouteTable(topology(), "summit", lambda peer: peer != "archive")
    await table.policy.apply(journal, "force", "direct")
    assert table.choose(now=0.0).name == "direct"  # type: ignore[union-attr]
    await table.policy.apply(journal, "disable", "direct")
    assert table.choose(now=0.0).name == "primary"  # type: ignore[union-attr]
    await table.policy.apply(journal, "disable", "primary")
    assert table.choose(now=0.0) is None
    with pytest.raises(KeyError):
        await table.policy.apply(journal, "force", "bogus")
    again = RouteTable(topology(), "summit", lambda peer: True)
    await again.policy.load(journal)
    assert again.policy.as_dict() == {"primary": "disable", "direct": "disable"}
    await journal.close()


def test_the_view_shows_health_evidence_per_route() -> None:
    """``skyrelay routes`` shows the next hop, its connection and breaker, and what is queued."""
    table = RouteTable(topology(), "summit", lambda peer: peer == "archive")
    table.breaker("base").record_failure("ack timeout", now=0.0)
    views = {v.name: v for v in table.view({"primary": 3}, now=0.0)}
    assert not views["primary"].healthy and views["direct"].healthy
    assert views["primary"].evidence["connected"] is False
    assert views["primary"].evidence["queued"] == 3
    assert views["primary"].evidence["last_failure"] == "ack timeout"
