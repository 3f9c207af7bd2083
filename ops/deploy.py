"""Deployment from the topology: check a topology beyond parsing, and render one site's host files.

``skyrelay check --topology T [--site S]`` loads the topology as the daemons do (every problem at once)
and adds what only a deployment cares about: two listeners on one address, and, for the sites named
with ``--site`` (the ones installed on this host), that their key, password and account files exist and
fit the topology.

``skyrelay render --topology T --site S --out DIR`` writes, under ``DIR`` laid out as the host's file
system, everything the host of site ``S`` needs besides the program:

- ``etc/skyrelay/mosquitto-S.conf``: the site's broker (its port, TLS when its broker is ``mqtts://``,
  its password and ACL files, persistence);
- ``etc/skyrelay/S/broker/acl`` (always: it depends only on the sites and routes) and, given the
  ``--secrets`` folder of ``skyrelay secure``, ``passwords``, ``mqtt.password`` and ``signing.key``;
- ``etc/systemd/system/skyrelay@.service`` and ``mosquitto-skyrelay@.service`` (the shipped units, with
  the program's prefix) and ``skyrelay@S.service.d/10-directories.conf`` (the site's data directories
  writable under ``ProtectSystem=strict``, its broker's password file readable);
- ``INSTALL.md``: where each file goes, with owner and mode, and where the keys go.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path

from daemon.config import SiteConfig, Topology
from ops.accounts import acl_text, password_file_text, plan_accounts, site_specs
from ops.broker import MAX_PACKET_BYTES
from ops.secure import write_secret
from protocol.errors import ProtocolError
from protocol.signing import load_private_key, public_key_to_text

INSTALL_ROOT = Path("/etc/skyrelay")
PREFIX = Path("/opt/skyrelay/venv")
SHIPPED_PREFIX = "/opt/skyrelay/venv"
BROKER_STATE = Path("/var/lib/mosquitto-skyrelay")
STATE_DIRECTORY = Path("/var/lib/skyrelay")
UNITS = ("skyrelay@.service", "mosquitto-skyrelay@.service")


class RenderError(ValueError):
    """The site cannot be rendered as asked (the message says why)."""


# ---------------------------------------------------------------------------------------------------------
# check


def deployment_problems(topology: Topology, sites: Iterable[str] = ()) -> list[str]:
    """What would break a deployment of a topology that loads: clashing listeners; for ``sites``, their files.

    Args:
        topology: a loaded topology.
        sites: the sites installed on this host, whose key, password and account files must be here.
    """
    problems = _listener_clashes(topology.sites.values())
    problems += _hidden_directories(topology.sites.values())
    for name in sites:
        site = topology.sites.get(name)
        if site is None:
            problems.append(f"--site {name}: the topology has no such site (it has {', '.join(topology.sites)})")
            continue
        problems += _site_file_problems(site)
    return problems


def _listener_clashes(sites: Iterable[SiteConfig]) -> list[str]:
    """Every address that more than one listener (broker or data server) of the topology would bind."""
    users: dict[tuple[str, int], list[str]] = {}
    for site in sites:
        users.setdefault((site.broker.host, site.broker.port), []).append(f"sites.{site.name}.broker")
        users.setdefault((site.http_listen.host, site.http_listen.port), []).append(f"sites.{site.name}.http_listen")
    return [
        f"{' and '.join(names)} both listen on {host}:{port}" for (host, port), names in users.items() if len(names) > 1
    ]


HIDDEN_BY_UNIT = (Path("/home"), Path("/root"), Path("/run/user"))
"""Invisible to the daemon under the unit's ``ProtectHome=yes``."""


def _hidden_directories(sites: Iterable[SiteConfig]) -> list[str]:
    """Data directories the shipped unit hides from the daemon (``ProtectHome=yes``)."""
    problems = []
    for site in sites:
        named = [("state_dir", site.state_dir), ("inbox", site.inbox), ("archive_root", site.archive_root)]
        named += [(f"correction_dirs[{i}]", d) for i, d in enumerate(site.correction_dirs)]
        for label, directory in named:
            if directory is not None and any(directory.is_relative_to(h) for h in HIDDEN_BY_UNIT):
                problems.append(
                    f"sites.{site.name}.{label}: {directory} is invisible to skyrelay@{site.name} (ProtectHome=yes);"
                    " keep data under /srv/skyrelay or /var/lib/skyrelay"
                )
    return problems


def _site_file_problems(site: SiteConfig) -> list[str]:
    """The site's own files: signing key (matching its public key), broker password, HTTP accounts."""
    where = f"sites.{site.name}"
    problems: list[str] = []
    try:
        key = load_private_key(site.key_file)
    except FileNotFoundError:
        problems.append(f"{where}: signing key {site.key_file} is missing (`skyrelay secure` makes it)")
    except (OSError, ProtocolError) as exc:
        problems.append(f"{where}: signing key {site.key_file}: {exc}")
    else:
        if site.public_key and public_key_to_text(key.public_key()) != site.public_key:
            problems.append(f"{where}: signing key {site.key_file} does not match public_key (another site's key?)")
    for label, path in (("mqtt_password_file", site.mqtt_password_file), ("accounts_file", site.accounts_file)):
        if path is None:
            continue
        try:
            text = path.read_text()
        except OSError as exc:
            problems.append(f"{where}.{label}: cannot read {path}: {exc.strerror}")
            continue
        if not text.strip():
            problems.append(f"{where}.{label}: {path} is empty")
        elif label == "accounts_file" and site.mqtt_username and f"{site.mqtt_username}:" not in text:
            problems.append(f"{where}.{label}: {path} has no account {site.mqtt_username!r} (the site's own daemon)")
    return problems


# ---------------------------------------------------------------------------------------------------------
# render


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Rendered:
    """What :func:`render` wrote, by role."""

    mosquitto_conf: Path
    acl: Path
    passwords: Path | None
    units: tuple[Path, ...]
    dropin: Path
    install_notes: Path


def render(
    topology: Topology,
    site: str,
    out: Path,
    *,
    secrets: Path | None = None,
    install_root: Path = INSTALL_ROOT,
    prefix: Path = PREFIX,
    broker_state: Path = BROKER_STATE,
    units_dir: Path | None = None,
) -> Rendered:
    """Write the files of ``site``'s host under ``out`` (see the module docstring) and return their paths.

    Args:
        topology: the loaded topology.
        site: the site to render.
        out: the folder, laid out like the host's ``/``.
        secrets: the ``--out`` folder of ``skyrelay secure`` (its ``secrets.json`` and keys): then the broker's
            password file, the daemon's password and the signing key are written too.
        install_root: where the host keeps skyrelay's configuration (``/etc/skyrelay``).
        prefix: where the program is installed (the units' ``ExecStart``).
        broker_state: parent of the broker's persistence directory (``/var/lib/mosquitto-skyrelay``).
        units_dir: where the shipped unit files are (the source tree's ``systemd/`` by default).

    Raises:
        RenderError: unknown site, secrets that do not fit the topology, unit files not found.
    """
    cfg = topology.sites.get(site)
    if cfg is None:
        raise RenderError(f"unknown site {site!r}; the topology has {', '.join(topology.sites)}")
    etc = _under(out, install_root)
    site_etc = etc / site
    accounts_file = cfg.accounts_file or install_root / site / "broker" / "passwords"
    acl_file = accounts_file.with_name("acl")
    specs = site_specs({n: s.role for n, s in topology.sites.items()}, [r.sites for r in topology.routes])
    kept = _read_secrets(secrets)
    plan = plan_accounts(
        specs, operators=topology.operator_accounts, subscribers=topology.subscriber_accounts, passwords=kept
    )
    acl = _under(out, acl_file)
    write_secret(acl, acl_text(plan, site))
    passwords: Path | None = None
    if kept is not None:
        assert secrets is not None
        missing = sorted(a.username for a in plan.accounts_on(site) if a.username not in kept)
        if missing:
            raise RenderError(f"{secrets}/secrets.json has no password for {', '.join(missing)}: run skyrelay secure")
        passwords = _under(out, accounts_file)
        write_secret(passwords, password_file_text(plan.accounts_on(site)))
        own = plan.daemons[site]
        write_secret(_under(out, cfg.mqtt_password_file or site_etc / "mqtt.password"), own.password + "\n")
        key = secrets / site / "signing.key"
        if not key.is_file():
            raise RenderError(f"{key} is missing: run skyrelay secure --topology T --out {secrets} first")
        _copy_private(key, _under(out, cfg.key_file))
    conf = etc / f"mosquitto-{site}.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        mosquitto_conf(
            topology,
            site,
            password_file=accounts_file,
            acl_file=acl_file,
            persistence=broker_state / site,
            install_root=install_root,
        )
    )
    systemd = out / "etc" / "systemd" / "system"
    units = _write_units(systemd, units_dir or _shipped_units(), prefix, install_root)
    dropin = systemd / f"skyrelay@{site}.service.d" / "10-directories.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(directories_dropin(cfg))
    notes = out / "INSTALL.md"
    notes.write_text(
        install_notes(topology, site, install_root=install_root, acl_file=acl_file, secrets=kept is not None)
    )
    return Rendered(mosquitto_conf=conf, acl=acl, passwords=passwords, units=units, dropin=dropin, install_notes=notes)


def _under(out: Path, path: Path) -> Path:
    """``path`` (absolute, on the host) inside the render folder ``out``; a path already inside ``out`` (a
    staging root whose files are used in place, as the tests do) is kept."""
    if path.is_relative_to(out.absolute()):
        return path
    return out / path.relative_to(path.anchor)


def _copy_private(source: Path, target: Path) -> None:
    """Copy a private file, readable by its owner only from the start."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(source.read_bytes())


def _read_secrets(secrets: Path | None) -> dict[str, str] | None:
    if secrets is None:
        return None
    file = secrets / "secrets.json"
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise RenderError(f"cannot read {file} (made by skyrelay secure --out {secrets}): {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise RenderError(f"{file}: want a JSON object of username: password")
    return {str(k): v for k, v in data.items()}


def _shipped_units() -> Path:
    here = Path(__file__).resolve().parents[1] / "systemd"
    if not (here / UNITS[0]).is_file():
        raise RenderError(f"the unit files are not at {here}: give --units-dir (the source tree's systemd/)")
    return here


def _write_units(systemd: Path, units_dir: Path, prefix: Path, install_root: Path) -> tuple[Path, ...]:
    """The shipped units with the program's ``prefix`` and the configuration folder ``install_root``."""
    systemd.mkdir(parents=True, exist_ok=True)
    written = []
    for name in UNITS:
        try:
            text = (units_dir / name).read_text()
        except OSError as exc:
            raise RenderError(f"cannot read the unit {units_dir / name}: {exc.strerror}") from exc
        target = systemd / name
        text = text.replace(SHIPPED_PREFIX, str(prefix).rstrip("/"))
        target.write_text(text.replace(str(INSTALL_ROOT) + "/", str(install_root).rstrip("/") + "/"))
        written.append(target)
    return tuple(written)


def mosquitto_conf(
    topology: Topology,
    site: str,
    *,
    password_file: Path,
    acl_file: Path,
    persistence: Path,
    install_root: Path = INSTALL_ROOT,
) -> str:
    """The mosquitto configuration of ``site``'s mailbox broker."""
    cfg = topology.sites[site]
    port = cfg.broker.port
    dialers = "peer sites and alert subscribers (arrival notices)" if cfg.role == "archive" else "peer sites"
    if cfg.broker.tls:
        ca = topology.mqtt_ca_file or install_root / "tls" / "ca.crt"
        listener = (
            f"# TLS: the topology names this broker mqtts://; every client verifies it against {ca}.\n"
            "# The key and certificates must be readable by the mosquitto user.\n"
            f"listener {port}\n"
            "protocol mqtt\n"
            f"cafile {ca}\n"
            f"certfile {install_root / 'tls' / f'{site}.crt'}\n"
            f"keyfile {install_root / 'tls' / f'{site}.key'}\n"
            "tls_version tlsv1.2\n"
            "require_certificate false\n"
        )
    else:
        listener = (
            f"# All interfaces: {dialers} dial this listener; limit who can reach it with the firewall/VPN.\n"
            f"listener {port}\n"
            "protocol mqtt\n"
            "\n"
            "# Optional TLS listener, e.g. for alert subscribers outside the observatory network. To use TLS\n"
            f"# between sites, write this broker as mqtts://host:PORT in the topology and render again.\n"
            "# The key and certificates must be readable by the mosquitto user.\n"
            f"#listener {port + 7000}\n"
            "#protocol mqtt\n"
            f"#cafile {install_root / 'tls' / 'ca.crt'}\n"
            f"#certfile {install_root / 'tls' / f'{site}.crt'}\n"
            f"#keyfile {install_root / 'tls' / f'{site}.key'}\n"
            "#tls_version tlsv1.2\n"
            "#require_certificate false\n"
        )
    return f"""# mosquitto for skyrelay site "{site}": this site's mailbox.
# Rendered by `skyrelay render --topology {topology.path.name} --site {site}`; install as
# {install_root / f"mosquitto-{site}.conf"}, run by mosquitto-skyrelay@{site}.service. Render again after
# changing the topology rather than editing this file.
#
# The broker is a transport, not a store. Persistence is a snapshot written on a clean stop and every
# autosave_interval: after a crash (SIGKILL, power cut) queued messages are gone. That is fine by
# design: every sender journals what it sent and re-sends until the receiver's application-level
# ack arrives, so nothing is lost when the broker forgets. Never rely on the broker to hold a file's
# custody.

# Settings below apply to every listener.
per_listener_settings false

# ---- listeners ----------------------------------------------------------------------------------
# The port of the topology's sites.{site}.broker (peers may dial it through another address: [links]).
{listener}
# ---- who may connect ----------------------------------------------------------------------------
allow_anonymous false
# Made by `skyrelay secure` / `skyrelay render --secrets`: the accounts that have business on this broker
# (its own daemon site-{site}, its peers' daemons, operators, subscribers) and what each may publish and
# read. Owner root, group mosquitto, mode 0640. The daemon skyrelay@{site} reads the same password file
# (its accounts_file) for HTTP logins.
password_file {password_file}
acl_file {acl_file}

# ---- persistence (a convenience, not a guarantee: see the top of this file) ---------------------
persistence true
persistence_location {persistence}/
autosave_interval 60
# Sessions of subscribers that went away (MQTT 3.1.1 clean_session=false) are forgotten after this;
# skyrelay's own MQTT 5 sessions carry their own expiry.
persistent_client_expiration 7d

# ---- limits -------------------------------------------------------------------------------------
# The default (1000 per client) silently drops messages beyond it while a peer is offline; a night
# of offers and custody messages for a disconnected site must fit.
max_queued_messages 100000
max_inflight_messages 100
# No mailbox message is larger (a signed envelope and room for its topic and properties).
max_packet_size {MAX_PACKET_BYTES}
set_tcp_nodelay true

# ---- logging: to stderr, which systemd sends to the journal (which adds timestamps) -------------
log_dest stderr
log_timestamp false
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
"""


def directories_dropin(cfg: SiteConfig) -> str:
    """The ``skyrelay@<site>`` drop-in: the site's own directories writable, its broker's password file readable."""
    writable: list[Path] = []
    if cfg.state_dir != STATE_DIRECTORY / cfg.name:
        writable.append(cfg.state_dir)
    writable += [p for p in (cfg.inbox, cfg.archive_root) if p is not None]
    lines = [
        f"# skyrelay@{cfg.name}: rendered by `skyrelay render` from the topology; render again after changing it.",
        "# The unit's ProtectSystem=strict makes the file system read-only except its StateDirectory",
        f"# ({STATE_DIRECTORY / cfg.name}) and these. They must exist before the unit starts.",
        "[Service]",
    ]
    if writable:
        # The summit writes its inbox only to delete files after custody and retention.
        lines.append("ReadWritePaths=" + " ".join(str(p) for p in writable))
    if cfg.correction_dirs:
        lines.append("# Header corrections: read only; a missing folder is ignored.")
        lines.append("ReadOnlyPaths=" + " ".join(f"-{p}" for p in cfg.correction_dirs))
    if cfg.accounts_file is not None:
        lines.append("# The broker's password file (root:mosquitto 0640) is the daemon's accounts_file (HTTP logins).")
        lines.append("SupplementaryGroups=mosquitto")
    return "\n".join(lines) + "\n"


def install_notes(topology: Topology, site: str, *, install_root: Path, acl_file: Path, secrets: bool) -> str:
    """Where each rendered file goes on the host, with owner and mode, and where the keys go."""
    cfg = topology.sites[site]
    rows: list[tuple[str, str, str]] = [
        (str(install_root / f"mosquitto-{site}.conf"), "root:root 0644", "the broker's configuration"),
        (str(acl_file), "root:mosquitto 0640", "the broker's ACL"),
    ]
    if cfg.accounts_file is not None:
        rows.append(
            (str(cfg.accounts_file), "root:mosquitto 0640", "the broker's password file; the daemon's accounts_file")
        )
    if cfg.mqtt_password_file is not None:
        rows.append((str(cfg.mqtt_password_file), "skyrelay:skyrelay 0600", f"site-{site}'s broker password"))
    rows.append(
        (str(cfg.key_file), "skyrelay:skyrelay 0600", "the site's Ed25519 signing key (refused if others can read it)")
    )
    for label, path in (("http_cert_file", cfg.http_cert_file), ("http_key_file", cfg.http_key_file)):
        if path is not None:
            rows.append((str(path), "root:skyrelay 0640", f"the data server's {label.split('_')[1]}"))
    if cfg.broker.tls:
        rows.append((str(install_root / "tls" / f"{site}.crt"), "root:mosquitto 0640", "the broker's TLS certificate"))
        rows.append((str(install_root / "tls" / f"{site}.key"), "root:mosquitto 0640", "the broker's TLS key"))
    for label, path in (
        ("mqtt_ca_file", topology.mqtt_ca_file),
        ("http_ca_file", topology.http_ca_file),
        ("operator_key_file", topology.operator_key_file),
    ):
        if path is not None and label == "operator_key_file":
            rows.append((str(path), "operator 0600", "the operator's signing key: only where operators run commands"))
        elif path is not None:
            rows.append((str(path), "root:skyrelay 0644", f"{label}: the CA that verifies brokers or data servers"))
    rows += [
        ("/etc/systemd/system/skyrelay@.service", "root:root 0644", "the daemon's unit"),
        ("/etc/systemd/system/mosquitto-skyrelay@.service", "root:root 0644", "the broker's unit"),
        (
            f"/etc/systemd/system/skyrelay@{site}.service.d/10-directories.conf",
            "root:root 0644",
            "the site's directories",
        ),
    ]
    directories = [p for p in (cfg.inbox, cfg.archive_root) if p is not None]
    if cfg.state_dir != STATE_DIRECTORY / site:
        directories.insert(0, cfg.state_dir)
    width = max(len(r[0]) for r in rows)
    lines = [
        f"# Installing site {site!r} ({cfg.role})",
        "",
        "Copy this folder's files to the same paths on the host (`sudo cp -a etc/. /etc/` from here), then set owners",
        "and modes as listed:",
        "",
        *(f"    {path:<{width}}  {owner:<24} {what}" for path, owner, what in rows),
        "",
    ]
    if not secrets:
        lines += [
            "Not rendered (no --secrets): the broker's password file, the daemon's password and the signing key.",
            "Take them from the `skyrelay secure --out DIR` folder (DIR/<site>/), or render with --secrets DIR.",
            "",
        ]
    if directories:
        lines += ["Create the data directories before the first start:", ""]
        lines += [f"    sudo install -d -o skyrelay -g skyrelay -m 0750 {d}" for d in directories]
        lines.append("")
    lines += [
        "Then:",
        "",
        "    sudo systemctl daemon-reload",
        f"    skyrelay check --topology /etc/skyrelay/topology.toml --site {site}",
        f"    sudo systemctl enable --now mosquitto-skyrelay@{site} skyrelay@{site}",
        "",
    ]
    return "\n".join(lines)
