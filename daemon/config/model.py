"""The topology model: sites, links, routes, tuning and security as every site sees them.

Frozen values built by :func:`daemon.config.load_topology`; the TLS contexts a site needs are made from them.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

__all__ = [
    "PRODUCT_KINDS",
    "ROLES",
    "Endpoint",
    "LinkConfig",
    "Retention",
    "Role",
    "Route",
    "SiteConfig",
    "Topology",
    "Tuning",
]

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
    public_key: str = ""
    """The site's Ed25519 public key (``ed25519:<base64>``): every message it sends is signed with it."""
    signing_key_file: Path | None = None
    """The site's private key (PEM, mode 0600); ``<state_dir>/signing.key`` when not set."""
    mqtt_username: str | None = None
    """The site daemon's own broker account (``site-<name>``); the [security] account when not set."""
    mqtt_password_file: Path | None = None
    """File holding that account's password (read by the site's own daemon only)."""
    accounts_file: Path | None = None
    """The site broker's password file (mosquitto ``$7$`` hashes): HTTP logins of operators and subscribers."""

    @property
    def key_file(self) -> Path:
        """Where this site's private signing key is."""
        return self.signing_key_file or self.state_dir / "signing.key"

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
    window_per_peer: int = 32
    pull_concurrency: int = 16
    """Files a receiver pulls at once (small files are mostly waits on fsyncs and round trips, so many
    overlap); of them, at most ``large_pull_concurrency`` bigger than one write batch, each reading into one
    batch (:data:`daemon.receiving.WRITE_BATCH_BYTES`) over plain HTTP, buffering up to two over TLS. More
    large pulls at once add little on a fast link and, on a slow one, make every file of a burst arrive
    late together rather than the first ones soon."""
    large_pull_concurrency: int = 4
    rescan_interval_s: float = 60.0
    breaker_failures: int = 3
    breaker_hold_down_s: float = 10.0
    end_to_end_timeout_s: float = 60.0
    late_after_s: float = 60.0
    report_retry_every: int = 5
    max_file_bytes: int = 64 << 30
    max_batch_messages: int = 32
    """Messages for one peer that queue while a publish awaits its broker go together in one signed batch, up
    to this many (``protocol.batch``); 1 sends every message alone (a peer or ACL from before batches)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Processing:
    """The archive's processing (``[processing]``): where processors run, and when a sequence is ready."""

    dask_scheduler: str | None = None
    """``tcp://host:port`` of a Dask scheduler; None runs processors in a local process pool."""
    quiet_s: float = 600.0
    """A calibration sequence with no new frame for this long is built with what it has."""
    min_frames: int = 3
    """Fewest usable frames a master is built from."""
    workers: int = 2
    """Jobs run at once (and the size of the local process pool)."""
    max_fwhm_arcsec: float = 2.0
    """A science visit whose PSF is broader than this is treated as lost for pairing (and reported)."""
    chunk_end_s: float = 5400.0
    """A quad with no new visit for this long is over: its missing visits are lost, desperate pairs are made."""


PRODUCT_KINDS: tuple[str, ...] = ("bias", "dark", "flat", "calexp", "diff", "alerts")
"""Products the archive builds: masters (bias, dark, flat), calibrated exposures, differences, alert files."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Retention:
    """``[retention]``: how long the archive keeps each kind of product, and the relay cache's watermark.

    Nothing is ever deleted without the archive's custody: a summit or relay copy only after its verified
    receipt (then after the site's ``retention_s``, or earlier at a relay below the watermark), a product
    only at the archive that catalogued it, never while a pending job reads it, and never the newest master
    of its detector (what later steps apply). Deleted products keep their catalogue row (marked expired).
    """

    products_s: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Kind → seconds after creation (``diff_s = 86400``); a kind not listed is kept for ever (the default)."""
    cache_min_free_fraction: float | None = None
    """At a relay, copies in custody are deleted oldest first, before their ``retention_s``, while the
    cache's file system has less than this fraction free (e.g. 0.1). None: by age only."""
    sweep_interval_s: float = 3600.0
    """Longest wait between product sweeps (expiry is timed by each product's age; this re-checks those a
    pending job held back)."""


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
    operators: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Operator signers: name → Ed25519 public key text. Only they may send control."""
    operator_accounts: tuple[str, ...] = ("operator",)
    """Broker/HTTP accounts with the operator role (status, queue, release, control)."""
    subscriber_accounts: tuple[str, ...] = ("subscriber",)
    """Broker/HTTP accounts with the subscriber role (read notices)."""
    operator_key_file: Path | None = None
    """The operator's private signing key, for operator commands run with ``--topology``."""
    metrics_token: str | None = None
    """A bearer token that Prometheus may present for ``/metrics``."""
    metrics_open: bool = False
    """Serve ``/metrics`` without any credential (a deliberate choice on a closed network)."""
    processing: Processing = dataclasses.field(default_factory=Processing)
    """The archive's ``[processing]`` section."""
    retention: Retention = dataclasses.field(default_factory=Retention)
    """The ``[retention]`` section."""

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
