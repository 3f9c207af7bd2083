"""Which running system an operator command talks to: a ``skyrelay up`` workdir or a topology file.

``--workdir DIR`` reads ``DIR/cluster.json`` (a one-machine cluster: its ``credentials`` and the
operator's key); ``--topology FILE`` reads the same topology the systemd services run with, including
the operator's broker account (``[security] mqtt_username``/``mqtt_password``), signing key
(``operator_key_file``) and TLS. Operator commands log in as the operator (MQTT and HTTP Basic) and
sign control messages with the operator's key; ``subscribe`` logs in as the subscriber.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.config import Topology, load_topology
from daemon.errors import TopologyError
from ops.output import CliError, Exit
from protocol.errors import ProtocolError
from protocol.signing import load_private_key, seal

Role = Literal["operator", "subscriber"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Login:
    """A broker/HTTP account."""

    username: str
    password: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """The sites of a running system as an operator's command reaches them."""

    http: dict[str, str]
    brokers: dict[str, str]
    token: str
    summit: str
    archive: str
    topology: Topology | None = None
    logins: dict[str, Login] = dataclasses.field(default_factory=dict)
    operator: str = "operator"
    operator_key_file: Path | None = None

    def urlopen(self, request: str | urllib.request.Request, *, timeout_s: float, role: Role = "operator") -> Any:
        """Open an HTTP(S) request to a site, logged in as ``role``, verifying HTTPS with the topology's CA."""
        if isinstance(request, str):
            request = urllib.request.Request(request)
        login = self.logins.get(role)
        if login is not None and not request.has_header("Authorization"):
            basic = base64.b64encode(f"{login.username}:{login.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {basic}")
        context = self.topology.http_tls_context() if self.topology is not None else None
        return urllib.request.urlopen(request, timeout=timeout_s, context=context)

    def request_json(
        self,
        request: str | urllib.request.Request,
        *,
        timeout_s: float = 10.0,
        role: Role = "operator",
    ) -> Any:
        """A site's JSON answer to ``request``.

        Raises:
            CliError: the site refused (``Exit.REFUSED``, with the site's own message: ``dayobs must be
                YYYYMMDD``, not ``HTTP Error 400``) or could not be reached in time (``Exit.UNREACHABLE``).
        """
        url = request if isinstance(request, str) else request.full_url
        try:
            with self.urlopen(request, timeout_s=timeout_s, role=role) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise CliError(f"{url} refused ({exc.code}): {server_message(exc)}", Exit.REFUSED) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, socket.timeout | TimeoutError):
                reason = f"no answer within {timeout_s:g}s"
            raise CliError(f"cannot reach {url}: {reason}", Exit.UNREACHABLE) from None
        except ValueError as exc:
            raise CliError(f"{url} answered with something that is not JSON: {exc}", Exit.FAILED) from None

    def sign_control(self, body: bytes) -> bytes:
        """A control message sealed with the operator's key, for the summit's mailbox."""
        if self.operator_key_file is None:
            raise CliError("no operator signing key (operator_key_file in the topology's [security])", Exit.USAGE)
        try:
            key: Ed25519PrivateKey = load_private_key(self.operator_key_file)
        except (OSError, ProtocolError) as exc:
            raise CliError(f"cannot load the operator key {self.operator_key_file}: {exc}", Exit.USAGE) from None
        return seal(body, kind="control", signer=self.operator, key=key, to=self.summit)

    def mqtt_client(self, site: str, role: Role = "operator") -> aiomqtt.Client:
        """An MQTT v5 client for ``site``'s broker, logged in as ``role``, with the topology's TLS."""
        url = urlsplit(self.brokers[site])
        topo = self.topology
        tls: ssl.SSLContext | None = None
        if url.scheme == "mqtts":
            tls = topo.mqtt_tls_context() if topo is not None else ssl.create_default_context()
        return aiomqtt.Client(
            url.hostname or "127.0.0.1",
            url.port or 1883,
            protocol=aiomqtt.ProtocolVersion.V5,
            username=login.username if (login := self.logins.get(role)) else None,
            password=login.password if login else None,
            tls_context=tls,
        )


DEFAULT_WORKDIR = "skyrelay-demo"


def server_message(exc: urllib.error.HTTPError) -> str:
    """What a site said when it refused a request: its ``error`` field, or its text, not ``HTTP Error 400``."""
    with exc:
        try:
            body = exc.read().decode("utf-8", "replace").strip()
        except OSError:
            body = ""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "reason", "message"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return body[:500] or f"{exc.reason}"


def target_options() -> argparse.ArgumentParser:
    """A parent parser with ``--workdir`` / ``--topology`` (pass it in ``parents=[...]``).

    Their defaults are suppressed, so the options can be given to a command group and to its
    sub-command alike (``drill --workdir D cut L`` and ``drill cut L --workdir D``); :func:`resolve`
    and :func:`workdir_of` apply the default.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--workdir",
        default=argparse.SUPPRESS,
        help=f"a `skyrelay up` cluster's directory, read from its cluster.json (default: {DEFAULT_WORKDIR})",
    )
    parent.add_argument(
        "--topology",
        default=argparse.SUPPRESS,
        help="a deployed system's topology file instead (e.g. /etc/skyrelay/topology.toml)",
    )
    return parent


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--workdir`` (a ``skyrelay up`` cluster, the default) or ``--topology`` (a deployed system)."""
    for action in target_options()._actions:
        if action.option_strings:
            parser._add_action(action)


def workdir_of(args: argparse.Namespace) -> Path:
    """The ``--workdir`` given, or the default."""
    return Path(getattr(args, "workdir", None) or DEFAULT_WORKDIR)


def resolve(args: argparse.Namespace) -> Target:
    """The target named by ``--topology`` or ``--workdir``.

    Raises:
        CliError: both given, the topology is invalid, or the workdir has no ``cluster.json`` (``Exit.USAGE``).
    """
    if getattr(args, "topology", None) and getattr(args, "workdir", None):
        raise CliError("give --workdir or --topology, not both", Exit.USAGE)
    if getattr(args, "topology", None):
        try:
            topology = load_topology(args.topology, check_dirs=False)
        except TopologyError as exc:
            raise CliError(str(exc), Exit.USAGE) from None
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
            logins=_topology_logins(topology),
            operator=next(iter(topology.operators), "operator"),
            operator_key_file=topology.operator_key_file,
        )
    workdir = workdir_of(args)
    path = workdir / "cluster.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise CliError(
            f"no {path}: is `skyrelay up --workdir {workdir}` running? (for a deployed system pass --topology)",
            Exit.USAGE,
        ) from None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}", Exit.USAGE) from None
    sites = info["sites"]
    generated_topology: Topology | None = None
    generated = Path(info.get("topology") or workdir / "topology.toml")
    if generated.is_file():  # written by `skyrelay up`: its CA for HTTPS and MQTT over TLS
        try:
            generated_topology = load_topology(generated, check_dirs=False)
        except TopologyError as exc:
            raise CliError(str(exc), Exit.USAGE) from None
    return Target(
        http={name: site["http"] for name, site in sites.items()},
        brokers={name: site["broker"] for name, site in sites.items()},
        token=info.get("token", ""),
        summit="summit",
        archive="archive",
        topology=generated_topology,
        logins={
            role: Login(username=c["username"], password=c["password"])
            for role, c in info.get("credentials", {}).items()
        },
        operator=info.get("operator", "operator"),
        operator_key_file=Path(info["operator_key"]) if info.get("operator_key") else None,
    )


def _topology_logins(topology: Topology) -> dict[str, Login]:
    """A deployed system: the operator's account from ``[security]`` serves both roles."""
    if topology.mqtt_username is None or topology.mqtt_password is None:
        return {}
    login = Login(username=topology.mqtt_username, password=topology.mqtt_password)
    return {"operator": login, "subscriber": login}
