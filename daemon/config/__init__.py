"""The topology file: sites, links, routes and tuning, validated once at start-up.

Every site reads the same TOML file and its own name. :func:`load_topology` (in
:mod:`~daemon.config.load`) reports every problem at once so an operator fixes the file in one pass; the
frozen values it returns are in :mod:`~daemon.config.model`.
"""

from __future__ import annotations

from daemon.config.load import load_topology
from daemon.config.model import (
    ROLES,
    Endpoint,
    LinkConfig,
    Processing,
    Role,
    Route,
    SiteConfig,
    Topology,
    Tuning,
)

__all__ = [
    "ROLES",
    "Endpoint",
    "LinkConfig",
    "Processing",
    "Role", "Route", "SiteConfig", "Topology", "Tuning", "load_topology"]
