"""Operator drills: inject a fault on a link of a running drill cluster (``skyrelay drill ...``).

The link simulator of a drill cluster serves a JSON control API; its URL is in ``WORKDIR/cluster.json`` under
``["drill"]["control"]``. ``skyrelay drill cut summit-base`` cuts the link, ``restore`` brings it back,
``status`` shows every link's mode and counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from ops import output
from ops.linksim import LinkMode, link_name, resolve_link_name
from ops.output import Exit
from ops.target import target_options, workdir_of

__all__ = [
    "DrillError",
    "add_drill_arguments",
    "drill_main",
    "format_status",
    "link_name",
    "read_control_url",
]

HTTP_TIMEOUT_S: Final = 10.0
EXIT_UNREACHABLE: Final = int(Exit.UNREACHABLE)
EXIT_USAGE: Final = int(Exit.USAGE)

_COMMAND_MODES: Final[Mapping[str, LinkMode]] = {
    "cut": LinkMode.CUT,
    "restore": LinkMode.UP,
    "blackhole": LinkMode.BLACKHOLE,
    "slow": LinkMode.SLOW,
    "flaky": LinkMode.FLAKY,
    "corrupt": LinkMode.CORRUPT,
}


class DrillError(Exception):
    """A drill could not be carried out; ``exit_code`` is what the CLI returns."""

    def __init__(self, message: str, *, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_drill_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the drill sub-commands (and ``--workdir``/``--json``, unless ``parser`` has them) to ``parser``.

    ``--workdir`` and ``--json`` are accepted before and after the sub-command alike
    (``drill --workdir D cut L`` and ``drill cut L --workdir D``). The chosen sub-command is stored
    in ``args.drill_command``; pass the namespace to `drill_main`.
    """
    if "--workdir" not in parser._option_string_actions:
        for action in target_options()._actions:
            if action.option_strings:
                parser._add_action(action)
    if "--json" not in parser._option_string_actions:
        parser._add_action(_json_suppressed())
    common = argparse.ArgumentParser(add_help=False, parents=[target_options()])
    common._add_action(_json_suppressed())
    commands = parser.add_subparsers(dest="drill_command", metavar="COMMAND", required=True)
    helps = {
        "cut": "reset every connection on the link and refuse new ones",
        "restore": "bring the link back up",
        "blackhole": "silently drop everything on the link (only timeouts notice)",
        "slow": "cap the link's bandwidth and add latency",
        "flaky": "reset connections on the link at random times",
        "corrupt": "flip bits in HTTP response bodies crossing the link",
    }
    for command, help_text in helps.items():
        sub = commands.add_parser(command, help=help_text, description=help_text, parents=[common])
        sub.add_argument("link", metavar="LINK", help="link name, sites in either order (summit-base)")
        if command == "slow":
            sub.add_argument("--mbps", type=float, required=True, help="bandwidth per direction, Mbit/s")
            sub.add_argument("--latency-ms", type=float, default=None, help="added one-way latency, ms")
        elif command == "flaky":
            sub.add_argument(
                "--reset-interval", type=float, default=None, help="mean seconds between resets (default 2)"
            )
        elif command == "corrupt":
            sub.add_argument("--probability", type=float, default=None, help="per body chunk (default 0.01)")
    measure = commands.add_parser(
        "measure",
        help="break a link under traffic and report failover and failback times",
        description="Needs files flowing (e.g. `skyrelay up --drill --camera ComCam`). Exit 1 when failover "
        "or failback was not seen.",
        parents=[common],
    )
    measure.add_argument("link", metavar="LINK", help="link name, sites in either order (summit-base)")
    measure.add_argument("--mode", choices=["cut", "blackhole"], default="cut", help="how the link breaks")
    measure.add_argument("--duration", type=float, default=20.0, help="seconds the link stays broken")
    measure.add_argument("--baseline", type=float, default=10.0, help="seconds of normal traffic first")
    commands.add_parser("status", help="show every link's mode and counters", parents=[common])


def _json_suppressed() -> argparse.Action:
    """``--json`` whose default is suppressed (so a sub-command does not reset the group's)."""
    holder = argparse.ArgumentParser(add_help=False)
    return holder.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON on stdout instead of a table"
    )


def drill_main(args: argparse.Namespace) -> int:
    """Run the drill sub-command in ``args``; print the result. Returns the process exit code.

    0 on success; 2 for an unknown link, a rejected parameter or a missing cluster.json / drill section;
    6 when the link simulator cannot be reached; 1 when ``measure`` did not see failover and failback.
    """
    as_json = bool(getattr(args, "json", False))
    try:
        if getattr(args, "topology", None):
            raise DrillError("drills need a `skyrelay up --drill` cluster: pass its --workdir, not --topology")
        control = read_control_url(_drill_workdir(args))
        links: dict[str, Any] = _request(control, "GET", "/links")["links"]
        if args.drill_command == "status":
            if as_json:
                output.emit_json(links)
            else:
                _status_table(links)
            return 0
        name = resolve_link_name(args.link, list(links))
        if name is None:
            raise DrillError(f"unknown link {args.link!r}; known links: {', '.join(links) or '(none)'}")
        if args.drill_command == "measure":
            return _measure(args, control, name)
        body = _mode_request(args)
        reply = _request(control, "POST", f"/links/{urllib.parse.quote(name, safe='')}", body)
    except DrillError as exc:
        print(f"skyrelay drill: {exc}", file=sys.stderr)
        return exc.exit_code
    old = links[name]["state"]["mode"]
    if as_json:
        output.emit_json({"link": name, "before": old, "now": reply["state"]})
    else:
        shown = name if args.link == name else f"{args.link} (link {name})"  # as the operator typed it
        output.say(f"{shown}: {old} -> {_describe(reply['state'])}")
    return 0


def _drill_workdir(args: argparse.Namespace) -> Path:
    """``--workdir``; without it the default of every command (skyrelay-demo), or ``.`` when that has no cluster."""
    workdir = workdir_of(args)
    if getattr(args, "workdir", None) is None and not (workdir / "cluster.json").exists():
        return Path(".")
    return workdir


def _measure(args: argparse.Namespace, control: str, name: str) -> int:
    from ops.rehearse import format_report, measure_outage

    def set_mode(link: str, mode: str) -> None:
        _request(control, "POST", f"/links/{urllib.parse.quote(link, safe='')}", {"mode": mode})

    with output.progress(f"drill {args.mode} {name}: starting") as step:
        report = asyncio.run(
            measure_outage(
                _drill_workdir(args),
                name,
                set_mode,
                mode=args.mode,
                duration_s=args.duration,
                baseline_s=args.baseline,
                phase=lambda text: step(0, description=f"drill {args.mode} {name}: {text}"),
            )
        )
    if getattr(args, "json", False):
        output.emit_json(report)
    else:
        output.say(format_report(report))
    return 0 if report["failover_s"] is not None and report["failback_s"] is not None else int(Exit.FAILED)


def read_control_url(workdir: Path) -> str:
    """The link simulator's control URL from ``workdir/cluster.json`` (``["drill"]["control"]``).

    Raises:
        DrillError: the file is missing or unreadable, or has no drill control URL.
    """
    path = workdir / "cluster.json"
    try:
        cluster = json.loads(path.read_text())
    except FileNotFoundError:
        raise DrillError(f"{path} not found: is a drill cluster running in {workdir}?") from None
    except (OSError, ValueError) as exc:
        raise DrillError(f"cannot read {path}: {exc}") from exc
    drill = cluster.get("drill") if isinstance(cluster, dict) else None
    control = drill.get("control") if isinstance(drill, dict) else None
    if not isinstance(control, str) or not control:
        raise DrillError(f"{path} has no drill.control URL: the cluster was started without a link simulator")
    return control.rstrip("/")


def format_status(links: Mapping[str, Any]) -> str:
    """A plain table of every link's mode, parameters and counters (from the simulator's ``GET /links``)."""
    rows = [_STATUS_HEADER, *(_status_row(name, link) for name, link in links.items())]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_STATUS_HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


_STATUS_HEADER: Final = ("LINK", "MODE", "SINCE", "CONNS", "RESETS", "CORRUPT", "BYTES")


def _status_row(name: str, link: Mapping[str, Any]) -> tuple[str, ...]:
    state, stats = link["state"], link["stats"]
    return (
        name,
        _describe(state),
        time.strftime("%H:%M:%S", time.localtime(state["since"])),
        f"{stats['connections_active']}/{stats['connections_total']}",
        str(stats["resets"]),
        str(stats["corrupted_chunks"]),
        ", ".join(f"{flow} {_human_bytes(count)}" for flow, count in stats["bytes"].items()),
    )


def _status_table(links: Mapping[str, Any]) -> None:
    rows = []
    for name, link in links.items():
        cells: list[object] = list(_status_row(name, link))
        mode = link["state"]["mode"]
        cells[1] = output.styled(cells[1], "green" if mode == LinkMode.UP else "bold red")
        rows.append(cells)
    output.table([h.lower() for h in _STATUS_HEADER], rows, right=["conns", "resets", "corrupt"])


def _mode_request(args: argparse.Namespace) -> dict[str, Any]:
    mode = _COMMAND_MODES[args.drill_command]
    body: dict[str, Any] = {"mode": mode.value}
    if mode is LinkMode.SLOW:
        body["mbps"] = args.mbps
        if args.latency_ms is not None:
            body["latency_ms"] = args.latency_ms
    elif mode is LinkMode.FLAKY and args.reset_interval is not None:
        body["reset_interval_s"] = args.reset_interval
    elif mode is LinkMode.CORRUPT and args.probability is not None:
        body["corrupt_probability"] = args.probability
    return body


def _request(control: str, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
    """One JSON call to the control API; errors become `DrillError` with the server's message."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        control + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                message = json.loads(exc.read())["error"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code} {exc.reason}"
        raise DrillError(message) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        message = f"cannot reach the link simulator at {control}: {reason}"
        raise DrillError(message, exit_code=EXIT_UNREACHABLE) from exc
    except ValueError as exc:
        message = f"bad reply from the link simulator at {control}: {exc}"
        raise DrillError(message, exit_code=EXIT_UNREACHABLE) from exc


def _describe(state: Mapping[str, Any]) -> str:
    mode = state["mode"]
    if mode == LinkMode.SLOW:
        parts = [f"{state['mbps']:g} Mbit/s" if state["mbps"] is not None else "no cap"]
        if state["latency_ms"]:
            parts.append(f"+{state['latency_ms']:g} ms")
        return f"slow ({', '.join(parts)})"
    if mode == LinkMode.FLAKY:
        return f"flaky (reset every ~{state['reset_interval_s']:g} s)"
    if mode == LinkMode.CORRUPT:
        return f"corrupt (p={state['corrupt_probability']:g} per body chunk)"
    return str(mode)


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
