"""`skyrelay secure`: a deployment's topology gains accounts, per-broker ACLs and signing keys, and keeps them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from conftest import REPO

from daemon.config import load_topology
from ops.secure import secure
from protocol.signing import load_private_key, public_key_to_text


def _example(tmp_path: Path) -> Path:
    """The shipped example topology, its pull token file placed in ``tmp_path``."""
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    text = (REPO / "systemd" / "topology.example.toml").read_text().replace("/etc/skyrelay/token", str(token))
    path = tmp_path / "topology.toml"
    path.write_text(text)
    return path


def test_the_shipped_topology_is_secured_and_then_loads(tmp_path: Path) -> None:
    """The example topology (as made before accounts and keys) gets every key and account file, and loads."""
    out = tmp_path / "secrets"
    target = secure(_example(tmp_path), out, install_root=Path("/etc/skyrelay"))
    topology = load_topology(target, check_dirs=False)
    for name, site in topology.sites.items():
        key = load_private_key(out / name / "signing.key")
        assert public_key_to_text(key.public_key()) == site.public_key
        assert site.key_file == Path("/etc/skyrelay") / name / "signing.key"
        assert site.mqtt_username == f"site-{name}"
        assert (out / name / "broker" / "acl").read_text().count(f"user site-{name}") == 1
        for secret in (out / name / "signing.key", out / name / "mqtt.password"):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert set(topology.operators) == {"operator"} and topology.mqtt_username == "operator"


def test_securing_again_keeps_every_password_and_key(tmp_path: Path) -> None:
    """Running it again (an upgrade, a new site) changes no existing credential."""
    out = tmp_path / "secrets"
    example = _example(tmp_path)
    first = load_topology(secure(example, out), check_dirs=False)
    passwords = json.loads((out / "secrets.json").read_text())
    second = load_topology(secure(example, out), check_dirs=False)
    assert json.loads((out / "secrets.json").read_text()) == passwords
    assert {n: s.public_key for n, s in first.sites.items()} == {n: s.public_key for n, s in second.sites.items()}
    assert first.operators == second.operators
