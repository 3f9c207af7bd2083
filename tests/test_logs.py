"""Log lines as journald and jq get them: one JSON object per line, the libraries' too, each file's obsid."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, MakeCluster, Subscribe, converged, wait_settled

from ops.camera import write_exposure

DAYOBS = "20261120"


def log_lines(cluster_workdir: Path, site: str) -> list[str]:
    """Every line a site's daemon wrote (its stdout and stderr, as systemd would hand them to journald)."""
    return (cluster_workdir / "logs" / f"{site}.log").read_text().splitlines()


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    """Each line as JSON; a line that is not one JSON object fails the test, naming it."""
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(entry, dict), line
        out.append(entry)
    return out


async def test_every_line_of_a_daemon_is_json_including_paho_and_aiohttp(
    make_cluster: MakeCluster, subscribe: Subscribe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the libraries logging at debug, every line of every daemon parses as JSON, and the libraries'
    own lines (paho's ``mqtt``, ``aiohttp.access``) are among them, with the site's name."""
    monkeypatch.setenv("SKYRELAY_LIBRARY_LOG_LEVEL", "debug")
    cluster = await make_cluster()
    arrivals = await subscribe(cluster, "archive", "skyrelay/v1/arrivals/#")
    await asyncio.to_thread(write_exposure, cluster.inbox, "LATISS", dayobs=DAYOBS, seqnum=1, size_bytes=50_000)
    await wait_settled(cluster, archived=1, wake=arrivals)
    entries = {site: parsed(log_lines(cluster.workdir, site)) for site in ("summit", "base", "archive")}
    loggers = {entry.get("logger") for lines in entries.values() for entry in lines}
    assert {"mqtt", "aiohttp.access"} <= loggers, loggers
    for site, lines in entries.items():
        assert all(entry["level"] and entry["timestamp"] and "event" in entry for entry in lines), site
        paho = [entry for entry in lines if entry.get("logger") == "mqtt"]
        assert paho and all(entry["site"] == site for entry in paho), site


async def test_an_arriving_files_log_lines_carry_its_obsid(make_cluster: MakeCluster, subscribe: Subscribe) -> None:
    """Registered at the summit, stored at the base, archived, and custody back at the summit: each of
    those lines names the file and carries its exposure's obsid."""
    cluster = await make_cluster()
    await converged(cluster)  # (a file written before the base is up at the summit goes direct)
    arrivals = await subscribe(cluster, "archive", "skyrelay/v1/arrivals/#")
    [path] = await asyncio.to_thread(
        write_exposure, cluster.inbox, "LATISS", dayobs=DAYOBS, seqnum=7, size_bytes=50_000
    )
    obsid = f"AT_O_{DAYOBS}_000007"
    await wait_settled(cluster, archived=1, wake=arrivals)
    about: dict[str, dict[str, dict[str, Any]]] = {}
    for site in ("summit", "base", "archive"):
        for entry in parsed(log_lines(cluster.workdir, site)):
            if entry.get("file") == path.name:
                assert entry.get("obsid") == obsid, entry
                about.setdefault(site, {})[entry["event"]] = entry
    assert {"file_registered", "custody_received"} <= set(about["summit"]), about.get("summit")
    assert "file_stored" in about["base"], about.get("base")
    assert "file_archived" in about["archive"], about.get("archive")


def logged_by_a_child(stderr: Path, env: dict[str, str]) -> list[str]:
    """The lines a process configured by ``ops.logs`` writes for one skyrelay warning and one library error."""
    code = (
        "import logging, structlog\n"
        "from ops import logs\n"
        "logs.configure('info', json_logs=True)\n"
        "structlog.get_logger('daemon.test').warning('disk_low', free_gb=3)\n"
        "logging.getLogger('mqtt').error('failed to receive on socket: %s', 'reset')\n"
    )
    with stderr.open("wb") as err:
        subprocess.run([sys.executable, "-c", code], cwd=REPO, stderr=err, env=env, check=True, timeout=60)
    return stderr.read_text().splitlines()


def test_lines_bound_for_journald_carry_a_priority_prefix_and_others_none(tmp_path: Path) -> None:
    """When stderr is the journal ($JOURNAL_STREAM), each JSON line starts with its syslog priority (<4>
    warning, <3> error), which journald strips and stores; written anywhere else the lines are bare JSON."""
    plain = logged_by_a_child(tmp_path / "plain.log", {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"})
    assert [json.loads(line)["event"] for line in plain] == ["disk_low", "failed to receive on socket: reset"]

    journal = tmp_path / "journal.log"
    journal.touch()
    st = journal.stat()
    lines = logged_by_a_child(journal, {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert [line[:3] for line in lines] == ["<4>", "<3>"]
    assert [json.loads(line[3:])["level"] for line in lines] == ["warning", "error"]
