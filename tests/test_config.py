"""The topology file: a valid one loads; an invalid one is refused with every problem listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import load_topology
from daemon.errors import TopologyError
from ops.pki import make_pki

VALID = """
[sites.summit]
role = "summit"
broker = "mqtt://127.0.0.1:1884"
http_listen = "127.0.0.1:8081"
state_dir = "summit/state"
public_key = "ed25519:BxfL3InAnOtHVRDx7YjgvrypcJ4m9iRedG2v/ZfHss4="
inbox = "summit/inbox"

[sites.base]
role = "relay"
broker = "mqtt://127.0.0.1:1885"
http_listen = "127.0.0.1:8082"
state_dir = "base/state"
public_key = "ed25519:bZ1qeJRWEYL30F5GymviRP4XyU6Ho5fOIB6OWAidQSo="

[sites.archive]
role = "archive"
broker = "mqtt://127.0.0.1:1886"
http_listen = "127.0.0.1:8083"
state_dir = "archive/state"
public_key = "ed25519:fDHsZoSilrHTyq8tgMsIuQoLXkySZRI8FpXJ2ewRjdA="
archive_root = "archive/root"

[links.summit.archive]
broker = "mqtt://127.0.0.1:2886"
http = "http://127.0.0.1:9083"

[routes]
primary = ["summit", "base", "archive"]
direct = ["summit", "archive"]

[security]
token = "0123456789abcdef0123"

[tuning]
ack_timeout_s = 2.5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.toml"
    path.write_text(text)
    return path


def test_a_valid_topology_loads_with_routes_in_preference_order(tmp_path: Path) -> None:
    """Routes keep the file's order (the first is preferred) and relative paths resolve beside the file."""
    topology = load_topology(write(tmp_path, VALID))
    assert [r.name for r in topology.routes] == ["primary", "direct"]
    assert topology.summit.inbox == (tmp_path / "summit" / "inbox").resolve()
    assert topology.archive.archive_root == (tmp_path / "archive" / "root").resolve()
    assert topology.tuning.ack_timeout_s == 2.5
    assert topology.sites["base"].retention_s == 0.0


def test_a_link_entry_overrides_the_far_sites_own_addresses(tmp_path: Path) -> None:
    """A drill or a WAN path rewrites how one site reaches another; unlisted pairs use the far site's own."""
    topology = load_topology(write(tmp_path, VALID))
    assert topology.link("summit", "archive").broker.port == 2886
    assert topology.link("summit", "archive").http == "http://127.0.0.1:9083"
    assert topology.link("summit", "base").broker.port == 1885
    assert set(topology.peers("base")) == {"summit", "archive"}


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """An operator sees unknown sites, bad routes, bad addresses and bad tuning in one error."""
    broken = (
        VALID.replace('primary = ["summit", "base", "archive"]', 'primary = ["base", "summit", "archive"]')
        .replace('direct = ["summit", "archive"]', 'direct = ["summit", "moon"]')
        .replace('broker = "mqtt://127.0.0.1:1885"', 'broker = "http://127.0.0.1:1885"')
        .replace("ack_timeout_s = 2.5", "ack_timeout_s = -1\nwarp_factor = 9")
        .replace('token = "0123456789abcdef0123"', 'token = "short"')
    )
    with pytest.raises(TopologyError) as caught:
        load_topology(write(tmp_path, broken))
    text = "\n".join(caught.value.problems)
    assert "routes.primary: must start at the summit 'summit'" in text
    assert "routes.direct: unknown site(s) moon" in text
    assert "sites.base.broker: scheme must be mqtt://" in text
    assert "tuning.ack_timeout_s: must be a positive number" in text
    assert "tuning.warp_factor: unknown setting" in text
    assert "security.token: must be at least 16 characters" in text


def test_a_route_must_end_at_the_archive_and_pass_only_relays(tmp_path: Path) -> None:
    """A route that ends at a relay, or passes through the archive, is refused."""
    broken = VALID.replace('direct = ["summit", "archive"]', 'direct = ["summit", "archive", "base"]')
    with pytest.raises(TopologyError) as caught:
        load_topology(write(tmp_path, broken))
    text = "\n".join(caught.value.problems)
    assert "must end at the archive 'archive', ends at 'base'" in text
    assert "'archive' in the middle of a route must have role 'relay'" in text


def test_exactly_one_summit_and_one_archive_are_required(tmp_path: Path) -> None:
    """Two summits (or none) make the flow ambiguous and are refused."""
    broken = VALID.replace('[sites.base]\nrole = "relay"', '[sites.base]\nrole = "summit"\ninbox = "x"')
    with pytest.raises(TopologyError) as caught:
        load_topology(write(tmp_path, broken))
    assert any("exactly one site must have role = 'summit' (found 2)" in p for p in caught.value.problems)


def test_a_broken_summit_is_still_the_summit_and_each_address_gets_a_fitting_example(tmp_path: Path) -> None:
    """A summit table missing its addresses is reported for them, not also as "no summit" (found 0); the
    data server's listen address is explained with a host:port example, the broker's with an mqtt:// one."""
    broken = VALID.replace('broker = "mqtt://127.0.0.1:1884"\nhttp_listen = "127.0.0.1:8081"\n', "")
    with pytest.raises(TopologyError) as caught:
        load_topology(write(tmp_path, broken))
    problems = caught.value.problems
    assert "sites.summit.broker: must be a string like 'mqtt://127.0.0.1:1883'" in problems, problems
    assert "sites.summit.http_listen: must be a string like '127.0.0.1:8081'" in problems, problems
    assert not any("role = 'summit'" in p for p in problems), problems


def test_unreadable_or_invalid_toml_is_a_clear_error(tmp_path: Path) -> None:
    """A missing file or a TOML syntax error names the file and the cause."""
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "absent.toml")
    with pytest.raises(TopologyError, match="not valid TOML"):
        load_topology(write(tmp_path, "[sites\n"))


def test_https_data_servers_need_their_certificate_pair_a_ca_and_matching_links(tmp_path: Path) -> None:
    """A site that serves HTTPS needs cert and key; pullers need the CA; a link must say https:// for it."""
    make_pki(tmp_path / "pki", "test")
    (tmp_path / "garbage.crt").write_text("not a certificate\n")
    tls = VALID.replace(
        'archive_root = "archive/root"',
        'archive_root = "archive/root"\nhttp_cert_file = "pki/server.crt"\nhttp_key_file = "pki/server.key"',
    )
    good = tls.replace('http = "http://127.0.0.1:9083"', 'http = "https://127.0.0.1:9083"').replace(
        'token = "0123456789abcdef0123"', 'token = "0123456789abcdef0123"\nhttp_ca_file = "pki/ca.crt"'
    )
    topology = load_topology(write(tmp_path, good))
    assert topology.archive.http_url == "https://127.0.0.1:8083"
    assert topology.link("summit", "archive").http == "https://127.0.0.1:9083"
    assert topology.link("base", "archive").http == "https://127.0.0.1:8083"
    assert topology.link("summit", "base").http == "http://127.0.0.1:8082"
    assert topology.http_tls_context() is not None

    broken = (
        tls.replace('http_key_file = "pki/server.key"', "")
        .replace('http_listen = "127.0.0.1:8082"', 'http_listen = "127.0.0.1:8082"\nhttp_cert_file = "gone.crt"')
        .replace(
            'token = "0123456789abcdef0123"',
            'token = "0123456789abcdef0123"\nhttp_ca = "pki/ca.crt"\nmqtt_ca_file = "garbage.crt"',
        )
    )
    with pytest.raises(TopologyError) as caught:
        load_topology(write(tmp_path, broken))
    text = "\n".join(caught.value.problems)
    assert "sites.archive: http_cert_file and http_key_file go together" in text
    assert f"sites.base.http_cert_file: {tmp_path / 'gone.crt'} is not a readable file" in text
    assert "links.summit.archive.http: archive's data server speaks https (http_cert_file set)" in text
    assert "security.http_ca: unknown setting" in text
    assert "security.http_ca_file: required to verify data servers that speak https" in text
    assert f"security.mqtt_ca_file: cannot load {tmp_path / 'garbage.crt'}" in text
