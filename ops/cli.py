"""skyrelay: move telescope files summit -> base -> archive with custody, and watch them go.

Operator commands talk to a running system: a `skyrelay up` cluster (--workdir, default
skyrelay-demo) or a deployed one (--topology FILE). --workdir/--topology and --json may be given
after any command (and, for command groups such as drill, before or after the sub-command).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime
import itertools
import json
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import structlog

from ops import logs, output
from ops.output import CliError, Exit
from ops.target import Target, resolve, server_message, target_options

log = structlog.get_logger()

STATUS_TIMEOUT_S = 2.0
"""How long status and queue wait for each site (all asked at once): an unreachable one costs this, not more."""


def cmd_run(args: argparse.Namespace) -> int:
    """Run one site's daemon."""
    from daemon.config import load_topology
    from daemon.errors import JournalError, TopologyError
    from daemon.site import run
    from daemon.trust import SigningKeyError

    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        log.error("topology_invalid", error=str(exc), topology=str(args.topology))
        return Exit.USAGE
    logs.PROCESS_FIELDS["site"] = args.site
    if args.site not in topology.sites:
        reason = f"unknown site {args.site!r}; the topology has {', '.join(topology.sites)}"
        log.error("unknown_site", error=reason)
        return Exit.USAGE
    try:
        asyncio.run(run(topology, args.site))
    except (JournalError, SigningKeyError) as exc:
        log.error("cannot_start", error=str(exc))
        return Exit.USAGE
    # Anything else ends the daemon with its traceback, logged as one line by ops.logs' excepthook, and
    # status 1: systemd restarts it and the journal resumes.
    return Exit.OK


def _retention_argument(value: str) -> tuple[str, float]:
    site, sep, seconds = value.partition("=")
    try:
        parsed = float(seconds)
    except ValueError:
        parsed = -1.0
    if not sep or site not in ("summit", "base", "archive") or parsed < 0:
        raise argparse.ArgumentTypeError(f"want SITE=SECONDS with SITE summit, base or archive, not {value!r}")
    return site, parsed


def cmd_secure(args: argparse.Namespace) -> int:
    """Create the accounts, broker files and keys a topology needs (keeping those that exist)."""
    from ops.accounts import AccountsError
    from ops.secure import SecureError, secure

    try:
        target = secure(Path(args.topology), Path(args.out), install_root=Path(args.install_root))
    except (SecureError, AccountsError) as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    if args.json:
        output.emit_json({"topology": str(target), "out": str(args.out), "install_root": str(args.install_root)})
        return Exit.OK
    output.say(
        f"skyrelay secure: wrote {target} and each site's files under {args.out}/<site>/ (install them under "
        f"{args.install_root}/<site>/ on that site's host; see systemd/README.md)"
    )
    return Exit.OK


def _tell(args: argparse.Namespace, event: str, text: str, **fields: Any) -> None:
    """A line of ``up``'s progress on stdout (a JSON line with --json); a reader gone away stops nothing."""
    line = json.dumps({"event": event, **fields}) if args.json else text
    try:
        print(line, flush=True)
    except BrokenPipeError:  # `up | tee` and tee ended: keep running the cluster, stop writing
        output._silence_stdout()


def cmd_up(args: argparse.Namespace) -> int:
    """Run the whole system on this machine until SIGINT/SIGTERM."""
    from ops.cluster import DEFAULT_ROUTES, Cluster

    workdir = Path(args.workdir).resolve()
    try:
        routes = {name: DEFAULT_ROUTES[name] for name in args.routes.split(",")} if args.routes else None
    except KeyError as exc:
        raise CliError(f"unknown route {exc}; choose from {','.join(DEFAULT_ROUTES)}", Exit.USAGE) from None
    corrections = [Path(p).resolve() for p in args.corrections]
    http_tls = None
    if args.https:
        from ops.pki import PkiError, make_pki

        try:
            http_tls = make_pki(workdir / "pki", "skyrelay up")
        except PkiError as exc:
            raise CliError(str(exc), Exit.USAGE) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        cluster = Cluster(
            workdir,
            routes=routes,
            drill=args.drill,
            correction_dirs=corrections,
            http_tls=http_tls,
            retention=dict(args.retention),
        )
        async with cluster:
            info = workdir / "cluster.json"
            _tell(args, "ready", f"skyrelay up: cluster ready, see {info}", cluster=str(info))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(cluster.supervise(stop), name="up.supervise")
                if args.camera:
                    from ops.camera import run_camera

                    tg.create_task(
                        run_camera(
                            cluster.inbox,
                            instrument=args.camera,
                            exposures=args.exposures,
                            cadence_s=args.cadence,
                            size_bytes=int(args.size_mb * 1e6),
                            stop=stop,
                        ),
                        name="up.camera",
                    )
                await stop.wait()
            _tell(args, "stopping", "skyrelay up: stopping")

    asyncio.run(main())
    return Exit.OK


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schemas of every message (always JSON)."""
    from protocol import all_schemas

    schemas = all_schemas()
    if args.type:
        if args.type not in schemas:
            raise CliError(f"unknown message type {args.type!r}; known: {', '.join(schemas)}", Exit.USAGE)
        output.emit_json(schemas[args.type])
    else:
        output.emit_json(schemas)
    return Exit.OK


# ---- status and queue: every site at once, each with a short timeout ----------------------------


def _ask_every_site(target: Target, path: str, timeout_s: float) -> dict[str, Any]:
    """``GET path`` of every site at once; each site's answer, or the :class:`CliError` saying why not."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(target.http) or 1) as pool:
        futures = {
            name: pool.submit(target.request_json, url + path, timeout_s=timeout_s) for name, url in target.http.items()
        }
        answers: dict[str, Any] = {}
        for name, future in futures.items():
            try:
                answers[name] = future.result()
            except CliError as exc:
                answers[name] = exc
    return answers


FILE_STATE_WORDS = {"held": "awaiting custody"}
"""Journal file states as ``status`` words them: a ``held`` file is kept here until the archive's custody
comes back (not "held for want of a route", which ``queue`` shows as ``held``)."""


def _emit_answers(answers: dict[str, Any]) -> None:
    """Every site's answer as one JSON document; a site that did not answer is ``{reachable: false, error}``."""
    output.emit_json(
        {
            name: {"reachable": False, "error": answer.message} if isinstance(answer, CliError) else answer
            for name, answer in answers.items()
        }
    )


def _pairs(mapping: Any) -> str:
    """``{'archived': 9, 'held': 1}`` as ``archived 9, held 1`` (``-`` when empty)."""
    if not isinstance(mapping, dict) or not mapping:
        return "-"
    return ", ".join(f"{key} {value}" for key, value in mapping.items())


def _age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def cmd_status(args: argparse.Namespace) -> int:
    """Show each site's status; sites that do not answer within --timeout are named, the others still shown."""
    target = resolve(args)
    answers = _ask_every_site(target, "/v1/status", args.timeout)
    unreachable = {name: a for name, a in answers.items() if isinstance(a, CliError)}
    code = Exit.UNREACHABLE if unreachable else Exit.OK
    if args.json:
        _emit_answers(answers)
        return code
    rows: list[tuple[object, ...]] = []
    for name, st in answers.items():
        if isinstance(st, CliError):
            rows.append((name, "", "", "", output.styled("UNREACHABLE", "bold red"), "", "", ""))
            continue
        links = output.styled("")
        for peer, link in st.get("links", {}).items():
            up = bool(link.get("connected"))
            if len(links):
                links.append(", ")
            links.append(f"{peer} ")
            links.append("up" if up else "DOWN", style="green" if up else "bold red")
        problems = st.get("problems") or {}
        rows.append(
            (
                name,
                st.get("role", ""),
                st.get("pid", ""),
                _age(st.get("uptime_s")),
                links,
                st.get("pending", 0),
                _pairs({FILE_STATE_WORDS.get(k, k): v for k, v in (st.get("files") or {}).items()}),
                output.styled(_pairs(problems), "yellow" if problems else None),
            )
        )
    output.table(["site", "role", "pid", "up", "links", "pending", "files", "problems"], rows, right=["pid", "pending"])
    for name, st in answers.items():
        if not isinstance(st, CliError) and st.get("catalog"):
            output.say(f"{name} catalog: {_pairs(st['catalog'])}")
    for name, err in unreachable.items():
        output.note(f"skyrelay status: {name} unreachable: {err.message}", "bold red")
    return code


def _queue_state(item: dict[str, Any]) -> Any:
    from daemon.sending.router import HELD_ERROR

    if item.get("inflight"):
        return output.styled("in flight", "green")
    if item.get("last_error") == HELD_ERROR:
        return output.styled("held", "bold red")
    return output.styled("retrying", "yellow") if item.get("failures") else output.styled("waiting")


def cmd_queue(args: argparse.Namespace) -> int:
    """Show what each site still has to deliver (the oldest first)."""
    target = resolve(args)
    answers = _ask_every_site(target, "/v1/queue", args.timeout)
    unreachable = {name: a for name, a in answers.items() if isinstance(a, CliError)}
    code = Exit.UNREACHABLE if unreachable else Exit.OK
    if args.json:
        _emit_answers(answers)
        return code
    rows = []
    for name, items in answers.items():
        if isinstance(items, CliError):
            continue
        oldest = sorted(items, key=lambda i: -float(i.get("age_s") or 0))
        for item in oldest[: args.limit]:
            rows.append(
                (
                    name,
                    item["kind"],
                    item["file"],
                    item["peer"],
                    item.get("route") or "-",  # custody and acks go hop by hop, on no route
                    _queue_state(item),
                    item["attempt"],
                    item["failures"],
                    _age(item.get("age_s")),
                    item.get("last_error") or "",
                )
            )
    output.table(
        ["site", "kind", "file", "to", "route", "state", "attempt", "failures", "age", "last error"],
        rows,
        right=["attempt", "failures", "age"],
    )
    summary = ", ".join(f"{name} {len(items)}" for name, items in answers.items() if not isinstance(items, CliError))
    output.say(f"pending: {summary}" + (f" (showing the oldest {args.limit} per site)" if rows else ""))
    for name, err in unreachable.items():
        output.note(f"skyrelay queue: {name} unreachable: {err.message}", "bold red")
    return code


# ---- routes -------------------------------------------------------------------------------------


ROUTES_TIMEOUT_S = 2.0
"""How long ``routes`` waits for each site's judgement of its own hop."""


def cmd_routes(args: argparse.Namespace) -> int:
    """Show the summit's routes, or change their policy; a refused change exits 4 with the summit's reason."""
    target = resolve(args)
    outcome: dict[str, Any] | None = None
    if args.action != "show":
        if args.action != "auto" and not args.route:
            raise CliError(f"routes {args.action} needs a route name", Exit.USAGE)
        outcome = _route_control(target, args.action, args.route)
    from daemon.http.console import hop_judgement

    statuses = _ask_every_site(target, "/v1/status", ROUTES_TIMEOUT_S)
    summit = statuses[target.summit]
    if isinstance(summit, CliError):
        raise summit
    routes = summit.get("routes", [])
    for route in routes:
        # Each hop as the site at its start judges it (the same judgement as the console page), so that a
        # frozen archive shows as "base -> archive DOWN" here too while the summit still counts the route up.
        sites = route["sites"]
        route["hops"] = [
            {
                "from": a,
                "to": b,
                **hop_judgement(None if isinstance(statuses.get(a), CliError) else statuses.get(a), route["name"], b),
            }
            for a, b in itertools.pairwise(sites)
        ]
        # The route as a whole: the summit's own judgement, and no hop further on judged down by its site.
        down = [f"{h['from']}->{h['to']}" for h in route["hops"] if h["healthy"] is False]
        route["end_to_end_healthy"] = bool(route["healthy"]) and not down
        route["down_at"] = down
    if args.json:
        output.emit_json(routes if outcome is None else {**outcome, "routes": routes})
        return Exit.OK
    if outcome is not None:
        output.note(f"skyrelay routes: {outcome.get('message') or 'sent'}", "green")
    rows = []
    for route in routes:
        ev = route["evidence"]
        evidence = (
            f"next={ev['next_hop']} connected={ev['connected']} breaker={ev['breaker']} "
            f"failures={ev['consecutive_failures']} degraded_for={ev['degraded_for_s']}s"
            + (f" last='{ev['last_failure']}'" if ev.get("last_failure") else "")
        )
        hops = "  ".join(
            f"{h['from']}->{h['to']} "
            + ("?" if h["healthy"] is None else "ok" if h["healthy"] else f"DOWN ({h['reason']})")
            for h in route["hops"]
        )
        rows.append(
            (
                output.styled("*", "bold") if ev.get("in_use") else "",
                route["name"],
                " -> ".join(route["sites"]),
                output.styled(route["policy"], None if route["policy"] == "auto" else "yellow"),
                output.state(route["end_to_end_healthy"], "healthy", f"DOWN at {', '.join(route['down_at'])}")
                if route["down_at"]
                else output.state(route["healthy"], "healthy", "DOWN"),
                ev.get("queued", 0),
                hops,
                evidence,
            )
        )
    headers = ["", "route", "sites", "policy", "health", "queued", "hops (as each judges)", "evidence"]
    output.table(headers, rows, right=["queued"])
    return Exit.OK


def _route_control(target: Target, command: str, route: str | None) -> dict[str, Any]:
    """Send a signed route command to the summit and return its answer.

    The summit answers ``POST /v1/routes/control`` with the outcome; a summit without that endpoint
    (404) gets the command in its mailbox over MQTT, as before, and no answer comes back.

    Raises:
        CliError: the summit refused the command (``Exit.REFUSED``, with its reason) or is unreachable.
    """
    import time
    import uuid

    from protocol.control import RouteControl

    message = RouteControl(
        control_id=f"ctl-{uuid.uuid4().hex}",
        command=command,  # type: ignore[arg-type]
        route=route,
        issued_by=target.operator,
        at=time.time(),
    )
    sealed = target.sign_control(message.to_json())
    url = target.http[target.summit] + "/v1/routes/control"
    request = urllib.request.Request(url, data=sealed, method="POST", headers={"Content-Type": "application/json"})
    try:
        with target.urlopen(request, timeout_s=30) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise CliError(f"routes {command} {route or ''}".strip() + f" refused: {server_message(exc)}",
                           Exit.REFUSED) from None  # fmt: skip
        exc.close()
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach the summit at {url}: {exc}", Exit.UNREACHABLE) from None
    asyncio.run(_publish_route_control(target, sealed))
    return {"applied": None, "message": "sent to the summit's mailbox (this summit gives no answer)"}


async def _publish_route_control(target: Target, sealed: bytes) -> None:
    from protocol import topics

    async with target.mqtt_client(target.summit) as client:
        await client.publish(topics.site(target.summit, "control"), sealed, qos=1)


# ---- verify -------------------------------------------------------------------------------------


def observing_day(moment: datetime.datetime | None = None) -> str:
    """The observing day of ``moment`` (now by default): its date in UTC-12h, ``YYYYMMDD``.

    Rubin's DAYOBS convention: a night's exposures, before and after midnight in Chile, share one day
    that changes at 12:00 UTC (09:00 in Chile); the same rule the camera simulator stamps into DAYOBS.
    """
    when = moment or datetime.datetime.now(datetime.UTC)
    return (when.astimezone(datetime.UTC) - datetime.timedelta(hours=12)).strftime("%Y%m%d")


VERIFY_TIMEOUT_S = 30.0
"""How long ``verify`` waits for the archive by default (a large day takes it a moment)."""


def cmd_verify(args: argparse.Namespace) -> int:
    """Completeness of one observing day, and what the summit still has in flight.

    Exit 0 when nothing is missing, 1 when the archive misses something, 3 when any file registered at
    the summit has been on its way longer than the topology's ``end_to_end_timeout_s`` (3 wins over 1),
    5 when the archive has nothing at all for the day.
    """
    from daemon.config import Tuning

    target = resolve(args)
    http = target.http[target.archive]
    current = args.dayobs is None
    dayobs = observing_day() if current else args.dayobs
    if current:
        output.note(
            f"skyrelay verify: dayobs {dayobs}, the current observing day (the date at UTC-12h); "
            "--dayobs YYYYMMDD for another"
        )
    report = target.request_json(f"{http}/v1/verify?dayobs={urllib.parse.quote(dayobs)}", timeout_s=args.timeout)
    report["dayobs_is_current"] = current
    timeout_s = (target.topology.tuning if target.topology is not None else Tuning()).end_to_end_timeout_s
    summit = target.http[target.summit]
    in_flight: dict[str, Any] | None
    try:
        status = target.request_json(summit + "/v1/status")
        in_flight = status.get("in_flight")
        if not isinstance(in_flight, dict):
            # A summit without the in_flight block: held files from its counts, overdue ones from the
            # ages in its queue (since queued, which a restart resets) and custody stuck beyond the held.
            queue = target.request_json(summit + "/v1/queue")
            offers = [i for i in queue if i.get("kind") == "offer"]
            late = sorted(str(i["file"]) for i in offers if float(i["age_s"]) > timeout_s)
            custody = status.get("custody") or {}
            late_custody = max(0, int(custody.get("stuck", 0)) - int(custody.get("held", 0)))
            in_flight = {
                "files": int((status.get("files") or {}).get("held", 0)),
                "held": int(custody.get("held", 0)),
                "oldest_age_s": max((float(i["age_s"]) for i in offers), default=None),
                "overdue_after_s": timeout_s,
                "overdue": len(late) + late_custody,
                "overdue_examples": late[:10],
            }
    except CliError as exc:  # the summit is unreachable: say so, and judge the archive alone
        output.note(f"skyrelay verify: in-flight files unknown: {exc.message}", "yellow")
        in_flight = None
    report["in_flight"] = in_flight
    overdue = bool(in_flight and in_flight.get("overdue"))
    empty = not report["exposures"] and not report["quarantined"] and not report["gaps"]
    report["no_data"] = empty
    if overdue:
        code = Exit.OVERDUE
    elif not report["ok"]:
        code = Exit.FAILED
    else:
        code = Exit.NO_DATA if empty else Exit.OK
    if args.json:
        output.emit_json(report)
        return code
    output.say(
        f"dayobs {report['dayobs']}{' (the current observing day)' if current else ''}: "
        f"{report['complete']} complete, {report['incomplete']} incomplete exposures"
        + (f", {report['arriving']} still arriving" if report.get("arriving") else "")
    )
    rows = []
    for exp in report["exposures"]:
        missing = ", ".join(exp["missing"][:12]) + (" ..." if len(exp["missing"]) > 12 else "")
        if missing and exp["state"] == "pending":
            missing = f"awaiting {missing}"
        ok = not exp["missing"]
        rows.append(
            (
                exp["instrument"],
                exp["obsid"],
                exp["seqnum"] or "",
                output.styled(exp["state"], "green" if ok else "yellow" if exp["state"] == "pending" else "red"),
                f"{exp['arrived']}/{exp['expected']}",
                missing,
            )
        )
    if rows:
        output.table(["instrument", "obsid", "seq", "state", "arrived", "missing"], rows, right=["seq", "arrived"])
    for instrument, gap in report["gaps"].items():
        output.say(f"sequence gap {instrument}: missing SEQNUM {', '.join(map(str, gap))}", "red")
    for q in report["quarantined"]:
        output.say(f"quarantined #{q['id']}: {q['name']} -> {q['archive_path']} ({q['reason']})", "yellow")
    if in_flight is not None and in_flight.get("files"):
        oldest = in_flight.get("oldest_age_s")
        output.say(
            f"in flight: {in_flight['files']} file(s) registered at the summit whose custody has not reached it yet"
            + (f" ({in_flight['held']} held for want of a usable route)" if in_flight.get("held") else "")
            + (f", the oldest {oldest:.0f}s ago" if oldest is not None else "")
        )
    if overdue:
        assert in_flight is not None
        examples = ", ".join(in_flight.get("overdue_examples") or [])
        output.say(
            f"OVERDUE: {in_flight['overdue']} file(s) on their way longer than {timeout_s:.0f}s"
            + (f": {examples}" if examples else ""),
            "bold red",
        )
    elif empty and report["ok"]:
        output.say(f"NO DATA: the archive has no exposure of dayobs {dayobs}", "bold yellow")
    elif report["ok"]:
        output.say("OK: nothing missing", "bold green")
    if not report["ok"]:
        output.say("MISSING: see above", "bold red")
    return code


def cmd_quarantine(args: argparse.Namespace) -> int:
    """List quarantined files, or release one for re-ingest."""
    target = resolve(args)
    http = target.http[target.archive]
    if args.action == "list":
        rows = target.request_json(f"{http}/v1/quarantine")
        if args.json:
            output.emit_json(rows)
            return Exit.OK
        output.table(
            ["id", "name", "archive path", "reason"],
            [(f"#{q['id']}", q["name"], q["archive_path"], q["reason"]) for q in rows],
        )
        output.say(f"{len(rows)} file(s) in quarantine")
        return Exit.OK
    if args.id is None:
        raise CliError("quarantine release needs an id (see `skyrelay quarantine list`)", Exit.USAGE)
    request = urllib.request.Request(f"{http}/v1/quarantine/{args.id}/release", method="POST")
    try:
        result = target.request_json(request, timeout_s=120)
    except CliError as exc:
        raise CliError(f"release of #{args.id}: {exc.message}", exc.code) from None
    if args.json:
        output.emit_json(result)
        return Exit.OK
    output.say(f"released #{args.id} -> {result['archive_path']} ({len(result.get('fixes', []))} fix(es))")
    return Exit.OK


def cmd_subscribe(args: argparse.Namespace) -> int:
    """Print notices (or any skyrelay topic) from the archive's broker as JSON lines.

    With ``--since N``, first replay the archive's notice log after position N (``GET /v1/notices``),
    then follow live over MQTT, with no gap and no repeat: the subscription is made first (what arrives
    meanwhile waits in the client's queue), the log is paged to its newest notice, then the queue and
    the live stream are read, skipping every position already printed; a position that jumps ahead,
    or a lost broker connection, is filled from the log. Each line carries its ``position``.
    """
    target = resolve(args)
    site = args.site or target.archive
    if site not in target.brokers:
        raise CliError(f"unknown site {site!r}; sites: {', '.join(target.brokers)}", Exit.USAGE)
    if args.since is not None:
        if site != target.archive:
            raise CliError(f"--since replays the archive's notice log; {site!r} has none", Exit.USAGE)
        if args.since < 0 or not 1 <= args.page_size <= 10_000:
            raise CliError("--since must be 0 or more, --page-size 1..10000", Exit.USAGE)
        follower = _NoticeFollower(target, args.topic, since=args.since, count=args.count, page_size=args.page_size)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(follower.run())
        return 0

    async def main() -> None:
        async with target.mqtt_client(site, role="subscriber") as client:
            await client.subscribe(args.topic, qos=1)
            count = 0
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                print(json.dumps({"topic": str(message.topic), "message": json.loads(payload or b"null")}), flush=True)
                count += 1
                if args.count and count >= args.count:
                    return

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


class _Enough(Exception):
    """``--count`` lines were printed."""


class _NoticeFollower:
    """``subscribe --since``: the archive's notice log replayed, then MQTT live, each position printed once."""

    RECENT_IDS = 100_000
    """Notices without a position (not from the log) are de-duplicated by id over this many."""

    def __init__(self, target: Target, topic_filter: str, *, since: int, count: int, page_size: int) -> None:
        self.target = target
        self.topic_filter = topic_filter
        self.last = since
        """Every notice of the log up to this position has been printed or did not match the filter."""
        self.count = count
        self.page_size = page_size
        self.printed = 0
        self.repeats = 0
        """Notices received again (from the log and the broker both, or re-published) and not printed."""
        self._recent: dict[str, None] = {}
        self._reached_log = False

    async def run(self) -> None:
        """Replay, then follow until ``count`` lines (forever when 0); reconnect with backoff when the broker goes."""
        import aiomqtt

        from daemon.backoff import backoff_delay

        failures = 0
        with contextlib.suppress(_Enough):
            while True:
                try:
                    async with self.target.mqtt_client(self.target.archive, role="subscriber") as client:
                        await client.subscribe(self.topic_filter, qos=1)
                        await self._replay()  # meanwhile the client queues what the broker delivers
                        failures = 0
                        async for message in client.messages:
                            payload = message.payload if isinstance(message.payload, bytes) else b""
                            await self._live(str(message.topic), payload)
                except aiomqtt.MqttError as exc:
                    failures += 1
                    delay = backoff_delay(failures, initial_s=0.2, cap_s=10.0)
                    log.warning("broker_lost", error=str(exc), resume_after=self.last, retry_in_s=round(delay, 2))
                    await asyncio.sleep(delay)  # another process's broker: nothing to wait on but time
        log.info("subscribe_finished", printed=self.printed, repeats=self.repeats, through=self.last)

    async def _replay(self) -> None:
        """Page the log from ``last`` to its newest notice, printing what matches the filter."""
        from aiomqtt import Topic

        replayed = 0
        while True:
            page = await self._page(self.last)
            for item in page["notices"]:
                position = int(item["position"])
                if position <= self.last:
                    continue
                self.last = position
                if Topic(item["topic"]).matches(self.topic_filter):
                    replayed += 1
                    self._print(position, item["topic"], item["message"])
            if page["caught_up"] or not page["notices"]:
                if page["newest"] < self.last:
                    log.warning("notice_log_behind", newest=page["newest"], since=self.last)
                log.info("notices_replayed", through=self.last, replayed=replayed, newest=page["newest"])
                return

    async def _live(self, topic: str, payload: bytes) -> None:
        message = json.loads(payload or b"null")
        position = message.get("position") if isinstance(message, dict) else None
        if not isinstance(position, int) or isinstance(position, bool):
            # Not in the log (presence, problems, a notice of an older archive): printed once, live only.
            notice_id = message.get("notice_id") if isinstance(message, dict) else None
            if isinstance(notice_id, str):
                if notice_id in self._recent:
                    self.repeats += 1
                    return
                self._recent[notice_id] = None
                if len(self._recent) > self.RECENT_IDS:
                    del self._recent[next(iter(self._recent))]
            self._print(None, topic, message)
            return
        if position > self.last + 1:
            await self._replay()  # positions between are on other topics, or were lost on the wire
        if position <= self.last:
            self.repeats += 1  # printed already (from the log, or a repeat after an archive crash)
            return
        self.last = position
        self._print(position, topic, message)

    async def _page(self, after: int) -> dict[str, Any]:
        import urllib.request

        url = f"{self.target.http[self.target.archive]}/v1/notices?after={after}&limit={self.page_size}"
        request = urllib.request.Request(url)

        def fetch() -> dict[str, Any]:
            with self.target.urlopen(request, timeout_s=30, role="subscriber") as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data

        from daemon.backoff import backoff_delay

        failures = 0
        while True:
            try:
                page = await asyncio.to_thread(fetch)
            except urllib.error.HTTPError as exc:
                raise CliError(f"{url} refused ({exc.code}): {server_message(exc)}", Exit.REFUSED) from None
            except (urllib.error.URLError, OSError) as exc:
                if not self._reached_log:
                    raise CliError(f"cannot reach {url}: {exc}", Exit.UNREACHABLE) from None
                failures += 1
                delay = backoff_delay(failures, initial_s=0.2, cap_s=10.0)
                log.warning("notice_log_unreachable", error=str(exc), retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            self._reached_log = True
            return page

    def _print(self, position: int | None, topic: str, message: Any) -> None:
        print(json.dumps({"position": position, "topic": topic, "message": message}), flush=True)
        self.printed += 1
        if self.count and self.printed >= self.count:
            raise _Enough


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``skyrelay``."""
    parser = argparse.ArgumentParser(prog="skyrelay", description=__doc__)
    logs.add_log_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    json_opt = output.json_option()
    target = target_options()
    system = [json_opt, target]  # every command that talks to a running system

    p = sub.add_parser("run", help="run one site's daemon (what systemd starts)")
    p.add_argument("--topology", required=True, help="the topology file (e.g. /etc/skyrelay/topology.toml)")
    p.add_argument("--site", required=True, help="which of the topology's sites this daemon is")
    p.add_argument(
        "--json",
        action="store_true",
        dest="json_logs",
        default=argparse.SUPPRESS,
        help="JSON log lines (= --json-logs)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "secure", help="create broker accounts, ACLs and signing keys for a topology", parents=[json_opt]
    )
    p.add_argument("--topology", required=True, help="the topology file (one from before accounts and keys is fine)")
    p.add_argument("--out", required=True, help="folder for the new topology, keys and broker files")
    p.add_argument("--install-root", default="/etc/skyrelay", help="where each host keeps its site's files")
    p.set_defaults(func=cmd_secure)

    p = sub.add_parser(
        "up",
        help="run summit, base and archive with their brokers on this machine",
        parents=[json_opt],
        description="Run summit, base and archive with their brokers on this machine until Ctrl-C or SIGTERM. "
        'With --json, progress is JSON lines ({"event": "ready", ...}).',
    )
    p.add_argument("--workdir", default="skyrelay-demo", help="directory of the cluster (cluster.json, logs, data)")
    p.add_argument("--camera", metavar="INSTRUMENT", help="also run the camera simulator (ComCam, LATISS, LSSTCam)")
    p.add_argument("--exposures", type=int, default=None, help="camera: stop after N exposures")
    p.add_argument("--cadence", type=float, default=15.0, help="camera: seconds between exposures")
    p.add_argument("--size-mb", type=float, default=4.0, help="camera: size of each file")
    p.add_argument("--routes", help="comma-separated subset of primary,direct (default both)")
    p.add_argument("--drill", action="store_true", help="put every link behind the link simulator")
    p.add_argument("--https", action="store_true", help="data servers speak HTTPS (a throwaway CA in WORKDIR/pki)")
    p.add_argument("--corrections", action="append", default=[], help="header correction directory (repeatable)")
    p.add_argument(
        "--retention",
        action="append",
        default=[],
        type=_retention_argument,
        metavar="SITE=SECONDS",
        help="keep a site's copies this long after custody, then delete them (repeatable; retention_s)",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("schema", help="print the JSON Schemas of the messages (always JSON)", parents=[json_opt])
    p.add_argument("type", nargs="?", help="one message type (e.g. offer); all of them when left out")
    p.set_defaults(func=cmd_schema)

    timeout_help = "seconds to wait for each site (all are asked at once)"
    p = sub.add_parser("status", help="every site's status; names the sites that do not answer", parents=system)
    p.add_argument("--timeout", type=float, default=STATUS_TIMEOUT_S, help=timeout_help)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("queue", help="pending deliveries of every site, the oldest first", parents=system)
    p.add_argument("--limit", type=int, default=20, help="rows per site in the table (--json shows all)")
    p.add_argument("--timeout", type=float, default=STATUS_TIMEOUT_S, help=timeout_help)
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser(
        "routes",
        help="show or change the summit's routes; a refused change exits 4 with the summit's reason",
        parents=system,
    )
    p.add_argument(
        "action",
        nargs="?",
        default="show",
        choices=["show", "force", "disable", "enable", "auto"],
        help="show; force R (only R); disable R; enable R; auto (every route back to automatic choice)",
    )
    p.add_argument("route", nargs="?", help="the route's name (primary, direct, ...)")
    p.set_defaults(func=cmd_routes)

    p = sub.add_parser(
        "verify",
        help="completeness of an observing day (default: the current one), and files still in flight",
        parents=system,
        description="Completeness of an observing day at the archive, and the files registered at the summit that "
        "are not yet archived (in flight). The observing day (DAYOBS) is the date at UTC-12h, Rubin's convention: "
        "it changes at 12:00 UTC. Exit status: 0 nothing missing; 1 the archive misses files; 3 a file "
        "has been on its way longer than the topology's end_to_end_timeout_s (overdue; takes precedence over 1); "
        "5 the archive has no data for that day. In-flight files that are not overdue do not fail verify.",
    )
    p.add_argument("--dayobs", default=None, help="YYYYMMDD (default: the current observing day, the date at UTC-12h)")
    p.add_argument(
        "--timeout", type=float, default=VERIFY_TIMEOUT_S, help="seconds to wait for the archive (exit 6 after)"
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "quarantine", help="list quarantined files or release one after fixing its cause", parents=system
    )
    p.add_argument("action", choices=["list", "release"], help="list them, or release one for re-ingest")
    p.add_argument("id", nargs="?", type=int, help="release: the quarantine id (#N in the list)")
    p.set_defaults(func=cmd_quarantine)

    p = sub.add_parser(
        "subscribe", help="print notices from a site's broker as JSON lines (always JSON)", parents=system
    )
    p.add_argument("--site", default=None, help="whose broker (default: the archive)")
    p.add_argument("--topic", default="skyrelay/v1/arrivals/#", help="MQTT topic filter")
    p.add_argument("--count", type=int, default=0, help="exit after N messages (0: follow forever)")
    p.add_argument(
        "--since",
        type=int,
        default=None,
        metavar="N",
        help="first replay the archive's notices after position N (0: all), then follow live; no gap, no repeat",
    )
    p.add_argument("--page-size", type=int, default=1000, help="with --since: notices per request (1..10000)")
    p.set_defaults(func=cmd_subscribe)

    from ops.drill import add_drill_arguments, drill_main

    p = sub.add_parser(
        "drill", help="network failure drills on a cluster started with `up --drill`", parents=[json_opt, target]
    )
    add_drill_arguments(p)
    p.set_defaults(func=drill_main)

    from ops.bench import add_bench_arguments, bench_main

    p = sub.add_parser("bench", help="benchmark a fresh local cluster beside rsync --fsync and dd")
    add_bench_arguments(p)
    p.set_defaults(func=bench_main)

    simulate = sub.add_parser("simulate", help="simulators that write into a cluster's summit inbox")
    simulate_commands = simulate.add_subparsers(dest="what", required=True, metavar="SIMULATOR")
    from ops.camera import add_camera_arguments, camera_main

    p = simulate_commands.add_parser(
        "camera", help="write FITS exposures into the summit inbox like a camera", parents=[json_opt]
    )
    add_camera_arguments(p)
    p.set_defaults(func=camera_main)

    from ops.products_cli import add_products_commands, add_simulate_calibs

    add_simulate_calibs(simulate_commands)
    add_products_commands(sub)

    from ops.alerts_cli import add_alerts_commands
    from ops.products_cli import add_simulate_night

    add_simulate_night(simulate_commands)
    add_alerts_commands(sub)
    from ops.deploy_cli import add_deploy_commands
    from ops.rehearsal import add_rehearse_commands
    from ops.template_cli import add_template_commands

    add_deploy_commands(sub)
    add_template_commands(sub)
    add_rehearse_commands(sub)
    return output.finish_parser(parser)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``skyrelay`` console script (exit codes: :class:`ops.output.Exit`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, json_logs=args.json_logs, library_level=args.library_log_level)
    return output.run_command(args.func, args, prog=f"skyrelay {args.command}")


if __name__ == "__main__":
    sys.exit(main())
