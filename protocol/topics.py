"""MQTT topics, all under ``skyrelay/v1/``."""

from __future__ import annotations

import re
from typing import Literal

from protocol.errors import ProtocolError

PREFIX = "skyrelay/v1"
SiteTopicKind = Literal["offer", "ack", "custody", "control", "batch"]
SITE_TOPIC_KINDS: tuple[str, ...] = ("offer", "ack", "custody", "control", "batch")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _segment(value: str, what: str) -> str:
    if not _SEGMENT_RE.match(value):
        raise ProtocolError(f"{value!r} is not a valid topic segment", field=what)
    return value


def site(site_name: str, kind: SiteTopicKind) -> str:
    """Topic of a site's mailbox: ``site/<site>/<kind>``."""
    return f"{PREFIX}/site/{_segment(site_name, 'site')}/{kind}"


def site_wildcard(site_name: str) -> str:
    """Every mailbox topic of one site."""
    return f"{PREFIX}/site/{_segment(site_name, 'site')}/+"


def parse_site(topic: str) -> tuple[str, str]:
    """Split a mailbox topic into (site, kind); raise ProtocolError otherwise."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != PREFIX or parts[2] != "site" or parts[4] not in SITE_TOPIC_KINDS:
        raise ProtocolError(f"not a mailbox topic: {topic!r}", field="topic")
    return parts[3], parts[4]


def presence(site_name: str) -> str:
    """Retained presence of a site."""
    return f"{PREFIX}/presence/{_segment(site_name, 'site')}"


def arrivals(instrument: str, detector: str) -> str:
    """Arrival notices of one detector."""
    return f"{PREFIX}/arrivals/{_segment(instrument, 'instrument')}/{_segment(detector, 'detector')}"


def exposures(instrument: str) -> str:
    """Exposure completeness notices of one instrument."""
    return f"{PREFIX}/arrivals/{_segment(instrument, 'instrument')}/exposure"


def alerts(instrument: str) -> str:
    """Difference-image alerts of one instrument."""
    return f"{PREFIX}/alerts/{_segment(instrument, 'instrument')}"


def problems(site_name: str) -> str:
    """Problems reported by a site."""
    return f"{PREFIX}/problems/{_segment(site_name, 'site')}"


def events(site_name: str) -> str:
    """Decisions and state changes of a site."""
    return f"{PREFIX}/events/{_segment(site_name, 'site')}"


def products(instrument: str) -> str:
    """Product notices (master calibrations...) of one instrument."""
    return f"{PREFIX}/products/{_segment(instrument, 'instrument')}"
