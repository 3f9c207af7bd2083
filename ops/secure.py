"""Securing a deployment from its topology: accounts, password and ACL files per broker, and signing keys.

``skyrelay secure --topology T --out DIR`` reads a topology (one made before accounts and keys is
fine), keeps whatever ``DIR`` already holds, creates what is missing, and writes:

- ``DIR/<site>/signing.key`` — the site's private key (0600); install as the site's ``signing_key_file``;
- ``DIR/<site>/mqtt.password`` — the site daemon's broker password (0600); its ``mqtt_password_file``;
- ``DIR/<site>/broker/passwords`` and ``acl`` — that site's mosquitto ``password_file``/``acl_file``
  (the daemon reads the same ``passwords`` file as its ``accounts_file`` for HTTP logins);
- ``DIR/operator.key`` — the operator's signing key; ``DIR/secrets.json`` — every account's password;
- ``DIR/topology.toml`` — the input topology with public keys, accounts and file places filled in.

File places in the topology are under ``--install-root`` (``/etc/skyrelay`` by default), where each
host gets its own site's folder; copy ``DIR/topology.toml`` to every host.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ops.accounts import plan_accounts, site_specs, write_broker_auth
from protocol.signing import generate_keypair, load_private_key, public_key_to_text, write_private_key

OPERATOR = "operator"
SUBSCRIBER = "subscriber"


class SecureError(ValueError):
    """The topology cannot be secured as it is (the message says why)."""


def secure(topology_path: Path, out: Path, *, install_root: Path = Path("/etc/skyrelay")) -> Path:
    """Create the missing accounts, broker files and keys for a topology; return the new topology's path."""
    try:
        raw = tomllib.loads(topology_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SecureError(f"cannot read {topology_path}: {exc}") from exc
    sites = raw.get("sites")
    routes = raw.get("routes")
    if not isinstance(sites, dict) or not isinstance(routes, dict):
        raise SecureError(f"{topology_path}: [sites] and [routes] are needed")
    specs = site_specs({name: str(spec.get("role")) for name, spec in sites.items()}, routes.values())
    out.mkdir(parents=True, exist_ok=True)
    secrets_file = out / "secrets.json"
    kept = json.loads(secrets_file.read_text()) if secrets_file.is_file() else {}
    plan = plan_accounts(specs, operators=(OPERATOR,), subscribers=(SUBSCRIBER,), passwords=kept)
    write_secret(secrets_file, json.dumps(plan.passwords(), indent=2) + "\n")
    for spec in specs:
        site_dir = out / spec.name
        auth = write_broker_auth(plan, spec.name, site_dir / "broker")
        write_secret(site_dir / "mqtt.password", plan.daemons[spec.name].password + "\n")
        where = install_root / spec.name
        entry = sites[spec.name]
        entry["public_key"] = ensure_key(site_dir / "signing.key")
        entry["signing_key_file"] = str(where / "signing.key")
        entry["mqtt_username"] = plan.daemons[spec.name].username
        entry["mqtt_password_file"] = str(where / "mqtt.password")
        entry["accounts_file"] = str(where / "broker" / auth.password_file.name)
    security = raw.setdefault("security", {})
    operator = plan.operators[0]
    security["mqtt_username"] = operator.username
    security["mqtt_password"] = operator.password
    security["operator_key_file"] = str(install_root / "operator.key")
    raw["operators"] = {OPERATOR: ensure_key(out / "operator.key")}
    target = out / "topology.toml"
    write_secret(target, "# Secured by `skyrelay secure`; keep it as private as the passwords in it.\n" + dumps(raw))
    return target


def ensure_key(path: Path) -> str:
    """The public key (text form) of the private key at ``path``, made first if missing (blocking)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_key(path, generate_keypair()[0])
    return public_key_to_text(load_private_key(path).public_key())


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only (0600), through a temporary name (blocking)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def dumps(data: Mapping[str, Any]) -> str:
    """TOML for a topology: top-level tables of scalars and arrays, nested tables as dotted headers."""
    lines: list[str] = []

    def table(prefix: str, values: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if scalars or not values:
            lines.append(f"[{prefix}]")
            lines.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars.items())
            lines.append("")
        for key, value in values.items():
            if isinstance(value, dict):
                table(f"{prefix}.{_key(key)}", value)

    for key, value in data.items():
        if isinstance(value, dict):
            table(_key(key), value)
        else:
            lines.insert(0, f"{_key(key)} = {_value(value)}")
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value))
