"""Which running system an operator command talks to: a ``skyrelay up`` workdir or a topology file.

``--workdir DIR`` reads ``DIR/cluster.json`` (a one-machine cluster); ``--topology FILE`` reads the
same topology the systemd services run with, including broker credentials and TLS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from daemon.config import Topology, load_topology
from daemon.errors import TopologyError


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """The sites of a running system as an operator's command reaches them."""

    http: dict[str, str]
    brokers: dict[str, str]
    token: str
    summit: str
    archive: str
    topology: Topology | None = None

    def urlopen(self, request: str | urllib.request.Request, *, timeout_s: float) -> Any:
        """Open an HTTP(S) request to a site's data server, verifying HTTPS with the topology's CA."""
        context = self.topology.http_tls_context() if self.topology is not None else None
        return urllib.request.urlopen(request, timeout=timeout_s, context=context)

    def mqtt_client(self, site: str) -> aiomqtt.Client:
        """An MQTT v5 client for ``site``'s broker, with the topology's credentials and TLS."""
        url = urlsplit(self.brokers[site])
        topo = self.topology
        tls: ssl.SSLContext | None = None
        if url.scheme == "mqtts":
            tls = topo.mqtt_tls_context() if topo is not None else ssl.create_default_context()
        return aiomqtt.Client(
            url.hostname or "127.0.0.1",
            url.port or 1883,
            protocol=aiomqtt.ProtocolVersion.V5,
            username=topo.mqtt_username if topo else None,
            password=topo.mqtt_password if topo else None,
            tls_context=tls,
        )


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``--workdir`` (a ``skyrelay up`` cluster, the default) or ``--topology`` (a deployed system)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workdir", default="skyrelay-demo", help="a `skyrelay up` cluster (reads cluster.json)")
    group.add_argument("--topology", help="a deployed system's topology file (e.g. /etc/skyrelay/topology.toml)")


def resolve(args: argparse.Namespace) -> Target:
    """The target named by ``--topology`` or ``--workdir``; exits with a clear message when missing."""
    if getattr(args, "topology", None):
        try:
            topology = load_topology(args.topology, check_dirs=False)
        except TopologyError as exc:
            raise SystemExit(f"skyrelay: {exc}") from None
        return Target(
            http={name: site.http_url for name, site in topology.sites.items()},
            brokers={
                name: f"{'mqtts' if site.broker.tls else 'mqtt'}://{site.broker.host}:{site.broker.port}"
                for name, site in topology.sites.items()
            },
            token=topology.token,
            summit=topology.summit.name,
            archive=topology.archive.name,
            topology=topology,
        )
    path = Path(args.workdir) / "cluster.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(
            f"skyrelay: no {path}: is `skyrelay up --workdir {args.workdir}` running? "
            "(for a deployed system pass --topology)"
        ) from None
    sites = info["sites"]
    generated_topology: Topology | None = None
    generated = Path(info.get("topology") or Path(args.workdir) / "topology.toml")
    if generated.is_file():  # written by `skyrelay up`: its CA for HTTPS and MQTT over TLS
        try:
            generated_topology = load_topology(generated, check_dirs=False)
        except TopologyError as exc:
            raise SystemExit(f"skyrelay: {exc}") from None
    return Target(
        http={name: site["http"] for name, site in sites.items()},
        brokers={name: site["broker"] for name, site in sites.items()},
        token=info.get("token", ""),
        summit="summit",
        archive="archive",
        topology=generated_topology,
    )
