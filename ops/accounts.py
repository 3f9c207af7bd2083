"""Broker accounts for a set of sites: who may connect to each mailbox, and what each may read and write.

From the sites (name, role, peers) and the names of the operator and subscriber accounts this makes one
account per site daemon (``site-<name>``), the operators and the subscribers, each with a random
password, and for each site's broker a mosquitto password file and an ACL file (DESIGN §3 "Who may
speak", §8). A broker knows only the accounts that have business on it: its own daemon, its peers'
daemons, operators and subscribers; a site with no link to it cannot even log in.

On the broker of site S with peers P:

- ``site-S`` reads its mailbox ``site/S/#`` and its peers' presence, reads and writes its own presence,
  problems and events (the archive also arrivals — exposures included —, products and alerts);
- ``site-P`` writes only ``site/S/offer|ack|custody`` and its own ``presence/P`` (its will too), and
  reads ``presence/S``;
- operators write ``site/S/control`` and read everything under ``skyrelay/v1/``;
- subscribers read arrivals, products, alerts, problems, events and presence, and write nothing;
- nobody else anything: no anonymous clients, and ``$SYS`` is granted to no one.

mosquitto 2.0 lets any authenticated client take over a connected client's id (the old connection is
closed), and its acl_file cannot bind client ids to users. So a daemon's client ids carry a secret:
``<username>-<purpose>-<HMAC-SHA256(password, purpose)[:12 bytes] hex>``, which no other account can
compute, and no broker topic reveals (``$SYS`` lists counts, not ids, and no one may read it anyway).

Passwords are hashed here in mosquitto 2.0's own format (``$7$<iterations>$<salt b64>$<PBKDF2-SHA512
b64>``) rather than with ``mosquitto_passwd -b``, which would put every password on a command line
visible in ``ps``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from daemon.credentials import hash_password, secret_client_id
from daemon.credentials import verify_password as verify_password
from protocol.topics import PREFIX

Role = Literal["summit", "relay", "archive"]
ROLES: tuple[str, ...] = ("summit", "relay", "archive")
SITE_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
ACCOUNT_NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
DAEMON_PREFIX = "site-"


class AccountsError(ValueError):
    """The description of sites and links is inconsistent; ``problems`` lists every issue found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SiteSpec:
    """One site as the accounts see it: its name, role and the peers it has links with."""

    name: str
    role: Role
    peers: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """A broker account: username and password (the password never goes on a command line)."""

    username: str
    password: str = dataclasses.field(repr=False)

    def client_id(self, purpose: str) -> str:
        """This account's MQTT client id for ``purpose`` (e.g. ``"own"``, ``"to-base"``), unguessable by others."""
        return secret_client_id(self.username, self.password, purpose)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BrokerAuth:
    """The two files a broker is started with (see ``ops.broker.Mosquitto(auth=...)``)."""

    password_file: Path
    acl_file: Path


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AccountPlan:
    """Every account of a system and which sites they belong to.

    Attributes:
        sites: the sites, by name.
        daemons: each site's daemon account, by site name.
        operators: the operator accounts.
        subscribers: the read-only subscriber accounts.
    """

    sites: Mapping[str, SiteSpec]
    daemons: Mapping[str, Account]
    operators: tuple[Account, ...]
    subscribers: tuple[Account, ...]

    def accounts_on(self, site: str) -> tuple[Account, ...]:
        """The accounts that may log in to ``site``'s broker: its daemon, its peers', operators, subscribers."""
        spec = self.sites[site]
        return (
            self.daemons[site],
            *(self.daemons[p] for p in spec.peers),
            *self.operators,
            *self.subscribers,
        )

    def passwords(self) -> dict[str, str]:
        """Every account's password by username (to persist, and to pass back to :func:`plan_accounts`)."""
        return {a.username: a.password for a in (*self.daemons.values(), *self.operators, *self.subscribers)}


def site_specs(roles: Mapping[str, str], routes: Iterable[Sequence[str]]) -> list[SiteSpec]:
    """Each site (name → role) with its neighbours on any of the ``routes``, links listed from both ends."""
    peers: dict[str, set[str]] = {name: set() for name in roles}
    for path in routes:
        for a, b in itertools.pairwise(path):
            peers.setdefault(a, set()).add(b)
            peers.setdefault(b, set()).add(a)
    return [
        SiteSpec(name=name, role=role, peers=tuple(sorted(peers[name])))  # type: ignore[arg-type]
        for name, role in roles.items()
    ]


def daemon_username(site: str) -> str:
    """The broker account of ``site``'s daemon."""
    return f"{DAEMON_PREFIX}{site}"


def plan_accounts(
    sites: Iterable[SiteSpec],
    *,
    operators: Sequence[str] = ("operator",),
    subscribers: Sequence[str] = ("subscriber",),
    passwords: Mapping[str, str] | None = None,
) -> AccountPlan:
    """Make every account for ``sites``, with fresh random passwords (or the ones in ``passwords``).

    Args:
        sites: each site's name, role and peers; links must be listed from both ends.
        operators: operator account names.
        subscribers: subscriber account names.
        passwords: passwords to keep, by username (a restarted ``skyrelay up`` keeps its credentials).

    Returns:
        The plan: write each broker's files with :func:`write_broker_auth`.

    Raises:
        AccountsError: listing every problem (bad or duplicate names, unknown or one-sided peers, roles).
    """
    specs = tuple(sites)
    by_name = {s.name: s for s in specs}
    problems = _check_sites(specs, by_name)
    names = [daemon_username(s.name) for s in specs]
    for name in (*operators, *subscribers):
        if not re.match(ACCOUNT_NAME_PATTERN, name):
            problems.append(f"account name {name!r} does not match {ACCOUNT_NAME_PATTERN}")
        elif name.startswith(DAEMON_PREFIX):
            problems.append(f"account name {name!r} must not start with {DAEMON_PREFIX!r} (daemon accounts)")
        names.append(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"account names used twice: {', '.join(duplicates)}")
    if problems:
        raise AccountsError(problems)
    kept = passwords or {}

    def account(username: str) -> Account:
        return Account(username=username, password=kept.get(username) or secrets.token_urlsafe(32))

    return AccountPlan(
        sites=by_name,
        daemons={s.name: account(daemon_username(s.name)) for s in specs},
        operators=tuple(account(n) for n in operators),
        subscribers=tuple(account(n) for n in subscribers),
    )


def _check_sites(specs: Sequence[SiteSpec], by_name: Mapping[str, SiteSpec]) -> list[str]:
    problems: list[str] = []
    if len(by_name) != len(specs):
        problems.append("a site is listed twice")
    for spec in specs:
        if not re.match(SITE_NAME_PATTERN, spec.name):
            problems.append(f"site name {spec.name!r} does not match {SITE_NAME_PATTERN}")
        if spec.role not in ROLES:
            problems.append(f"site {spec.name!r}: role {spec.role!r} is not one of {', '.join(ROLES)}")
        for peer in spec.peers:
            if peer == spec.name:
                problems.append(f"site {spec.name!r} lists itself as a peer")
            elif peer not in by_name:
                problems.append(f"site {spec.name!r}: unknown peer {peer!r}")
            elif spec.name not in by_name[peer].peers:
                problems.append(f"link {spec.name}-{peer} is listed by {spec.name!r} only (links go both ways)")
    for role in ("summit", "archive"):
        count = sum(s.role == role for s in specs)
        if count != 1:
            problems.append(f"want exactly one {role}, got {count}")
    return problems


def password_file_text(accounts: Iterable[Account]) -> str:
    """A mosquitto password file: one ``username:$7$...`` line per account."""
    return "".join(f"{a.username}:{hash_password(a.password)}\n" for a in accounts)


def acl_text(plan: AccountPlan, site: str) -> str:
    """The mosquitto ACL file of ``site``'s broker (see the module docstring for the rules)."""
    spec = plan.sites[site]
    t = PREFIX
    lines = [
        f"# ACL of the broker of site {site!r} ({spec.role}); generated by skyrelay, do not edit.",
        "# The broker refuses anonymous clients; an account not listed here may do nothing; no one reads $SYS.",
        "",
        f"user {plan.daemons[site].username}",
        f"topic read {t}/site/{site}/#",
        f"topic readwrite {t}/presence/{site}",
        *(f"topic read {t}/presence/{peer}" for peer in spec.peers),
        f"topic write {t}/problems/{site}",
        f"topic write {t}/events/{site}",
    ]
    if spec.role == "archive":
        lines += [f"topic write {t}/arrivals/#", f"topic write {t}/products/#", f"topic write {t}/alerts/#"]
    for peer in spec.peers:
        lines += [
            "",
            f"user {plan.daemons[peer].username}",
            *(f"topic write {t}/site/{site}/{kind}" for kind in ("offer", "ack", "custody", "batch")),
            f"topic write {t}/presence/{peer}",
            f"topic read {t}/presence/{site}",
        ]
    for operator in plan.operators:
        lines += ["", f"user {operator.username}", f"topic write {t}/site/{site}/control", f"topic read {t}/#"]
    for subscriber in plan.subscribers:
        lines += ["", f"user {subscriber.username}"]
        lines += [f"topic read {t}/{family}/#" for family in ("arrivals", "products", "alerts", "problems", "events")]
        lines.append(f"topic read {t}/presence/#")
    return "\n".join(lines) + "\n"


def write_broker_auth(plan: AccountPlan, site: str, directory: Path) -> BrokerAuth:
    """Write ``site``'s broker password file and ACL file into ``directory`` (mode 0600) and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    password_file, acl_file = directory / "passwords", directory / "acl"
    _write_private(password_file, password_file_text(plan.accounts_on(site)))
    _write_private(acl_file, acl_text(plan, site))
    return BrokerAuth(password_file=password_file, acl_file=acl_file)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
