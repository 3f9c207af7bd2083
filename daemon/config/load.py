"""Load the topology file: read the TOML once, validate every section, report every problem at once.

Each section has its own reader (``[sites.X]``, ``[links]``, ``[routes]``, ``[tuning]``, ``[security]``)
that appends what is wrong to one shared list and returns what it could build, so an operator sees every
problem of the file in one pass and fixes it in one edit.
"""

from __future__ import annotations

import dataclasses
import secrets
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from daemon.config.model import (
    PRODUCT_KINDS,
    ROLES,
    Endpoint,
    LinkConfig,
    Processing,
    Retention,
    Route,
    SiteConfig,
    Topology,
    Tuning,
)
from daemon.errors import TopologyError
from protocol.errors import ProtocolError
from protocol.signing import public_key_from_text

__all__ = ["load_topology"]

_SECTIONS: Final = frozenset({"sites", "links", "routes", "tuning", "security", "operators", "processing", "retention"})
_SITE_SETTINGS: Final = frozenset(
    {
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
        "public_key",
        "signing_key_file",
        "mqtt_username",
        "mqtt_password_file",
        "accounts_file",
    }
)
_TLS_FILES: Final = ("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file", "http_ca_file")
_SECURITY_SETTINGS: Final = frozenset(
    {
        "token",
        "token_file",
        "mqtt_username",
        "mqtt_password",
        "operator_accounts",
        "subscriber_accounts",
        "operator_key_file",
        "metrics_token",
        "metrics_open",
        *_TLS_FILES,
    }
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Reading:
    """What every section reader needs: where relative paths start, whether to look at the disk, the problems."""

    base: Path
    check_dirs: bool
    problems: list[str]

    def problem(self, text: str) -> None:
        self.problems.append(text)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Security:
    """The ``[security]`` section as read: the pull token, MQTT credentials and TLS files."""

    token: str | None = None
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    tls_files: Mapping[str, Path | None] = dataclasses.field(default_factory=dict)
    operator_accounts: tuple[str, ...] = ("operator",)
    subscriber_accounts: tuple[str, ...] = ("subscriber",)
    operator_key_file: Path | None = None
    metrics_token: str | None = None
    metrics_open: bool = False


def load_topology(path: str | Path, *, check_dirs: bool = True) -> Topology:
    """Read and validate a topology file; raise TopologyError listing every problem.

    Args:
        path: the TOML file.
        check_dirs: also require that each site's configured directories exist or can be created
            (an inbox or archive root that is missing is created; one that is a file is an error).

    Returns:
        The topology.

    Raises:
        TopologyError: The file cannot be read, is not TOML, or has problems (all of them are listed).
    """
    path = Path(path)
    raw = _read_toml(path)
    reading = _Reading(base=path.parent.resolve(), check_dirs=check_dirs, problems=[])
    for key in sorted(set(raw) - _SECTIONS):
        reading.problem(f"unknown section [{key}] (known: {', '.join(sorted(_SECTIONS))})")

    raw_sites = raw.get("sites")
    if not isinstance(raw_sites, dict) or not raw_sites:
        reading.problem("[sites]: at least a summit and an archive site are required")
        raw_sites = {}
    sites = _read_sites(raw_sites, reading)
    links = _read_links(raw.get("links", {}), raw_sites, sites, reading)
    routes = _read_routes(raw.get("routes"), raw_sites, sites, reading)
    tuning = _read_tuning(raw.get("tuning", {}), reading)
    security = _read_security(raw.get("security", {}), reading)
    operators = _read_operators(raw.get("operators"), reading)
    processing = _read_processing(raw.get("processing", {}), reading)
    retention = _read_retention_section(raw.get("retention", {}), processing, reading)
    token = _check_token(security.token, reading)
    if check_dirs:
        _check_site_directories(sites, reading)
    _check_tls_is_verifiable(sites, links, security, reading)

    if reading.problems:
        raise TopologyError(str(path), reading.problems)
    return Topology(
        path=path.resolve(),
        sites=sites,
        links=links,
        routes=routes,
        tuning=tuning,
        token=token,
        mqtt_username=security.mqtt_username,
        mqtt_password=security.mqtt_password,
        mqtt_ca_file=security.tls_files.get("mqtt_ca_file"),
        mqtt_cert_file=security.tls_files.get("mqtt_cert_file"),
        mqtt_key_file=security.tls_files.get("mqtt_key_file"),
        http_ca_file=security.tls_files.get("http_ca_file"),
        operators=operators,
        operator_accounts=security.operator_accounts,
        subscriber_accounts=security.subscriber_accounts,
        operator_key_file=security.operator_key_file,
        metrics_token=security.metrics_token,
        metrics_open=security.metrics_open,
        processing=processing,
        retention=retention,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise TopologyError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(str(path), [f"not valid TOML: {exc}"]) from exc


# ---------------------------------------------------------------------------------------------------------
# [sites.X]


def _read_sites(raw_sites: Mapping[str, Any], reading: _Reading) -> dict[str, SiteConfig]:
    """Every ``[sites.X]`` table that is whole, and exactly one summit and one archive among them."""
    sites: dict[str, SiteConfig] = {}
    for name, spec in raw_sites.items():
        site = _read_site(name, spec, reading)
        if site is not None:
            sites[name] = site
    for role in ("summit", "archive"):
        # Counted from the tables as written: a site with other problems (reported above) still has its role.
        count = sum(1 for spec in raw_sites.values() if isinstance(spec, dict) and spec.get("role") == role)
        if raw_sites and count != 1:
            reading.problem(f"[sites]: exactly one site must have role = {role!r} (found {count})")
    return sites


def _read_site(name: str, spec: Any, reading: _Reading) -> SiteConfig | None:
    """One ``[sites.X]`` table; None when it is too broken to describe a site (the problems say why)."""
    where = f"sites.{name}"
    if not isinstance(spec, dict):
        reading.problem(f"{where}: must be a table")
        return None
    role = spec.get("role")
    if role not in ROLES:
        reading.problem(f"{where}.role: must be one of {', '.join(ROLES)}, got {role!r}")
        return None
    broker = _endpoint(spec.get("broker"), f"{where}.broker", reading, scheme="mqtt")
    http = _endpoint(spec.get("http_listen"), f"{where}.http_listen", reading)
    state_dir = _path(spec.get("state_dir"), f"{where}.state_dir", reading)
    inbox = archive_root = None
    if role == "summit":
        inbox = _path(spec.get("inbox"), f"{where}.inbox", reading)
    if role == "archive":
        archive_root = _path(spec.get("archive_root"), f"{where}.archive_root", reading)
    corrections = tuple(
        p
        for i, v in enumerate(spec.get("correction_dirs", []))
        if (p := _path(v, f"{where}.correction_dirs[{i}]", reading)) is not None
    )
    cert, key_file = _read_site_certificate(spec, where, reading)
    retention = _read_retention(spec.get("retention_s", 0.0 if role == "relay" else None), where, reading)
    public_key = _public_key(spec.get("public_key"), f"{where}.public_key", reading)
    site_files = {
        key: _path(spec[key], f"{where}.{key}", reading) if key in spec else None
        for key in ("signing_key_file", "mqtt_password_file", "accounts_file")
    }
    username = spec.get("mqtt_username")
    if username is not None and not isinstance(username, str):
        reading.problem(f"{where}.mqtt_username: must be a string")
        username = None
    for key in sorted(set(spec) - _SITE_SETTINGS):
        reading.problem(f"{where}.{key}: unknown setting")
    if broker is None or http is None or state_dir is None:
        return None
    return SiteConfig(
        name=name,
        role=role,
        broker=broker,
        http_listen=http,
        state_dir=state_dir,
        inbox=inbox,
        archive_root=archive_root,
        correction_dirs=corrections,
        retention_s=retention,
        http_cert_file=cert,
        http_key_file=key_file,
        public_key=public_key or "",
        signing_key_file=site_files["signing_key_file"],
        mqtt_username=username,
        mqtt_password_file=site_files["mqtt_password_file"],
        accounts_file=site_files["accounts_file"],
    )


def _public_key(value: Any, where: str, reading: _Reading) -> str | None:
    """An Ed25519 public key in the topology's text form."""
    if value is None:
        reading.problem(
            f"{where}: missing; every site and operator signs its messages "
            "(`skyrelay secure --topology T` creates the keys and accounts)"
        )
        return None
    try:
        public_key_from_text(str(value))
    except ProtocolError as exc:
        reading.problem(f"{where}: {exc.reason}")
        return None
    return str(value)


def _read_operators(raw: Any, reading: _Reading) -> dict[str, str]:
    """``[operators]``: operator name → public key; the only signers of control messages."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        reading.problem("[operators]: must be a table of name = 'ed25519:...'")
        return {}
    out: dict[str, str] = {}
    for name, value in raw.items():
        text = _public_key(value, f"operators.{name}", reading)
        if text is not None:
            out[str(name)] = text
    return out


def _read_site_certificate(spec: Mapping[str, Any], where: str, reading: _Reading) -> tuple[Path | None, Path | None]:
    """The data server's certificate and key files: both or neither, readable and loadable together."""
    cert_files = {
        key: _path(spec[key], f"{where}.{key}", reading) if key in spec else None
        for key in ("http_cert_file", "http_key_file")
    }
    if (cert_files["http_cert_file"] is None) != (cert_files["http_key_file"] is None):
        reading.problem(f"{where}: http_cert_file and http_key_file go together (the data server's TLS)")
    for key, file in cert_files.items():
        if reading.check_dirs and file is not None and not file.is_file():
            reading.problem(f"{where}.{key}: {file} is not a readable file")
    cert, key_file = cert_files["http_cert_file"], cert_files["http_key_file"]
    pair = (cert, key_file) if cert is not None and key_file is not None else None
    if reading.check_dirs and pair and all(f.is_file() for f in pair):
        problem = _tls_problem(f"{where}.http_cert_file", pair=pair)
        if problem:
            reading.problem(problem)
    return cert, key_file


def _read_retention(value: Any, where: str, reading: _Reading) -> float | None:
    if value is not None and (not isinstance(value, int | float) or value < 0):
        reading.problem(f"{where}.retention_s: must be a number >= 0")
        return None
    return float(value) if value is not None else None


# ---------------------------------------------------------------------------------------------------------
# [links]


def _read_links(
    raw_links: Any, raw_sites: Mapping[str, Any], sites: Mapping[str, SiteConfig], reading: _Reading
) -> dict[tuple[str, str], LinkConfig]:
    """The ``[links.SRC.DST]`` tables: the addresses SRC dials instead of DST's own."""
    links: dict[tuple[str, str], LinkConfig] = {}
    for src, targets in raw_links.items() if isinstance(raw_links, dict) else []:
        if src not in raw_sites:
            reading.problem(f"links.{src}: unknown site {src!r}")
            continue
        for dst, spec in targets.items() if isinstance(targets, dict) else []:
            if dst not in raw_sites:
                reading.problem(f"links.{src}.{dst}: unknown site {dst!r}")
                continue
            link = _read_link(src, dst, spec, sites.get(dst), reading)
            if link is not None:
                links[(src, dst)] = link
    return links


def _read_link(src: str, dst: str, spec: Any, far: SiteConfig | None, reading: _Reading) -> LinkConfig | None:
    where = f"links.{src}.{dst}"
    if not isinstance(spec, dict):
        reading.problem(f"{where}: must be a table with broker and http")
        return None
    broker = _endpoint(spec.get("broker"), f"{where}.broker", reading, scheme="mqtt")
    http_ep = _endpoint(spec.get("http"), f"{where}.http", reading, scheme="http")
    if not (broker and http_ep):
        return None
    if far is not None and http_ep.tls != far.http_tls:
        reading.problem(
            f"{where}.http: {dst}'s data server speaks {'https' if far.http_tls else 'http'} "
            f"(http_cert_file {'set' if far.http_tls else 'not set'}), the link says "
            f"{'https' if http_ep.tls else 'http'}://"
        )
    scheme = "https" if http_ep.tls else "http"
    return LinkConfig(src=src, dst=dst, broker=broker, http=f"{scheme}://{http_ep}")


# ---------------------------------------------------------------------------------------------------------
# [routes]


def _read_routes(
    raw_routes: Any, raw_sites: Mapping[str, Any], sites: Mapping[str, SiteConfig], reading: _Reading
) -> tuple[Route, ...]:
    """The ``[routes]`` table in file order (the first is preferred), each from the summit to the archive."""
    if not isinstance(raw_routes, dict) or not raw_routes:
        reading.problem("[routes]: at least one route from the summit to the archive is required")
        raw_routes = {}
    summit = next((n for n, s in sites.items() if s.role == "summit"), None)
    archive = next((n for n, s in sites.items() if s.role == "archive"), None)
    routes: list[Route] = []
    for name, hops in raw_routes.items():
        where = f"routes.{name}"
        if not isinstance(hops, list) or len(hops) < 2 or not all(isinstance(h, str) for h in hops):
            reading.problem(f"{where}: must be a list of at least two site names")
            continue
        bad = [h for h in hops if h not in raw_sites]
        if bad:
            reading.problem(f"{where}: unknown site(s) {', '.join(bad)}")
            continue
        if len(set(hops)) != len(hops):
            reading.problem(f"{where}: a site appears twice")
        if summit is not None and hops[0] != summit:
            reading.problem(f"{where}: must start at the summit {summit!r}, starts at {hops[0]!r}")
        if archive is not None and hops[-1] != archive:
            reading.problem(f"{where}: must end at the archive {archive!r}, ends at {hops[-1]!r}")
        for middle in hops[1:-1]:
            if middle in sites and sites[middle].role != "relay":
                reading.problem(f"{where}: {middle!r} in the middle of a route must have role 'relay'")
        routes.append(Route(name=name, sites=tuple(hops)))
    return tuple(routes)


# ---------------------------------------------------------------------------------------------------------
# [processing]


def _read_processing(raw: Any, reading: _Reading) -> Processing:
    """``[processing]`` over the defaults: a Dask scheduler address, quiet time, minimum frames, workers."""
    default = Processing()
    if not isinstance(raw, dict):
        reading.problem("[processing]: must be a table")
        return default
    updates: dict[str, Any] = {}
    for key in sorted(set(raw) - {f.name for f in dataclasses.fields(Processing)}):
        reading.problem(f"processing.{key}: unknown setting")
    scheduler = raw.get("dask_scheduler")
    if scheduler is not None:
        parts = urlsplit(scheduler) if isinstance(scheduler, str) else None
        if parts is None or parts.scheme not in ("tcp", "tls") or not parts.hostname or parts.port is None:
            reading.problem(f"processing.dask_scheduler: must look like 'tcp://host:port', got {scheduler!r}")
        else:
            updates["dask_scheduler"] = scheduler
    quiet = raw.get("quiet_s")
    if quiet is not None:
        if isinstance(quiet, bool) or not isinstance(quiet, int | float) or quiet <= 0:
            reading.problem("processing.quiet_s: must be a positive number of seconds")
        else:
            updates["quiet_s"] = float(quiet)
    for key in ("max_fwhm_arcsec", "chunk_end_s"):
        number = raw.get(key)
        if number is None:
            continue
        if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
            reading.problem(f"processing.{key}: must be a positive number")
        else:
            updates[key] = float(number)
    for key in ("min_frames", "workers"):
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            reading.problem(f"processing.{key}: must be a whole number >= 1")
        else:
            updates[key] = value
    return dataclasses.replace(default, **updates)


# ---------------------------------------------------------------------------------------------------------
# [retention]


def _read_retention_section(raw: Any, processing: Processing, reading: _Reading) -> Retention:
    """``[retention]``: ``<kind>_s`` per product kind, the relay cache's free-space watermark, the sweep interval."""
    default = Retention()
    if not isinstance(raw, dict):
        reading.problem("[retention]: must be a table")
        return default
    kinds = {f"{kind}_s": kind for kind in PRODUCT_KINDS}
    known = {*kinds, "cache_min_free_fraction", "sweep_interval_s"}
    for key in sorted(set(raw) - known):
        reading.problem(f"retention.{key}: unknown setting (known: {', '.join(sorted(known))})")
    products: dict[str, float] = {}
    for key, kind in kinds.items():
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            reading.problem(
                f"retention.{key}: must be a positive number of seconds (leave it out to keep {kind} for ever)"
            )
        else:
            products[kind] = float(value)
    calexp = products.get("calexp")
    if calexp is not None and calexp <= processing.chunk_end_s:
        reading.problem(
            f"retention.calexp_s: {calexp:g} s is not longer than processing.chunk_end_s "
            f"({processing.chunk_end_s:g} s): a calexp must outlive its chunk so that every difference of its quad"
            " can still be made"
        )
    fraction = raw.get("cache_min_free_fraction")
    if fraction is not None and (
        isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1
    ):
        reading.problem("retention.cache_min_free_fraction: must be a number between 0 and 1 (e.g. 0.1)")
        fraction = None
    interval = raw.get("sweep_interval_s", default.sweep_interval_s)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        reading.problem("retention.sweep_interval_s: must be a positive number of seconds")
        interval = default.sweep_interval_s
    return Retention(
        products_s=products,
        cache_min_free_fraction=float(fraction) if fraction is not None else None,
        sweep_interval_s=float(interval),
    )


# ---------------------------------------------------------------------------------------------------------
# [tuning]


def _read_tuning(raw_tuning: Any, reading: _Reading) -> Tuning:
    """``[tuning]`` over the defaults: known settings, each a positive number of the default's type."""
    tuning = Tuning()
    if not isinstance(raw_tuning, dict):
        return tuning
    fields = {f.name for f in dataclasses.fields(Tuning)}
    updates: dict[str, Any] = {}
    for key, value in raw_tuning.items():
        if key not in fields:
            reading.problem(f"tuning.{key}: unknown setting")
        elif isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            reading.problem(f"tuning.{key}: must be a positive number")
        else:
            updates[key] = type(getattr(tuning, key))(value)
    return dataclasses.replace(tuning, **updates)


# ---------------------------------------------------------------------------------------------------------
# [security]


def _read_security(raw_security: Any, reading: _Reading) -> _Security:
    """``[security]``: the pull token (inline or from a file), MQTT credentials, and TLS files that load."""
    if not isinstance(raw_security, dict):
        return _Security()
    token: str | None = None
    if "token" in raw_security:
        token = str(raw_security["token"])
    elif "token_file" in raw_security:
        token_path = _path(raw_security["token_file"], "security.token_file", reading)
        if token_path is not None:
            try:
                token = token_path.read_text().strip()
            except OSError as exc:
                reading.problem(f"security.token_file: cannot read {token_path}: {exc.strerror}")
    for key in sorted(set(raw_security) - _SECURITY_SETTINGS):
        reading.problem(f"security.{key}: unknown setting")
    accounts: dict[str, tuple[str, ...]] = {}
    for key, default in (("operator_accounts", ("operator",)), ("subscriber_accounts", ("subscriber",))):
        value = raw_security.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            reading.problem(f"security.{key}: must be a list of account names")
            value = list(default)
        accounts[key] = tuple(value)
    metrics_token = raw_security.get("metrics_token")
    if metrics_token is not None and (not isinstance(metrics_token, str) or len(metrics_token) < 16):
        reading.problem("security.metrics_token: must be a string of at least 16 characters")
        metrics_token = None
    metrics_open = raw_security.get("metrics_open", False)
    if not isinstance(metrics_open, bool):
        reading.problem("security.metrics_open: must be true or false")
        metrics_open = False
    operator_key = (
        _path(raw_security["operator_key_file"], "security.operator_key_file", reading)
        if "operator_key_file" in raw_security
        else None
    )
    return _Security(
        token=token,
        mqtt_username=raw_security.get("mqtt_username"),
        mqtt_password=raw_security.get("mqtt_password"),
        tls_files=_read_security_tls_files(raw_security, reading),
        operator_accounts=accounts["operator_accounts"],
        subscriber_accounts=accounts["subscriber_accounts"],
        operator_key_file=operator_key,
        metrics_token=metrics_token,
        metrics_open=metrics_open,
    )


def _read_security_tls_files(raw_security: Mapping[str, Any], reading: _Reading) -> dict[str, Path | None]:
    """The CA files and the MQTT client certificate: readable, loadable, the certificate with its key."""
    tls_files: dict[str, Path | None] = {}
    for key in _TLS_FILES:
        file = _path(raw_security[key], f"security.{key}", reading) if key in raw_security else None
        tls_files[key] = file
        if reading.check_dirs and file is not None and not file.is_file():
            reading.problem(f"security.{key}: {file} is not a readable file")
    if (tls_files["mqtt_cert_file"] is None) != (tls_files["mqtt_key_file"] is None):
        reading.problem("security: mqtt_cert_file and mqtt_key_file go together (client certificate)")
    if reading.check_dirs:
        readable = {k: f for k, f in tls_files.items() if f is not None and f.is_file()}
        for key in ("mqtt_ca_file", "http_ca_file"):
            if key in readable and (problem := _tls_problem(f"security.{key}", ca=readable[key])):
                reading.problem(problem)
        if "mqtt_cert_file" in readable and "mqtt_key_file" in readable:
            pair = (readable["mqtt_cert_file"], readable["mqtt_key_file"])
            if problem := _tls_problem("security.mqtt_cert_file", pair=pair):
                reading.problem(problem)
    return tls_files


def _check_token(token: str | None, reading: _Reading) -> str:
    """The pull token, which must exist and be long enough (a random stand-in when it is a problem)."""
    if token is not None and len(token) < 16:
        reading.problem("security.token: must be at least 16 characters")
    if token is None:
        reading.problem("[security]: a pull token is required (token = '...' or token_file = '...')")
        token = secrets.token_hex(16)
    return token


# ---------------------------------------------------------------------------------------------------------
# Across sections


def _check_site_directories(sites: Mapping[str, SiteConfig], reading: _Reading) -> None:
    for site in sites.values():
        for label, directory in (
            ("inbox", site.inbox),
            ("archive_root", site.archive_root),
            ("state_dir", site.state_dir),
        ):
            if directory is not None and directory.exists() and not directory.is_dir():
                reading.problem(f"sites.{site.name}.{label}: {directory} exists and is not a directory")


def _check_tls_is_verifiable(
    sites: Mapping[str, SiteConfig],
    links: Mapping[tuple[str, str], LinkConfig],
    security: _Security,
    reading: _Reading,
) -> None:
    """Brokers reached by mqtts:// and data servers speaking https need a CA to verify them by."""
    uses_tls = any(s.broker.tls for s in sites.values()) or any(link.broker.tls for link in links.values())
    if uses_tls and security.tls_files.get("mqtt_ca_file") is None:
        reading.problem("security.mqtt_ca_file: required to verify brokers reached by mqtts://")
    if any(s.http_tls for s in sites.values()) and security.tls_files.get("http_ca_file") is None:
        reading.problem("security.http_ca_file: required to verify data servers that speak https")


# ---------------------------------------------------------------------------------------------------------
# Values


def _endpoint(value: Any, where: str, reading: _Reading, *, scheme: str | None = None) -> Endpoint | None:
    if not isinstance(value, str):
        example = f"{scheme}://127.0.0.1:1883" if scheme is not None else "127.0.0.1:8081"
        reading.problem(f"{where}: must be a string like '{example}'")
        return None
    text = value if "://" in value else f"tcp://{value}"
    parts = urlsplit(text)
    allowed = (scheme, f"{scheme}s") if scheme in ("mqtt", "http") else (scheme,)
    if scheme is not None and "://" in value and parts.scheme not in allowed:
        reading.problem(f"{where}: scheme must be {' or '.join(f'{a}://' for a in allowed)}, got {parts.scheme}://")
        return None
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        reading.problem(f"{where}: needs host and port, got {value!r}")
        return None
    return Endpoint(host=parts.hostname, port=port, tls=parts.scheme in ("mqtts", "https"))


def _path(value: Any, where: str, reading: _Reading) -> Path | None:
    if not isinstance(value, str) or not value:
        reading.problem(f"{where}: must be a path string")
        return None
    path = Path(value)
    return path if path.is_absolute() else (reading.base / path).resolve()


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
