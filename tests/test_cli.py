"""The operator's command line as an operator meets it: JSON for scripts, exit codes, reasons, closed pipes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
from conftest import REPO, MakeCluster, Subscribe, cli_ok, operator_headers, run_cli, wait_settled

from ops.camera import write_exposure
from ops.cli import build_parser, observing_day
from ops.output import EXIT_CODES_HELP, Exit, walk_parsers
from protocol.control import RouteControl
from protocol.signing import load_private_key, seal

DAYOBS = "20261120"


def leaf_commands() -> dict[str, argparse.ArgumentParser]:
    """Every runnable command of ``skyrelay`` by its full name (``drill cut``, ``products list``...)."""
    leaves: dict[str, argparse.ArgumentParser] = {}

    def visit(parser: argparse.ArgumentParser, name: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            leaves[name] = parser
        for action in subs:
            for sub_name, sub in action.choices.items():
                visit(sub, f"{name} {sub_name}".strip())

    visit(build_parser(), "")
    return leaves


def test_every_option_of_every_command_has_a_help_text_and_every_help_lists_the_exit_codes() -> None:
    """``--help`` of each command explains each of its options and ends with the one table of exit statuses."""
    missing = [
        f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
        for parser in walk_parsers(build_parser())
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert missing == []
    for parser in walk_parsers(build_parser()):
        assert EXIT_CODES_HELP in parser.format_help(), parser.prog
    assert "141" in EXIT_CODES_HELP and all(f"{int(code)} " in EXIT_CODES_HELP for code in Exit)


def test_every_command_takes_json_and_the_target_after_the_command_as_before_it() -> None:
    """``--json`` is an option of every command; ``drill cut L --workdir D`` parses as ``drill --workdir D cut L``."""
    assert [name for name, parser in leaf_commands().items() if "--json" not in parser._option_string_actions] == []
    parser = build_parser()
    after = parser.parse_args(["drill", "cut", "summit-base", "--workdir", "D", "--json"])
    before = parser.parse_args(["drill", "--workdir", "D", "--json", "cut", "summit-base"])
    expected = ("D", True, "summit-base")
    assert (after.workdir, after.json, after.link) == (before.workdir, before.json, before.link) == expected
    for command in (["status"], ["queue"], ["routes"], ["verify"], ["products", "list"], ["drill", "status"]):
        assert parser.parse_args([*command, "--topology", "T"]).topology == "T", command


async def test_json_output_of_each_command_parses(make_cluster: MakeCluster) -> None:
    """On a drill cluster with one archived file, every read-only command's ``--json`` is one JSON document."""
    cluster = await make_cluster(drill=True)
    await asyncio.to_thread(write_exposure, cluster.inbox, "LATISS", dayobs=DAYOBS, seqnum=1, size_bytes=50_000)
    await wait_settled(cluster, archived=1)
    workdir = ("--workdir", str(cluster.workdir))
    commands = [
        ("status",),
        ("queue",),
        ("routes",),
        ("verify", "--dayobs", DAYOBS),
        ("quarantine", "list"),
        ("products", "list"),
        ("drill", "status"),
    ]
    runs = await asyncio.gather(*(run_cli(*command, *workdir, "--json") for command in commands))
    schema = await run_cli("schema", "offer", "--json")
    assert schema.code == 0 and json.loads(schema.out)["title"], schema.err
    for command, run in zip(commands, runs, strict=True):
        assert run.code == 0, (command, run.err[-2000:])
        json.loads(run.out)  # one document, nothing else on stdout
    status = json.loads(runs[0].out)
    assert status["archive"]["catalog"] == {"archived": 1} and status["summit"]["files"] == {"archived": 1}
    assert set(json.loads(runs[1].out)) == {"summit", "base", "archive"}
    assert json.loads(runs[3].out)["complete"] == 1

    cut = await run_cli("drill", "cut", "summit-base", *workdir, "--json")  # the target after the sub-command
    assert cut.code == 0, cut.err
    assert json.loads(cut.out)["now"]["mode"] == "cut"
    table = await run_cli("status", *workdir)
    assert "{" not in table.out and "archived 1" in table.out, table.out  # no Python dict reprs


async def test_a_refused_route_command_exits_4_with_the_summits_reason(make_cluster: MakeCluster) -> None:
    """``routes force bogus`` exits 4 and prints the summit's own reason; ``routes force direct`` applies."""
    cluster = await make_cluster()
    workdir = ("--workdir", str(cluster.workdir))
    refused = await run_cli("routes", "force", "bogus", *workdir)
    assert refused.code == Exit.REFUSED, refused
    assert "unknown route 'bogus'; routes: primary, direct" in refused.err, refused.err
    applied = await run_cli("routes", "force", "direct", *workdir, "--json")
    assert applied.code == 0, applied.err
    answer = json.loads(applied.out)
    assert answer["applied"] is True and answer["policy"] == {"primary": "auto", "direct": "force"}
    assert answer["message"] == "operator: routes force direct", answer  # the account named once
    assert [r["policy"] for r in answer["routes"]] == ["auto", "force"]


async def test_the_route_control_endpoint_refuses_a_command_the_operator_did_not_sign(
    make_cluster: MakeCluster,
) -> None:
    """``POST /v1/routes/control`` with the operator's login but a command signed by the base's key, or not
    signed at all, answers 403 with the reason and leaves the policy automatic."""
    cluster = await make_cluster()
    body = RouteControl(control_id="ctl-forged-1", command="disable", route="primary", issued_by="operator",
                        at=time.time()).to_json()  # fmt: skip
    base_key = load_private_key(cluster.workdir / "base" / "state" / "signing.key")
    forged = seal(body, kind="control", signer="base", key=base_key, to="summit")
    url = json.loads((cluster.workdir / "cluster.json").read_text())["sites"]["summit"]["http"]
    async with aiohttp.ClientSession(headers=operator_headers(cluster)) as session:
        for payload, status in ((forged, 403), (body, 403)):
            async with session.post(url + "/v1/routes/control", data=payload) as response:
                answer = await response.json()
                assert (response.status, answer["applied"]) == (status, False), answer
                assert "signature refused" in answer["error"], answer
        async with session.get(url + "/v1/status") as response:
            routes = (await response.json())["routes"]
    assert [r["policy"] for r in routes] == ["auto", "auto"]


async def test_verify_shows_the_servers_message_and_exits_5_on_a_day_without_data(make_cluster: MakeCluster) -> None:
    """A malformed dayobs exits 4 with the archive's "dayobs must be YYYYMMDD"; an empty day exits 5,
    and without --dayobs verify says it checked the current observing day (UTC-12h)."""
    cluster = await make_cluster()
    workdir = ("--workdir", str(cluster.workdir))
    bad, empty, current = await asyncio.gather(
        run_cli("verify", "--dayobs", "2026-12-01", *workdir),
        run_cli("verify", "--dayobs", "20200101", *workdir),
        run_cli("verify", *workdir, "--json"),
    )
    assert bad.code == Exit.REFUSED and "dayobs must be YYYYMMDD" in bad.err, bad
    assert "HTTP Error" not in bad.err
    assert empty.code == Exit.NO_DATA and "NO DATA" in empty.out, empty
    assert current.code == Exit.NO_DATA, current
    report = json.loads(current.out)
    assert report["dayobs_is_current"] and report["no_data"]
    assert report["dayobs"] in {observing_day(), observing_day()}  # (a noon UTC boundary may pass in between)
    assert "current observing day" in current.err


async def closed_pipe_run(*args: str, timeout_s: float = 60.0) -> tuple[int, str]:
    """Run ``skyrelay ARGS`` with its stdout a pipe whose reader is already gone; (exit code, stderr)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ops.cli", *args, cwd=REPO, stdout=write_end, stderr=asyncio.subprocess.PIPE
        )
    finally:
        os.close(write_end)
    async with asyncio.timeout(timeout_s):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


async def test_a_closed_output_pipe_ends_status_quietly(make_cluster: MakeCluster) -> None:
    """``status | head -1`` (the reader gone): exit 141, as coreutils, and no traceback."""
    cluster = await make_cluster()
    for args in (("status", "--workdir", str(cluster.workdir)), ("schema",)):
        code, err = await closed_pipe_run(*args)
        assert code == 141, (args, err)
        assert "Traceback" not in err and "BrokenPipe" not in err, err


async def test_up_keeps_running_when_its_output_pipe_closes_and_stops_cleanly(tmp_path: Path) -> None:
    """``up … | tee`` and tee ends: the cluster still comes up, and SIGINT stops it with status 0, no traceback."""
    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "up", "--workdir", str(tmp_path / "up"),
        cwd=REPO, stdout=write_end, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    os.close(write_end)
    reader = os.fdopen(read_end, "rb")
    try:
        ready = await asyncio.wait_for(asyncio.to_thread(reader.readline), timeout=90)
        assert b"cluster ready" in ready
    finally:
        reader.close()  # the reader goes away: "stopping" will meet a closed pipe
    status = await run_cli("status", "--workdir", str(tmp_path / "up"))
    assert status.code == 0, status.err
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    text = err.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text and "BrokenPipe" not in text, text[-3000:]


async def test_status_with_one_site_frozen_shows_the_others_and_names_it(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """With the archive stopped by SIGSTOP, status still shows summit and base, says the archive is
    unreachable, and exits 6; ``routes`` shows the base's hop to the archive DOWN, as the page does, and the
    primary route DOWN at that hop (not "healthy", whatever the summit counts); ``verify --timeout 2`` gives up
    on the archive after 2 s with exit 6."""
    cluster = await make_cluster()
    archive = cluster.daemons["archive"].proc
    assert archive is not None
    presence = await subscribe(cluster, "base", "skyrelay/v1/presence/archive")
    archive.send_signal(signal.SIGSTOP)
    try:
        table, as_json, verify = await asyncio.gather(
            run_cli("status", "--workdir", str(cluster.workdir), "--timeout", "2", timeout_s=30),
            run_cli("status", "--workdir", str(cluster.workdir), "--timeout", "2", "--json", timeout_s=30),
            run_cli("verify", "--workdir", str(cluster.workdir), "--timeout", "2", timeout_s=30),
        )
        # The archive's last will reaches the base's broker once its keepalive lapses.
        await presence.wait_for(lambda ms: any((m.data or {}).get("state") == "offline" for m in ms), timeout_s=30)
        routes = json.loads(await cli_ok("routes", "--workdir", str(cluster.workdir), "--json", timeout_s=30))
        routes_table = await cli_ok("routes", "--workdir", str(cluster.workdir), timeout_s=30)
    finally:
        archive.send_signal(signal.SIGCONT)
    assert table.code == as_json.code == Exit.UNREACHABLE, (table, as_json)
    assert verify.code == Exit.UNREACHABLE and "no answer within 2s" in verify.err, verify  # not 30 s of silence
    rows = {line.split()[0]: line for line in table.out.splitlines() if line.strip()}
    assert "summit" in rows["summit"] and "relay" in rows["base"], table.out
    assert "UNREACHABLE" in rows["archive"], table.out
    assert "archive unreachable" in table.err and "no answer within 2s" in table.err, table.err
    report = json.loads(as_json.out)
    assert report["archive"]["reachable"] is False and report["summit"]["role"] == "summit"
    assert report["base"]["role"] == "relay"
    primary = next(r for r in routes if r["name"] == "primary")
    hop = next(h for h in primary["hops"] if h["from"] == "base")
    assert hop["to"] == "archive" and hop["healthy"] is False and "archive is offline" in hop["reason"], primary
    # The route as a whole is not called healthy while a hop of it is down (the summit may still count it up).
    assert primary["end_to_end_healthy"] is False and primary["down_at"] == ["base->archive"], primary
    row = next(line for line in routes_table.splitlines() if " primary " in f" {line} ")
    assert "DOWN at base->archive" in row and " healthy " not in row, routes_table


PRODUCT = {
    "product_id": "flat-ComCam-R22_S11-r-20261201-ab12",
    "kind": "flat",
    "instrument": "ComCam",
    "detector": "R22_S11",
    "filter": "r",
    "archive_path": "calib/ComCam/flat/20261201/flat-ComCam-R22_S11-r-20261201-ab12.fits",
    "checksum": "c" * 64,
    "created_at": 1796193625.0,
    "job_key": "k" * 64,
    "expired": {"at": 1796280025.0, "kind": "flat", "archive_path": "calib/.../x.fits"},
    "provenance": {
        "code_version": "0.9.0",
        "executor": "local",
        "job_key": "k" * 64,
        "bias": {"product_id": "bias-ComCam-R22_S11-20261201-0001", "checksum": "b" * 64},
        "notes": ["built without dark: none within 30 days"],
        "inputs": [
            {"name": "CC_C_20261201_000010_R22_S11.fits", "checksum": "1" * 64},
            {"name": "CC_C_20261201_000011_R22_S11.fits", "checksum": "2" * 64},
        ],
        "left_out": [{"name": "CC_C_20261201_000011_R22_S11.fits", "reason": "lamp level 0.5 of the median"}],
        "params": {"min_frames": 3, "clip_sigma": 3.0},
        "stats": {"frames_used": 1, "mean": 1.0, "stdev": 0.01, "amps": {"C00": {"gain": 1.0123456, "level": 7}}},
        "warnings": ["only one frame used"],
    },
}


async def test_products_show_prints_tables_in_the_clis_conventions() -> None:
    """``products show``'s text is the CLI's plain tables when piped: no Python reprs or colour codes, each input
    on one row with its checksum and whether it was used (with the reason when left out), the expiry marked."""
    script = "import json, sys; from ops.products_cli import show_product; show_product(json.load(sys.stdin))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out_b, err_b = await asyncio.wait_for(proc.communicate(json.dumps(PRODUCT).encode()), 60)
    out = out_b.decode()
    assert proc.returncode == 0, err_b.decode()
    assert "\x1b[" not in out and "{'" not in out, out
    lines = out.splitlines()
    assert lines[0] == f"product {PRODUCT['product_id']}", out
    used = next(line for line in lines if line.startswith("CC_C_20261201_000010_R22_S11.fits"))
    left = next(line for line in lines if line.startswith("CC_C_20261201_000011_R22_S11.fits"))
    assert used.split()[1:] == ["1" * 64, "used"], used
    assert left.split()[1] == "2" * 64 and "LEFT OUT: lamp level 0.5 of the median" in left, left
    assert any(line.startswith("expired") and "file deleted 2026-12-03" in line for line in lines), out
    assert any(line.startswith("note") and "built without dark" in line for line in lines), out
    assert any(line.split()[:3] == ["C00", "1.012", "7"] for line in lines), out
    assert "inputs: 2, used 1" in out and "warning: only one frame used" in out
