"""The ``skyrelay`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import structlog

from ops import logs
from ops.target import Target, add_target_arguments, resolve

log = structlog.get_logger()


def _http_get(target: Target, url: str) -> Any:
    try:
        with target.urlopen(url, timeout_s=10) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError) as exc:
        raise SystemExit(f"skyrelay: cannot reach {url}: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    """Run one site's daemon."""
    from daemon.config import load_topology
    from daemon.errors import JournalError, TopologyError
    from daemon.site import run
    from daemon.trust import SigningKeyError

    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.site not in topology.sites:
        print(f"skyrelay: unknown site {args.site!r}; the topology has {', '.join(topology.sites)}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(topology, args.site))
    except (JournalError, SigningKeyError) as exc:
        print(f"skyrelay: {args.site} cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


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
        print(f"skyrelay secure: {exc}", file=sys.stderr)
        return 2
    print(f"skyrelay secure: wrote {target} and each site's files under {args.out}/<site>/ (install them under "
          f"{args.install_root}/<site>/ on that site's host; see systemd/README.md)")  # fmt: skip
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Run the whole system on this machine until SIGINT/SIGTERM."""
    from ops.cluster import DEFAULT_ROUTES, Cluster

    workdir = Path(args.workdir).resolve()
    routes = {name: DEFAULT_ROUTES[name] for name in args.routes.split(",")} if args.routes else None
    corrections = [Path(p).resolve() for p in args.corrections]
    http_tls = None
    if args.https:
        from ops.pki import PkiError, make_pki

        try:
            http_tls = make_pki(workdir / "pki", "skyrelay up")
        except PkiError as exc:
            raise SystemExit(f"skyrelay up: {exc}") from None

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
            print(f"skyrelay up: cluster ready, see {workdir / 'cluster.json'}", flush=True)
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
            print("skyrelay up: stopping", flush=True)

    asyncio.run(main())
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schemas of every message."""
    from protocol import all_schemas

    schemas = all_schemas()
    if args.type:
        if args.type not in schemas:
            print(f"skyrelay: unknown message type {args.type!r}; known: {', '.join(schemas)}", file=sys.stderr)
            return 2
        print(json.dumps(schemas[args.type], indent=2))
    else:
        print(json.dumps(schemas, indent=2))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show each site's status."""
    target = resolve(args)
    result = {name: _http_get(target, url + "/v1/status") for name, url in target.http.items()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for name, st in result.items():
        links = ", ".join(f"{p}:{'up' if v['connected'] else 'DOWN'}" for p, v in st["links"].items())
        print(
            f"{name:8} {st['role']:8} pid {st['pid']:<7} pending {st['pending']:<5} files {st['files']} "
            f"links [{links}] problems {st['problems']}"
        )
        if "catalog" in st:
            print(f"{'':8} catalog {st['catalog']}")
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    """Show what each site still has to deliver."""
    target = resolve(args)
    for name, url in target.http.items():
        st = _http_get(target, url + "/v1/queue")
        print(f"{name}: {len(st)} pending")
        for item in st[: args.limit]:
            print(
                f"  {item['kind']:7} {item['file']:40} -> {item['peer']:8} route {item['route']} "
                f"attempt {item['attempt']} failures {item['failures']} age {item['age_s']}s {item['last_error']}"
            )
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    """Show the summit's routes, or change their policy on a running cluster."""
    target = resolve(args)
    if args.action != "show":
        if args.action != "auto" and not args.route:
            print(f"skyrelay: routes {args.action} needs a route name", file=sys.stderr)
            return 2
        asyncio.run(_send_route_control(target, args.action, args.route))
    status = _http_get(target, target.http[target.summit] + "/v1/status")
    routes = status.get("routes", [])
    if args.json:
        print(json.dumps(routes, indent=2))
        return 0
    print(f"{'route':10} {'sites':28} {'policy':8} {'health':8} {'queued':>6}  evidence")
    for route in routes:
        ev = route["evidence"]
        health = "healthy" if route["healthy"] else "DOWN"
        marker = "*" if ev.get("in_use") else " "
        print(
            f"{marker}{route['name']:9} {' -> '.join(route['sites']):28} {route['policy']:8} {health:8} "
            f"{ev.get('queued', 0):>6}  next={ev['next_hop']} connected={ev['connected']} "
            f"breaker={ev['breaker']} failures={ev['consecutive_failures']} degraded_for={ev['degraded_for_s']}s"
            + (f" last='{ev['last_failure']}'" if ev.get("last_failure") else "")
        )
    return 0


async def _send_route_control(target: Target, command: str, route: str | None) -> None:
    import time
    import uuid

    from protocol import topics
    from protocol.control import RouteControl

    message = RouteControl(
        control_id=f"ctl-{uuid.uuid4().hex}",
        command=command,  # type: ignore[arg-type]
        route=route,
        issued_by=target.operator,
        at=time.time(),
    )
    sealed = target.sign_control(message.to_json())
    async with target.mqtt_client(target.summit) as client:
        await client.publish(topics.site(target.summit, "control"), sealed, qos=1)


def _archive(args: argparse.Namespace) -> tuple[Target, str]:
    target = resolve(args)
    return target, target.http[target.archive]


def cmd_verify(args: argparse.Namespace) -> int:
    """Completeness of one observing day, and what the summit still has in flight.

    Exit 0 when nothing is missing, 1 when the archive misses something, 3 when any file registered at
    the summit has been on its way longer than the topology's ``end_to_end_timeout_s`` (3 wins over 1).
    """
    from daemon.config import Tuning

    exit_missing, exit_overdue = 1, 3
    target, http = _archive(args)
    report = _http_get(target, f"{http}/v1/verify?dayobs={args.dayobs}")
    timeout_s = (target.topology.tuning if target.topology is not None else Tuning()).end_to_end_timeout_s
    summit = target.http[target.summit]
    in_flight: dict[str, Any] | None
    try:
        status = _http_get(target, summit + "/v1/status")
        in_flight = status.get("in_flight")
        if not isinstance(in_flight, dict):
            # A summit without the in_flight block: held files from its counts, overdue ones from the
            # ages in its queue (since queued, which a restart resets) and custody stuck beyond the held.
            queue = _http_get(target, summit + "/v1/queue")
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
    except SystemExit as exc:  # the summit is unreachable: say so, and judge the archive alone
        print(f"skyrelay verify: in-flight files unknown: {exc}", file=sys.stderr)
        in_flight = None
    report["in_flight"] = in_flight
    overdue = bool(in_flight and in_flight.get("overdue"))
    code = exit_overdue if overdue else 0 if report["ok"] else exit_missing
    if args.json:
        print(json.dumps(report, indent=2))
        return code
    print(
        f"dayobs {report['dayobs']}: {report['complete']} complete, {report['incomplete']} incomplete exposures"
        + (f", {report['arriving']} still arriving" if report.get("arriving") else "")
    )
    print(f"{'instrument':10} {'obsid':24} {'seq':>5} {'state':9} {'arrived':>9}  missing")
    for exp in report["exposures"]:
        missing = ", ".join(exp["missing"][:12]) + (" ..." if len(exp["missing"]) > 12 else "")
        if missing and exp["state"] == "pending":
            missing = f"awaiting {missing}"
        print(
            f"{exp['instrument']:10} {exp['obsid']:24} {exp['seqnum'] or '':>5} {exp['state']:9} "
            f"{exp['arrived']:>4}/{exp['expected']:<4}  {missing}"
        )
    for instrument, gap in report["gaps"].items():
        print(f"sequence gap {instrument}: missing SEQNUM {', '.join(map(str, gap))}")
    for q in report["quarantined"]:
        print(f"quarantined #{q['id']}: {q['name']} -> {q['archive_path']} ({q['reason']})")
    if in_flight is not None and in_flight.get("files"):
        oldest = in_flight.get("oldest_age_s")
        print(
            f"in flight: {in_flight['files']} file(s) registered at the summit, not yet archived"
            + (f" ({in_flight['held']} held for want of a usable route)" if in_flight.get("held") else "")
            + (f", the oldest {oldest:.0f}s ago" if oldest is not None else "")
        )
    if overdue:
        assert in_flight is not None
        examples = ", ".join(in_flight.get("overdue_examples") or [])
        print(
            f"OVERDUE: {in_flight['overdue']} file(s) on their way longer than {timeout_s:.0f}s"
            + (f": {examples}" if examples else "")
        )
    elif report["ok"]:
        print("OK: nothing missing")
    if not report["ok"]:
        print("MISSING: see above")
    return code


def cmd_quarantine(args: argparse.Namespace) -> int:
    """List quarantined files, or release one for re-ingest."""
    target, http = _archive(args)
    if args.action == "list":
        rows = _http_get(target, f"{http}/v1/quarantine")
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for q in rows:
            print(f"#{q['id']:<5} {q['name']:44} {q['archive_path']}\n       reason: {q['reason']}")
        print(f"{len(rows)} file(s) in quarantine")
        return 0
    if args.id is None:
        print("skyrelay: quarantine release needs an id (see `skyrelay quarantine list`)", file=sys.stderr)
        return 2
    request = urllib.request.Request(f"{http}/v1/quarantine/{args.id}/release", method="POST")
    try:
        with target.urlopen(request, timeout_s=120) as resp:
            result = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        print(f"skyrelay: release of #{args.id} refused ({exc.code}): {body}", file=sys.stderr)
        return 1
    print(f"released #{args.id} -> {result['archive_path']} ({len(result.get('fixes', []))} fix(es))")
    return 0


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
        print(f"skyrelay: unknown site {site!r}; sites: {', '.join(target.brokers)}", file=sys.stderr)
        return 2
    if args.since is not None:
        if site != target.archive:
            print(f"skyrelay: --since replays the archive's notice log; {site!r} has none", file=sys.stderr)
            return 2
        if args.since < 0 or not 1 <= args.page_size <= 10_000:
            print("skyrelay: --since must be 0 or more, --page-size 1..10000", file=sys.stderr)
            return 2
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
                body = exc.read().decode(errors="replace")[:300]
                raise SystemExit(f"skyrelay: {url} refused ({exc.code}): {body}") from None
            except (urllib.error.URLError, OSError) as exc:
                if not self._reached_log:
                    raise SystemExit(f"skyrelay: cannot reach {url}: {exc}") from None
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
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--json-logs", action="store_true", default=None, help="JSON log lines (default off a TTY)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one site's daemon (what systemd starts)")
    p.add_argument("--topology", required=True)
    p.add_argument("--site", required=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("secure", help="create broker accounts, ACLs and signing keys for a topology")
    p.add_argument("--topology", required=True, help="the topology file (one from before accounts and keys is fine)")
    p.add_argument("--out", required=True, help="folder for the new topology, keys and broker files")
    p.add_argument("--install-root", default="/etc/skyrelay", help="where each host keeps its site's files")
    p.set_defaults(func=cmd_secure)

    p = sub.add_parser("up", help="run summit, base and archive with their brokers on this machine")
    p.add_argument("--workdir", default="skyrelay-demo")
    p.add_argument("--camera", metavar="INSTRUMENT", help="also run the camera simulator (ComCam, LATISS, LSSTCam)")
    p.add_argument("--exposures", type=int, default=None, help="camera: stop after N exposures")
    p.add_argument("--cadence", type=float, default=15.0, help="camera: seconds between exposures")
    p.add_argument("--size-mb", type=float, default=4.0, help="camera: size of each file")
    p.add_argument("--routes", help="comma-separated subset of primary,direct")
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

    p = sub.add_parser("schema", help="print the JSON Schemas of the messages")
    p.add_argument("type", nargs="?")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("status", help="status of a running cluster")
    add_target_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("queue", help="pending deliveries of a running cluster")
    add_target_arguments(p)
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("routes", help="show or change the summit's routes on a running cluster")
    p.add_argument("action", nargs="?", default="show", choices=["show", "force", "disable", "enable", "auto"])
    p.add_argument("route", nargs="?")
    add_target_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_routes)

    p = sub.add_parser(
        "verify",
        help="completeness of an observing day, and files still in flight from the summit "
        "(exit 1 when anything is missing, 3 when a file is overdue: on its way longer than end_to_end_timeout_s)",
        description="Completeness of an observing day at the archive, and the files registered at the summit that "
        "are not yet archived (in flight). Exit status: 0 nothing missing; 1 the archive misses files; 3 a file "
        "has been on its way longer than the topology's end_to_end_timeout_s (overdue; takes precedence over 1). "
        "In-flight files that are not overdue do not fail verify.",
    )
    p.add_argument("--dayobs", required=True)
    add_target_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("quarantine", help="list quarantined files or release one after fixing its cause")
    p.add_argument("action", choices=["list", "release"])
    p.add_argument("id", nargs="?", type=int)
    add_target_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quarantine)

    p = sub.add_parser("subscribe", help="print notices from a site's broker as JSON lines")
    add_target_arguments(p)
    p.add_argument("--site", default=None, help="whose broker (default: the archive)")
    p.add_argument("--topic", default="skyrelay/v1/arrivals/#")
    p.add_argument("--count", type=int, default=0, help="exit after N messages")
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

    p = sub.add_parser("drill", help="network failure drills on a cluster started with `up --drill`")
    add_drill_arguments(p)
    p.set_defaults(func=drill_main)

    from ops.bench import add_bench_arguments, bench_main

    p = sub.add_parser("bench", help="benchmark a fresh local cluster beside rsync --fsync and dd")
    add_bench_arguments(p)
    p.set_defaults(func=bench_main)

    simulate = sub.add_parser("simulate", help="simulators").add_subparsers(dest="what", required=True)
    from ops.camera import add_camera_arguments, camera_main

    p = simulate.add_parser("camera", help="write FITS exposures into the summit inbox like a camera")
    add_camera_arguments(p)
    p.set_defaults(func=camera_main)

    from ops.products_cli import add_products_commands, add_simulate_calibs

    add_simulate_calibs(simulate)
    add_products_commands(sub)

    from ops.alerts_cli import add_alerts_commands
    from ops.products_cli import add_simulate_night

    add_simulate_night(simulate)
    add_alerts_commands(sub)

    from ops.rehearsal import add_rehearse_commands

    add_rehearse_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``skyrelay`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, json_logs=args.json_logs)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
