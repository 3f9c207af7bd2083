"""Deployment from the topology: ``skyrelay check`` and ``skyrelay render``, the systemd units they feed,
systemd's STATUS= lines, and the shipped Prometheus rules."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import aiomqtt
import pytest
from conftest import REPO, SITES, MakeCluster, cli_ok, run_cli, write_files

from ops.broker import free_port, mosquitto_binary
from ops.secure import secure

pytestmark = pytest.mark.timeout(120)

SYSTEMD = REPO / "systemd"
TOKEN = "0123456789abcdef-deploy"


def _needs(tool: str) -> str:
    """The path of ``tool`` (also looked for beside this interpreter, where .ci/install puts promtool);
    skipped with the reason outside CI when it is missing, an error under CI."""
    found = shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))
    if found is None:
        reason = f"{tool} is not installed (.ci/install installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _topology(tmp_path: Path, *, ports: dict[str, int] | None = None, ca: Path | None = None) -> Path:
    """A three-site topology on this machine (not yet secured), with its token in a file; with ``ca``, the base's
    broker speaks TLS (``mqtts://``) and that CA verifies it."""
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    ports = ports or {f"{s}.{k}": free_port() for s in SITES for k in ("broker", "http")}
    roles = {"summit": "summit", "base": "relay", "archive": "archive"}
    lines = []
    for site, role in roles.items():
        lines += [
            f"[sites.{site}]",
            f'role = "{role}"',
            f'broker = "{"mqtts" if ca and site == "base" else "mqtt"}://127.0.0.1:{ports[f"{site}.broker"]}"',
            f'http_listen = "127.0.0.1:{ports[f"{site}.http"]}"',
            f'state_dir = "{tmp_path / site / "state"}"',
        ]
        if role == "summit":
            lines.append(f'inbox = "{tmp_path / "inbox"}"')
        if role == "archive":
            lines.append(f'archive_root = "{tmp_path / "archive"}"')
        lines.append("")
    lines += [
        "[routes]",
        'primary = ["summit", "base", "archive"]',
        'direct = ["summit", "archive"]',
        "",
        "[security]",
        f'token_file = "{token}"',
        *([f'mqtt_ca_file = "{ca}"'] if ca else []),
    ]
    path = tmp_path / "topology.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_check_lists_every_problem_at_once_and_exits_2(tmp_path: Path) -> None:
    """A topology with several mistakes in different sections gets one line per mistake, all in one run,
    and exit status 2."""
    path = tmp_path / "topology.toml"
    path.write_text(
        """
[sites.summit]
role = "summit"
broker = "mqtt://127.0.0.1:1884"
http_listen = "127.0.0.1:1884"
state_dir = "state/summit"
inbox = "inbox"

[sites.archive]
role = "archive"
broker = "mqtt://127.0.0.1:1886"
http_listen = "127.0.0.1:8083"
state_dir = "state/archive"
archive_root = "archive"
colour = "blue"

[routes]
primary = ["summit", "moon", "archive"]

[tuning]
ack_timeout_s = -1

[security]
token = "short"
"""
    )
    run = await run_cli("check", "--topology", str(path))
    assert run.code == 2, run
    lines = [line for line in run.out.splitlines() if line.startswith("  - ")]
    expected = [
        "sites.archive.colour: unknown setting",
        "routes.primary: unknown site(s) moon",
        "tuning.ack_timeout_s: must be a positive number",
        "security.token: must be at least 16 characters",
        "sites.summit.public_key: missing",
        "sites.summit.broker and sites.summit.http_listen both listen on 127.0.0.1:1884",
    ]
    for text in expected:
        assert any(text in line for line in lines), f"{text!r} not among:\n{run.out}"
    assert f"{len(lines)} problem(s)" in run.out.splitlines()[0]


async def test_check_of_a_secured_topology_checks_this_hosts_files(tmp_path: Path) -> None:
    """A secured topology whose site files are in place checks OK (exit 0); another site's key in their place
    and an archive root the unit hides (under /home) are both reported in one run (exit 2)."""
    secured = secure(_topology(tmp_path), tmp_path / "secrets", install_root=tmp_path / "secrets")
    out = await cli_ok("check", "--topology", str(secured), "--site", "base")
    assert "OK (3 sites, 2 routes; files of base present)" in out
    (tmp_path / "secrets" / "base" / "signing.key").unlink()
    shutil.copy(tmp_path / "secrets" / "summit" / "signing.key", tmp_path / "secrets" / "base" / "signing.key")
    text = secured.read_text()
    secured.write_text(text.replace(f'archive_root = "{tmp_path / "archive"}"', 'archive_root = "/home/obs/archive"'))
    run = await run_cli("check", "--topology", str(secured), "--site", "base", "--json")
    assert run.code == 2
    problems = json.loads(run.out)["problems"]
    assert len(problems) == 2, problems
    hidden, key = sorted(problems)
    assert hidden.startswith("sites.archive.archive_root: /home/obs/archive is invisible") and "ProtectHome" in hidden
    assert "does not match public_key" in key and str(tmp_path / "secrets" / "base" / "signing.key") in key


def test_the_shipped_mosquitto_configs_are_what_render_writes(tmp_path: Path) -> None:
    """systemd/mosquitto-<site>.conf are rendered examples: rendering the shipped example topology (secured)
    gives them byte for byte, so they cannot drift from the renderer."""
    from daemon.config import load_topology
    from ops.deploy import render

    example = (SYSTEMD / "topology.example.toml").read_text()
    token = tmp_path / "token"
    token.write_text(TOKEN)
    plain = tmp_path / "example.toml"
    plain.write_text(example.replace("/etc/skyrelay/token", str(token)))
    topology = load_topology(secure(plain, tmp_path / "secrets"), check_dirs=False)
    for site in SITES:
        rendered = render(topology, site, tmp_path / site)
        assert rendered.mosquitto_conf.read_text() == (SYSTEMD / f"mosquitto-{site}.conf").read_text(), site


@pytest.mark.parametrize("scheme", ["mqtt", "mqtts"])
async def test_render_output_starts_a_broker_that_takes_the_sites_daemon_and_refuses_others(
    tmp_path: Path, scheme: str
) -> None:
    """The rendered mosquitto config, password and ACL files, used in place (the broker's unit names that
    config), run a real mosquitto on the topology's port, over TLS when the topology says mqtts:// (with the
    certificate installed where INSTALL.md says): the site's daemon logs in with its rendered password; an
    unknown account and a known one with a wrong password are refused."""
    from ops.pki import make_pki

    host = tmp_path / "host"
    etc = host / "etc" / "skyrelay"
    ca, cert, key = make_pki(tmp_path / "pki", "deploy test") if scheme == "mqtts" else (None, None, None)
    secured = secure(_topology(tmp_path, ca=ca), tmp_path / "secrets", install_root=etc)
    code = await run_cli(
        "render", "--topology", str(secured), "--site", "base", "--out", str(host),
        "--secrets", str(tmp_path / "secrets"), "--install-root", str(etc), "--broker-state", str(host / "var"),
        "--json",
    )  # fmt: skip
    assert code.code == 0, code
    written = json.loads(code.out)  # --json: what was written, as one document
    assert written["site"] == "base" and "etc/skyrelay/mosquitto-base.conf" in written["files"], written
    broker_unit = (host / "etc" / "systemd" / "system" / "mosquitto-skyrelay@.service").read_text()
    assert f"ExecStart=/usr/sbin/mosquitto -c {etc}/mosquitto-%i.conf" in broker_unit
    (host / "var" / "base").mkdir(parents=True)
    tls = None
    if ca is not None and cert is not None and key is not None:
        notes = (host / "INSTALL.md").read_text()
        assert f"{etc}/tls/base.crt" in notes and f"{etc}/tls/base.key" in notes
        (etc / "tls").mkdir()
        shutil.copy(cert, etc / "tls" / "base.crt")
        shutil.copy(key, etc / "tls" / "base.key")
        tls = aiomqtt.TLSParameters(ca_certs=str(ca))
    password = (etc / "base" / "mqtt.password").read_text().strip()
    conf = (etc / "mosquitto-base.conf").read_text().splitlines()
    port = int(next(line for line in conf if line.startswith("listener ")).split()[1])
    # systemd starts the broker as User=mosquitto; started by hand it must be told to stay who it is.
    wrapper = tmp_path / "run.conf"
    wrapper.write_text(f"user {getpass.getuser()}\ninclude_dir {etc}\n")
    proc = await asyncio.create_subprocess_exec(
        mosquitto_binary(), "-c", str(wrapper), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        assert proc.stdout is not None
        seen = b""
        async with asyncio.timeout(10):
            while b" running" not in seen:
                line = await proc.stdout.readline()
                assert line, f"mosquitto exited: {seen.decode(errors='replace')}"
                seen += line
        client = aiomqtt.Client("127.0.0.1", port, username="site-base", password=password, tls_params=tls)
        async with client:
            await client.subscribe("skyrelay/v1/site/base/#", qos=1)
        for username, secret in (("intruder", password), ("site-summit", password)):
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.1", port, username=username, password=secret, tls_params=tls):
                    pass
    finally:
        proc.terminate()
        await proc.wait()


def test_systemd_analyze_verifies_the_rendered_units(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the units and the site's drop-in as rendered (no warning about them),
    including SystemCallFilter, UMask and ProtectProc; a misspelt directive in the drop-in would be reported."""
    analyze = _needs("systemd-analyze")
    from daemon.config import load_topology
    from ops.deploy import render

    topology = load_topology(secure(_topology(tmp_path), tmp_path / "secrets"), check_dirs=False)
    for site in SITES:
        units = render(topology, site, tmp_path / site, prefix=Path(sys.prefix)).units[0].parent
        names = [str(units / f"skyrelay@{site}.service"), str(units / f"mosquitto-skyrelay@{site}.service")]
        result = subprocess.run([analyze, "verify", "--man=no", *names], capture_output=True, text=True, timeout=60)
        complaints = [line for line in result.stderr.splitlines() if str(tmp_path) in line or "skyrelay" in line]
        assert result.returncode == 0 and complaints == [], result.stderr
    unit = (tmp_path / "archive" / "etc" / "systemd" / "system" / "skyrelay@.service").read_text()
    for directive in ("SystemCallFilter=@system-service", "UMask=0027", "ProtectProc=invisible"):
        assert directive in unit.splitlines()
    dropin = tmp_path / "archive" / "etc" / "systemd" / "system" / "skyrelay@archive.service.d" / "10-directories.conf"
    assert f"ReadWritePaths={tmp_path / 'archive'}" in dropin.read_text()
    dropin.write_text(dropin.read_text() + "ReadWritePath=/srv/typo\n")
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(dropin.parent.parent / "skyrelay@archive.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Unknown key" in result.stderr and "ReadWritePath" in result.stderr


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    """The shipped alert rules load in ``promtool check rules`` and fire as their unit tests expect."""
    promtool = _needs("promtool")
    for args in (["check", "rules", "skyrelay-alerts.yml"], ["test", "rules", "skyrelay-alerts.test.yml"]):
        result = subprocess.run([promtool, *args], cwd=SYSTEMD, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr


async def test_a_daemon_tells_systemd_its_queue_and_route_as_they_change(make_cluster: MakeCluster) -> None:
    """Run under a real NOTIFY_SOCKET, the summit sends READY=1, then STATUS= lines that follow what it does:
    its links once they are up, a peer that goes offline, and the route new files take after the failover."""
    cluster = await make_cluster()
    await cluster.daemons["summit"].stop()
    address = f"\0skyrelay-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    sock.bind(address)
    env = dict(os.environ, NOTIFY_SOCKET="@" + address[1:])
    log = (cluster.workdir / "logs" / "summit-notify.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "run", "--topology", str(cluster.topology_path), "--site", "summit",
        env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    statuses: list[str] = []

    async def until(predicate: str) -> None:
        async with asyncio.timeout(60):
            while not any(predicate in s for s in statuses):
                message = (await loop.sock_recv(sock, 4096)).decode()
                statuses.extend(line for line in message.splitlines() if line.startswith(("STATUS=", "READY=")))

    try:
        await until("READY=1")
        await until("; links up")
        await cluster.daemons["base"].stop()
        await until("offline: base")
        await write_files(cluster, seqnum=1, size_bytes=16 * 1024, detectors=["R22_S00"])
        await until("route direct")
    finally:
        proc.terminate()
        await proc.wait()
        sock.close()
        log.close()
    line = next(s for s in statuses if "route direct" in s)
    assert line.startswith("STATUS=summit summit: ") and "pending" in line and "offline: base" in line


def _system_service_calls(analyze: str) -> set[str]:
    """``@system-service`` expanded into system call names, as systemd-analyze lists them."""

    def expand(group: str, seen: set[str]) -> set[str]:
        listing = subprocess.run([analyze, "syscall-filter", group], capture_output=True, text=True, timeout=30)
        names: set[str] = set()
        for line in (line.strip() for line in listing.stdout.splitlines()[1:]):
            if line.startswith("@") and line not in seen:
                seen.add(line)
                names |= expand(line, seen)
            elif line and not line.startswith(("#", "@")):
                names.add(line)
        return names

    return expand("@system-service", set())


async def test_the_daemons_work_confined_as_the_unit_confines_them(
    make_cluster: MakeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every daemon of a cluster runs under a seccomp filter of ``@system-service`` whose other calls kill the
    process (stricter than the unit's EPERM) and with umask 0027: an exposure is archived and custody comes
    back, no daemon died, and what the archive wrote is not readable by others."""
    analyze = _needs("systemd-analyze")
    import ctypes.util

    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp is not installed")
    calls = _system_service_calls(analyze)
    assert {"inotify_add_watch", "epoll_wait", "fdatasync", "sendfile", "clone"} <= calls
    listing = tmp_path / "system-service.txt"
    listing.write_text("\n".join(sorted(calls)) + "\n")
    monkeypatch.setenv("SKYRELAY_TEST_SYSCALLS", str(listing))
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests" / "seccomp"))
    cluster = await make_cluster()
    for site, daemon in cluster.daemons.items():
        status = await asyncio.to_thread(Path(f"/proc/{daemon.pid}/status").read_text)
        assert "Seccomp:\t2" in status, f"{site} is not confined"
    paths = await write_files(cluster, seqnum=1, size_bytes=64 * 1024, detectors=["R22_S00", "R22_S01"])
    from conftest import assert_daemons_alive, wait_settled

    await wait_settled(cluster, archived=len(paths))
    assert_daemons_alive(cluster)
    written = [p for p in (cluster.archive_root / "raw").rglob("*") if p.is_file()]
    assert len(written) == len(paths)
    journal = cluster.workdir / "archive" / "state" / "journal.sqlite"
    assert all(p.stat().st_mode & 0o007 == 0 for p in [*written, journal])
