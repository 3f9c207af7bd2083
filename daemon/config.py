"""The topology file: sites, links, routes and tuning, validated once at start-up.

Every site reads the same TOML file and its own name. ``load_topology`` reports every
problem at once so an operator fixes the file in one pass.
"""

from __future__ import annotations

import dataclasses
import secrets
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from daemon.errors import TopologyError

Role = Literal["summit", "relay", "archive"]
ROLES: tuple[str, ...] = ("summit", "relay", "archive")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A TCP endpoint."""

    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SiteConfig:
    """One site: its mailbox broker, data server, directories."""

    name: str
    role: Role
    broker: Endpoint
    http_listen: Endpoint
    state_dir: Path
    inbox: Path | None = None
    archive_root: Path | None = None
    correction_dirs: tuple[Path, ...] = ()
    retention_s: float | None = None
    http_cert_file: Path | None = None
    http_key_file: Path | None = None

    @property
    def http_tls(self) -> bool:
        """Whether the data server speaks HTTPS (a certificate is configured)."""
        return self.http_cert_file is not None

    @property
    def http_url(self) -> str:
        """The data server's own URL."""
        scheme = "https" if self.http_tls else "http"
        return f"{scheme}://{self.http_listen.host}:{self.http_listen.port}"

    def http_server_tls_context(self) -> ssl.SSLContext | None:
        """The data server's TLS (its certificate and key), or None for plain HTTP."""
        if self.http_cert_file is None or self.http_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.http_cert_file), str(self.http_key_file))
        return context


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LinkConfig:
    """How site ``src`` reaches site ``dst``: the broker and HTTP addresses to dial."""

    src: str
    dst: str
    broker: Endpoint
    http: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """An ordered path of sites from the summit to the archive."""

    name: str
    sites: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Tuning:
    """Timers and limits; the defaults suit a LAN-to-WAN observatory link."""

    ack_timeout_s: float = 5.0
    ack_timeout_per_mb_s: float = 0.05
    publish_timeout_s: float = 3.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    mqtt_keepalive_s: int = 5
    window_per_peer: int = 16
    pull_concurrency: int = 4
    rescan_interval_s: float = 60.0
    breaker_failures: int = 3
    breaker_hold_down_s: float = 10.0
    end_to_end_timeout_s: float = 60.0
    late_after_s: float = 60.0
    report_retry_every: int = 5
    max_file_bytes: int = 64 << 30


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """The whole system as every site sees it."""

    path: Path
    sites: Mapping[str, SiteConfig]
    links: Mapping[tuple[str, str], LinkConfig]
    routes: tuple[Route, ...]
    tuning: Tuning
    token: str
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    http_ca_file: Path | None = None

    @property
    def summit(self) -> SiteConfig:
        """The site where files enter."""
        return next(s for s in self.sites.values() if s.role == "summit")

    @property
    def archive(self) -> SiteConfig:
        """The site where files end."""
        return next(s for s in self.sites.values() if s.role == "archive")

    def link(self, src: str, dst: str) -> LinkConfig:
        """The addresses ``src`` dials to reach ``dst`` (the far site's own by default)."""
        found = self.links.get((src, dst))
        if found is not None:
            return found
        far = self.sites[dst]
        return LinkConfig(src=src, dst=dst, broker=far.broker, http=far.http_url)

    def peers(self, site: str) -> tuple[str, ...]:
        """Sites that ``site`` exchanges messages with: its neighbours on any route."""
        out: list[str] = []
        for route in self.routes:
            for i, name in enumerate(route.sites):
                if name != site:
                    continue
                for j in (i - 1, i + 1):
                    if 0 <= j < len(route.sites) and route.sites[j] not in out:
                        out.append(route.sites[j])
        return tuple(out)

    def mqtt_tls_context(self) -> ssl.SSLContext:
        """TLS for ``mqtts://`` brokers: verify against ``mqtt_ca_file``, with a client certificate if set."""
        context = ssl.create_default_context(cafile=str(self.mqtt_ca_file) if self.mqtt_ca_file else None)
        if self.mqtt_cert_file is not None and self.mqtt_key_file is not None:
            context.load_cert_chain(str(self.mqtt_cert_file), str(self.mqtt_key_file))
        return context

    def http_tls_context(self) -> ssl.SSLContext | None:
        """TLS for pulls from ``https://`` data servers, verified against ``http_ca_file``; None if none is."""
        if self.http_ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.http_ca_file))

    def route(self, name: str) -> Route | None:
        """The route called ``name``."""
        return next((r for r in self.routes if r.name == name), None)


def _endpoint(value: Any, where: str, problems: list[str], *, scheme: str | None = None) -> Endpoint | None:
    if not isinstance(value, str):
        problems.append(f"{where}: must be a string like '{scheme or 'host'}://127.0.0.1:1883'")
        return None
    text = value if "://" in value else f"tcp://{value}"
    parts = urlsplit(text)
    allowed = (scheme, f"{scheme}s") if scheme in ("mqtt", "http") else (scheme,)
    if scheme is not None and "://" in value and parts.scheme not in allowed:
        problems.append(f"{where}: scheme must be {' or '.join(f'{a}://' for a in allowed)}, got {parts.scheme}://")
        return None
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        problems.append(f"{where}: needs host and port, got {value!r}")
        return None
    return Endpoint(host=parts.hostname, port=port, tls=parts.scheme in ("mqtts", "https"))


def _path(base: Path, value: Any, where: str, problems: list[str]) -> Path | None:
    if not isinstance(value, str) or not value:
        problems.append(f"{where}: must be a path string")
        return None
    path = Path(value)
    return path if path.is_absolute() else (base / path).resolve()


def _tls_problem(where: str, *, ca: Path | None = None, pair: tuple[Path, Path] | None = None) -> str | None:
    """Why a CA file or a certificate/key pair cannot be loaded by the ssl module, or None if it can."""
    try:
        context = ssl.create_default_context()
        if ca is not None:
            context.load_verify_locations(cafile=str(ca))
        if pair is not None:
            context.load_cert_chain(str(pair[0]), str(pair[1]))
    except (ssl.SSLError, OSError) as exc:
        what = ca if ca is not None else " and ".join(map(str, pair or ()))
        return f"{where}: cannot load {what}: {exc}"
    return None


def load_topology(path: str | Path, *, check_dirs: bool = True) -> Topology:
    """Read and validate a topology file; raise TopologyError listing every problem.

    Args:
        path: the TOML file.
        check_dirs: also require that each site's configured directories exist or can be created
            (an inbox or archive root that is missing is created; one that is a file is an error).
    """
    path = Path(path)
    problems: list[str] = []
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise TopologyError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(str(path), [f"not valid TOML: {exc}"]) from exc
    base = path.parent.resolve()
    known_top = {"sites", "links", "routes", "tuning", "security"}
    for key in sorted(set(raw) - known_top):
        problems.append(f"unknown section [{key}] (known: {', '.join(sorted(known_top))})")

    sites: dict[str, SiteConfig] = {}
    raw_sites = raw.get("sites")
    if not isinstance(raw_sites, dict) or not raw_sites:
        problems.append("[sites]: at least a summit and an archive site are required")
        raw_sites = {}
    for name, spec in raw_sites.items():
        where = f"sites.{name}"
        if not isinstance(spec, dict):
            problems.append(f"{where}: must be a table")
            continue
        role = spec.get("role")
        if role not in ROLES:
            problems.append(f"{where}.role: must be one of {', '.join(ROLES)}, got {role!r}")
            continue
        broker = _endpoint(spec.get("broker"), f"{where}.broker", problems, scheme="mqtt")
        http = _endpoint(spec.get("http_listen"), f"{where}.http_listen", problems)
        state_dir = _path(base, spec.get("state_dir"), f"{where}.state_dir", problems)
        inbox = archive_root = None
        if role == "summit":
            inbox = _path(base, spec.get("inbox"), f"{where}.inbox", problems)
        if role == "archive":
            archive_root = _path(base, spec.get("archive_root"), f"{where}.archive_root", problems)
        corrections = tuple(
            p
            for i, v in enumerate(spec.get("correction_dirs", []))
            if (p := _path(base, v, f"{where}.correction_dirs[{i}]", problems)) is not None
        )
        cert_files = {
            key: _path(base, spec[key], f"{where}.{key}", problems) if key in spec else None
            for key in ("http_cert_file", "http_key_file")
        }
        if (cert_files["http_cert_file"] is None) != (cert_files["http_key_file"] is None):
            problems.append(f"{where}: http_cert_file and http_key_file go together (the data server's TLS)")
        for key, file in cert_files.items():
            if check_dirs and file is not None and not file.is_file():
                problems.append(f"{where}.{key}: {file} is not a readable file")
        cert, key_file = cert_files["http_cert_file"], cert_files["http_key_file"]
        pair = (cert, key_file) if cert is not None and key_file is not None else None
        if check_dirs and pair and all(f.is_file() for f in pair):
            problem = _tls_problem(f"{where}.http_cert_file", pair=pair)
            problems.extend([problem] if problem else [])
        retention = spec.get("retention_s", 0.0 if role == "relay" else None)
        if retention is not None and (not isinstance(retention, int | float) or retention < 0):
            problems.append(f"{where}.retention_s: must be a number >= 0")
            retention = None
        unknown = set(spec) - {
            "role",
            "broker",
            "http_listen",
            "state_dir",
            "inbox",
            "archive_root",
            "correction_dirs",
            "retention_s",
            "http_cert_file",
            "http_key_file",
        }
        for key in sorted(unknown):
            problems.append(f"{where}.{key}: unknown setting")
        if broker is None or http is None or state_dir is None:
            continue
        sites[name] = SiteConfig(
            name=name,
            role=role,
            broker=broker,
            http_listen=http,
            state_dir=state_dir,
            inbox=inbox,
            archive_root=archive_root,
            correction_dirs=corrections,
            retention_s=float(retention) if retention is not None else None,
            http_cert_file=cert_files["http_cert_file"],
            http_key_file=cert_files["http_key_file"],
        )
    for role in ("summit", "archive"):
        count = sum(1 for s in sites.values() if s.role == role)
        if raw_sites and count != 1:
            problems.append(f"[sites]: exactly one site must have role = {role!r} (found {count})")

    links: dict[tuple[str, str], LinkConfig] = {}
    raw_links = raw.get("links", {})
    for src, targets in raw_links.items() if isinstance(raw_links, dict) else []:
        if src not in raw_sites:
            problems.append(f"links.{src}: unknown site {src!r}")
            continue
        for dst, spec in targets.items() if isinstance(targets, dict) else []:
            where = f"links.{src}.{dst}"
            if dst not in raw_sites:
                problems.append(f"{where}: unknown site {dst!r}")
                continue
            if not isinstance(spec, dict):
                problems.append(f"{where}: must be a table with broker and http")
                continue
            broker = _endpoint(spec.get("broker"), f"{where}.broker", problems, scheme="mqtt")
            http_ep = _endpoint(spec.get("http"), f"{where}.http", problems, scheme="http")
            if broker and http_ep:
                far = sites.get(dst)
                if far is not None and http_ep.tls != far.http_tls:
                    problems.append(
                        f"{where}.http: {dst}'s data server speaks {'https' if far.http_tls else 'http'} "
                        f"(http_cert_file {'set' if far.http_tls else 'not set'}), the link says "
                        f"{'https' if http_ep.tls else 'http'}://"
                    )
                scheme = "https" if http_ep.tls else "http"
                links[(src, dst)] = LinkConfig(src=src, dst=dst, broker=broker, http=f"{scheme}://{http_ep}")

    routes: list[Route] = []
    raw_routes = raw.get("routes")
    if not isinstance(raw_routes, dict) or not raw_routes:
        problems.append("[routes]: at least one route from the summit to the archive is required")
        raw_routes = {}
    summit = next((n for n, s in sites.items() if s.role == "summit"), None)
    archive = next((n for n, s in sites.items() if s.role == "archive"), None)
    for name, hops in raw_routes.items():
        where = f"routes.{name}"
        if not isinstance(hops, list) or len(hops) < 2 or not all(isinstance(h, str) for h in hops):
            problems.append(f"{where}: must be a list of at least two site names")
            continue
        bad = [h for h in hops if h not in raw_sites]
        if bad:
            problems.append(f"{where}: unknown site(s) {', '.join(bad)}")
            continue
        if len(set(hops)) != len(hops):
            problems.append(f"{where}: a site appears twice")
        if summit is not None and hops[0] != summit:
            problems.append(f"{where}: must start at the summit {summit!r}, starts at {hops[0]!r}")
        if archive is not None and hops[-1] != archive:
            problems.append(f"{where}: must end at the archive {archive!r}, ends at {hops[-1]!r}")
        for middle in hops[1:-1]:
            if middle in sites and sites[middle].role != "relay":
                problems.append(f"{where}: {middle!r} in the middle of a route must have role 'relay'")
        routes.append(Route(name=name, sites=tuple(hops)))

    tuning_raw = raw.get("tuning", {})
    tuning = Tuning()
    if isinstance(tuning_raw, dict):
        fields = {f.name: f for f in dataclasses.fields(Tuning)}
        updates: dict[str, Any] = {}
        for key, value in tuning_raw.items():
            if key not in fields:
                problems.append(f"tuning.{key}: unknown setting")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                problems.append(f"tuning.{key}: must be a positive number")
            else:
                updates[key] = type(getattr(tuning, key))(value)
        tuning = dataclasses.replace(tuning, **updates)

    security = raw.get("security", {})
    token: str | None = None
    username = password = None
    tls_files: dict[str, Path | None] = {}
    if isinstance(security, dict):
        if "token" in security:
            token = str(security["token"])
        elif "token_file" in security:
            token_path = _path(base, security["token_file"], "security.token_file", problems)
            if token_path is not None:
                try:
                    token = token_path.read_text().strip()
                except OSError as exc:
                    problems.append(f"security.token_file: cannot read {token_path}: {exc.strerror}")
        known_security = {
            "token",
            "token_file",
            "mqtt_username",
            "mqtt_password",
            "mqtt_ca_file",
            "mqtt_cert_file",
            "mqtt_key_file",
            "http_ca_file",
        }
        for key in sorted(set(security) - known_security):
            problems.append(f"security.{key}: unknown setting")
        username = security.get("mqtt_username")
        password = security.get("mqtt_password")
        for key in ("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file", "http_ca_file"):
            tls_files[key] = _path(base, security[key], f"security.{key}", problems) if key in security else None
            if check_dirs and tls_files[key] is not None and not tls_files[key].is_file():  # type: ignore[union-attr]
                problems.append(f"security.{key}: {tls_files[key]} is not a readable file")
        if (tls_files["mqtt_cert_file"] is None) != (tls_files["mqtt_key_file"] is None):
            problems.append("security: mqtt_cert_file and mqtt_key_file go together (client certificate)")
        if check_dirs:
            readable = {k: f for k, f in tls_files.items() if f is not None and f.is_file()}
            for key in ("mqtt_ca_file", "http_ca_file"):
                if key in readable and (problem := _tls_problem(f"security.{key}", ca=readable[key])):
                    problems.append(problem)
            if "mqtt_cert_file" in readable and "mqtt_key_file" in readable:
                pair = (readable["mqtt_cert_file"], readable["mqtt_key_file"])
                if problem := _tls_problem("security.mqtt_cert_file", pair=pair):
                    problems.append(problem)
    if token is not None and len(token) < 16:
        problems.append("security.token: must be at least 16 characters")
    if token is None:
        problems.append("[security]: a pull token is required (token = '...' or token_file = '...')")
        token = secrets.token_hex(16)

    if check_dirs:
        for site in sites.values():
            for label, directory in (
                ("inbox", site.inbox),
                ("archive_root", site.archive_root),
                ("state_dir", site.state_dir),
            ):
                if directory is not None and directory.exists() and not directory.is_dir():
                    problems.append(f"sites.{site.name}.{label}: {directory} exists and is not a directory")
    uses_tls = any(s.broker.tls for s in sites.values()) or any(link.broker.tls for link in links.values())
    if uses_tls and tls_files.get("mqtt_ca_file") is None:
        problems.append("security.mqtt_ca_file: required to verify brokers reached by mqtts://")
    if any(s.http_tls for s in sites.values()) and tls_files.get("http_ca_file") is None:
        problems.append("security.http_ca_file: required to verify data servers that speak https")
    if problems:
        raise TopologyError(str(path), problems)
    return Topology(
        path=path.resolve(),
        sites=sites,
        links=links,
        routes=tuple(routes),
        tuning=tuning,
        token=token,
        mqtt_username=username,
        mqtt_password=password,
        mqtt_ca_file=tls_files.get("mqtt_ca_file"),
        mqtt_cert_file=tls_files.get("mqtt_cert_file"),
        mqtt_key_file=tls_files.get("mqtt_key_file"),
        http_ca_file=tls_files.get("http_ca_file"),
    )
