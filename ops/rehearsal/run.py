"""Run the rehearsal on one machine: a drill cluster, the camera, the operator's commands, and a record.

The cluster is the one ``skyrelay up --drill`` runs (three mosquittos, the three daemons, the link
simulator). What the rehearsal knows of the system it learns as an operator would: notices and events
from the brokers (it waits on them, with bounded timeouts), the archive's notice log, ``skyrelay verify``,
``quarantine``, ``drill`` through the real CLI, and the archive's files and catalog at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import structlog

from ops.cluster import Cluster
from ops.rehearsal.camera import StagedExposure, new_truth, release, stage_afternoon, stage_night
from ops.rehearsal.checks import expected_pairs
from ops.rehearsal.plan import Plan

log = structlog.get_logger()

TUNING: dict[str, float] = {
    "ack_timeout_s": 2.0,
    "backoff_initial_s": 0.2,
    "backoff_max_s": 2.0,
    "rescan_interval_s": 5.0,
    "breaker_hold_down_s": 3.0,
    "end_to_end_timeout_s": 60.0,
    "mqtt_keepalive_s": 2,
}
"""Timers of a time-compressed rehearsal (the tests' fast timers; late_after_s from the plan)."""
DRILL_LINK = "summit-base"
MASTER_KINDS = ("bias", "dark", "flat")


class RehearsalError(RuntimeError):
    """The rehearsal could not go on (a cluster that does not start, a command refused)."""


class Progress:
    """One line per step on stderr, with the seconds since the start."""

    def __init__(self, enabled: bool = True) -> None:
        self.start = time.time()
        self.enabled = enabled

    def say(self, text: str) -> None:
        """Print ``text`` with the elapsed time."""
        if self.enabled:
            print(f"[{time.time() - self.start:6.1f}s] {text}", file=sys.stderr, flush=True)


def _dayobs_of(name: str) -> str:
    """DAYOBS from a raw's name ``CC_O_20261128_000001_R22_S00.fits``."""
    parts = name.split("_")
    return parts[2] if len(parts) > 2 else ""


def _write_atomically(path: Path, text: str) -> None:
    """Write a correction file whole (temporary name, fsync, rename): the archive may read it at any moment,
    and a half-written one quarantines every file of its exposure arriving meanwhile."""
    temporary = path.with_name(path.name + ".part")
    with temporary.open("w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


class Recorder:
    """What the rehearsal hears: archive notices live, and every site's problems and events."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.arrivals: dict[str, dict[str, Any]] = {}
        self.products: dict[str, dict[str, Any]] = {}
        self.alerts: set[int] = set()
        self.reports: list[dict[str, Any]] = []
        self.ready: dict[str, asyncio.Event] = {}

    def _add(self, site: str, topic: str, message: Any) -> None:
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "arrival":
            self.arrivals.setdefault(str(message["name"]), message)
        elif kind == "product" or (topic.startswith("skyrelay/v1/products/") and "product_id" in message):
            self.products.setdefault(str(message["product_id"]), message)
        elif topic.startswith("skyrelay/v1/alerts/"):
            self.alerts.add(int(message.get("alert_id", 0)))
        elif "/problems/" in topic or "/events/" in topic:
            self.reports.append(
                {
                    "received": time.time(),
                    "site": message.get("site", site),
                    "stream": "problem" if "/problems/" in topic else "event",
                    "kind": message.get("kind"),
                    "text": message.get("reason") or message.get("message"),
                    "name": message.get("name"),
                    "details": message.get("details") or {},
                    "at": message.get("at", time.time()),
                }
            )
        self.changed.set()

    async def follow(self, site: str, url: str, login: tuple[str, str], filters: list[str]) -> None:
        """Subscribe to ``filters`` on a broker; reconnect when it goes (a SIGKILLed broker comes back)."""
        ready = self.ready.setdefault(site, asyncio.Event())
        parts = urlsplit(url)
        while True:
            try:
                async with aiomqtt.Client(
                    parts.hostname or "127.0.0.1",
                    parts.port or 1883,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    username=login[0],
                    password=login[1],
                    keepalive=5,
                ) as client:
                    for topic_filter in filters:
                        await client.subscribe(topic_filter, qos=1)
                    ready.set()
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        with contextlib.suppress(ValueError):
                            self._add(site, str(message.topic), json.loads(payload or b"null"))
            except aiomqtt.MqttError as exc:
                log.info("rehearsal_broker_lost", site=site, error=str(exc))
                await asyncio.sleep(0.5)  # another process's broker: nothing to wait on but time

    async def until(
        self, predicate: Callable[[], bool], timeout_s: float, tick: Callable[[], None] | None = None
    ) -> bool:
        """Wait until ``predicate()`` holds, woken by each message; False after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last_tick = loop.time()
        while True:
            self.changed.clear()
            if predicate():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 5.0)):
                    await self.changed.wait()
            if tick is not None and loop.time() - last_tick >= 5.0:
                last_tick = loop.time()
                tick()


async def cli(*args: str, timeout_s: float = 120.0) -> tuple[int, str, str]:
    """Run ``skyrelay ARGS`` as an operator would (a child process); (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops.cli",
        "--log-level",
        "warning",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, "", f"skyrelay {' '.join(args)}: no answer within {timeout_s}s"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


class Rehearsal:
    """One rehearsal in ``workdir``: the plan, the truth it writes, and what it observed."""

    def __init__(self, workdir: Path, plan: Plan, progress: Progress) -> None:
        self.workdir = workdir.resolve()
        self.plan = plan
        self.progress = progress
        self.truth = new_truth(plan)
        self.recorder = Recorder()
        self.timeline: list[dict[str, Any]] = []
        self.verify: dict[str, Any] = {}
        self.drill: dict[str, Any] = {}
        self.cluster_dir = self.workdir / "cluster"
        self.staging = self.workdir / "camera"
        self.corrections = self.workdir / "corrections"
        self.cluster: Cluster | None = None
        self.quarantine_log: list[dict[str, Any]] = []
        self._staged: dict[tuple[int, str], asyncio.Future[list[StagedExposure]]] = {}

    async def _stage_all(self) -> None:
        """The camera's frames of every phase, simulated in order in one thread, ahead of their release (while
        the archive works on the phase before)."""
        for day in self.plan.days:
            for phase, fn in (("afternoon", stage_afternoon), ("night", stage_night)):
                future = self._staged_future(day.number - 1, phase)
                try:
                    future.set_result(await asyncio.to_thread(fn, self.plan, day, self.staging, self.truth))
                except Exception as exc:  # handed to the phase that needs it
                    future.set_exception(exc)
                    return

    def _staged_future(self, index: int, phase: str) -> asyncio.Future[list[StagedExposure]]:
        key = (index, phase)
        if key not in self._staged:
            self._staged[key] = asyncio.get_running_loop().create_future()
        return self._staged[key]

    @property
    def _slowness(self) -> float:
        """How much longer than at small scale the archive may take (full 4k x 4k detectors: 64 x the pixels)."""
        return 1.0 if self.plan.scale == "small" else 40.0

    def mark(self, what: str, **details: Any) -> None:
        """A step of the rehearsal on its timeline (and the progress line)."""
        self.timeline.append({"at": time.time(), "what": what, **details})
        self.progress.say(what)

    # ---- the run ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Start the cluster, play every day, gather what the archive holds."""
        self.corrections.mkdir(parents=True, exist_ok=True)
        self.truth["started_at"] = time.time()
        cluster = Cluster(
            self.cluster_dir,
            drill=True,
            correction_dirs=[self.corrections],
            tuning={**TUNING, "late_after_s": self.plan.late_after_s},
            processing={"quiet_s": self.plan.quiet_s, "chunk_end_s": self.plan.chunk_end_s, "workers": 2},
        )
        self.mark("starting the cluster (three brokers, summit, base, archive, link simulator)")
        async with cluster:
            self.cluster = cluster
            self.mark("cluster ready")
            async with asyncio.TaskGroup() as tg:
                followers = [
                    tg.create_task(
                        self.recorder.follow(
                            "archive",
                            cluster.brokers["archive"].url,
                            cluster.login("operator"),
                            [
                                "skyrelay/v1/arrivals/#",
                                "skyrelay/v1/products/#",
                                "skyrelay/v1/alerts/#",
                                "skyrelay/v1/problems/#",
                                "skyrelay/v1/events/#",
                            ],
                        )
                    )
                ]
                for site in ("summit", "base"):
                    followers.append(
                        tg.create_task(
                            self.recorder.follow(
                                site,
                                cluster.brokers[site].url,
                                cluster.login("operator"),
                                ["skyrelay/v1/problems/#", "skyrelay/v1/events/#"],
                            )
                        )
                    )
                try:
                    async with asyncio.timeout(30):
                        for site in ("archive", "summit", "base"):
                            await self.recorder.ready.setdefault(site, asyncio.Event()).wait()
                    followers.append(tg.create_task(self._stage_all(), name="rehearsal.camera"))
                    for day in self.plan.days:
                        await self.afternoon(day.number - 1)
                        await self.night(day.number - 1)
                    await self.final_verification()
                    await self.gather()
                finally:
                    for task in followers:
                        task.cancel()
        self.truth["finished_at"] = time.time()

    async def _release_all(self, exposures: list[StagedExposure], cadence_s: float) -> None:
        assert self.cluster is not None
        for exposure in exposures:
            await asyncio.to_thread(release, exposure, self.cluster.inbox)
            await asyncio.sleep(cadence_s)  # the camera's cadence (time compressed), not a wait for a condition

    def _arrived(self, names: list[str]) -> Callable[[], bool]:
        return lambda: all(n in self.recorder.arrivals for n in names)

    def _products_of(self, dayobs: str, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
        out = []
        for product in self.recorder.products.values():
            if product.get("kind") not in kinds:
                continue
            inputs = product.get("inputs") or []
            if inputs and _dayobs_of(str(inputs[0].get("name", ""))) == dayobs:
                out.append(product)
        return out

    async def afternoon(self, index: int) -> None:
        """Release the day's calibration sequences; wait until every file and every master is there."""
        day = self.plan.days[index]
        exposures = await self._staged_future(index, "afternoon")
        names = [p.name for e in exposures for p in e.paths]
        sequences = [s for s in self.truth["sequences"] if s["dayobs"] == day.dayobs]
        self.mark(
            f"day {day.number} ({day.dayobs}) afternoon: {day.title}",
            day=day.number,
            phase="afternoon",
            exposures=len(exposures),
            files=len(names),
        )
        await self._release_all(exposures, self.plan.exposure_cadence_s)

        def tick() -> None:
            done = sum(n in self.recorder.arrivals for n in names)
            masters = len(self._products_of(day.dayobs, MASTER_KINDS))
            self.progress.say(f"  waiting: {done}/{len(names)} archived, {masters}/{len(sequences)} masters")

        def settled() -> bool:
            return self._arrived(names)() and len(self._products_of(day.dayobs, MASTER_KINDS)) >= len(sequences)

        ok = await self.recorder.until(settled, (120 + 2 * len(names)) * self._slowness, tick)
        tick()
        self.mark(f"day {day.number} afternoon {'done' if ok else 'NOT SETTLED (timed out)'}", day=day.number)

    async def night(self, index: int) -> None:
        """Release the night's visits (with the network drill on the drill night); wait for its products."""
        day = self.plan.days[index]
        night = day.night
        exposures = await self._staged_future(index, "night")
        names = [p.name for e in exposures for p in e.paths]
        self.mark(
            f"night {day.number} ({day.dayobs}): {night.fields} fields, {len(exposures)} visits",
            day=day.number,
            phase="night",
            files=len(names),
        )
        fixer = asyncio.create_task(self.fix_and_release(day.dayobs)) if night.correction is not None else None
        if night.drill:
            await self.drill_night(exposures)
        else:
            await self._release_all(exposures, self.plan.visit_cadence_s)
        expected_calexps = sum(1 for n in names if self.truth["files"][n]["kind"] == "object")

        def expected_diffs() -> int:
            pairs = expected_pairs(self.truth, list(self.recorder.products.values()), self.recorder.reports)
            return sum(len(p) for (group, _), p in pairs.items() if group.startswith(day.dayobs + "_"))

        def counts() -> tuple[int, int, int]:
            return (
                sum(n in self.recorder.arrivals for n in names),
                len(self._science(day.dayobs, "calexp")),
                len(self._science(day.dayobs, "diff")),
            )

        def tick() -> None:
            arrived, calexps, diffs = counts()
            self.progress.say(
                f"  waiting: {arrived}/{len(names)} archived, {calexps}/{expected_calexps} calexps, "
                f"{diffs}/{expected_diffs()} diffs, {len(self.recorder.alerts)} alerts so far"
            )

        def settled() -> bool:
            want = (len(names), expected_calexps, expected_diffs())
            return all(a >= b for a, b in zip(counts(), want, strict=True))

        ok = await self.recorder.until(settled, (240 + 3 * len(names)) * self._slowness + self.plan.chunk_end_s, tick)
        tick()
        if fixer is not None:
            await fixer
        self.mark(f"night {day.number} {'done' if ok else 'NOT SETTLED (timed out)'}", day=day.number)

    def _science(self, dayobs: str, kind: str) -> list[dict[str, Any]]:
        out = []
        for product in self.recorder.products.values():
            visits = product.get("visits") or []
            if product.get("kind") == kind and visits and _dayobs_of(str(visits[0])) == dayobs:
                out.append(product)
        return out

    async def fix_and_release(self, dayobs: str) -> None:
        """The night's header beyond repair: wait for its quarantine, add the correction file, release it."""
        for correction in [c for c in self.truth["corrections"] if c["dayobs"] == dayobs]:
            name = correction["name"]

            def quarantined(name: str = name) -> bool:
                return any(r["kind"] == "quarantined" and r.get("name") == name for r in self.recorder.reports)

            if not await self.recorder.until(quarantined, 120):
                self.mark(f"{name} was never reported quarantined")
                continue
            self.mark(f"{name} quarantined (header beyond repair): writing a correction file", name=name)
            path = self.corrections / f"LSSTComCam-{correction['obsid']}.yaml"
            await asyncio.to_thread(_write_atomically, path, "IMGTYPE: OBJECT\n")
            code, out, err = await cli("quarantine", "list", "--json", "--workdir", str(self.cluster_dir))
            rows = json.loads(out) if code == 0 else []
            entry = next((r for r in rows if r["name"] == name), None)
            self.quarantine_log.append({"name": name, "listed": entry, "at": time.time()})
            if entry is None:
                self.mark(f"{name}: not in `skyrelay quarantine list` ({err.strip()})")
                continue
            code, out, err = await cli("quarantine", "release", str(entry["id"]), "--workdir", str(self.cluster_dir))
            self.quarantine_log.append({"name": name, "release_exit": code, "output": (out + err).strip()})
            self.mark(f"skyrelay quarantine release {entry['id']}: exit {code}: {(out or err).strip()}", name=name)

    async def drill_night(self, exposures: list[StagedExposure]) -> None:
        """Release the visits with the network drill in the middle: cut, broker SIGKILL, restore, failback."""
        assert self.cluster is not None
        cluster = self.cluster
        n = len(exposures)
        cut_at, kill_at, restore_at = n // 4, n // 2, (2 * n) // 3
        workdir = str(self.cluster_dir)
        for i, exposure in enumerate(exposures):
            if i == cut_at:
                code, out, err = await cli("drill", "--workdir", workdir, "cut", DRILL_LINK)
                self.drill["cut_at"] = time.time()
                self.mark(
                    f"network change: link {DRILL_LINK} cut (primary route down): {(out or err).strip()}",
                    drill="cut",
                    exit=code,
                )
            if i == kill_at:
                await cluster.brokers["base"].kill()
                self.drill["broker_killed_at"] = time.time()
                self.mark("base broker SIGKILLed", drill="broker_kill")
            if i == restore_at:
                await cluster.restart_broker("base")
                self.drill["broker_restarted_at"] = time.time()
                self.mark("base broker restarted", drill="broker_restart")
                code, out, err = await cli("drill", "--workdir", workdir, "restore", DRILL_LINK)
                self.drill["restored_at"] = time.time()
                self.mark(f"link {DRILL_LINK} restored: {(out or err).strip()}", drill="restore", exit=code)
                restored = self.drill["restored_at"]

                def back_on_primary(restored: float = restored) -> bool:
                    return any(
                        r["kind"] == "route_changed" and r["details"].get("route") == "primary" and r["at"] >= restored
                        for r in self.recorder.reports
                    )

                if await self.recorder.until(back_on_primary, 90):
                    self.mark("summit: new files take primary again", drill="route_back")
                else:
                    self.mark("summit did not announce primary back within 90 s", drill="route_back_missing")
            await asyncio.to_thread(release, exposure, cluster.inbox)
            await asyncio.sleep(self.plan.visit_cadence_s)  # the camera's cadence

    async def final_verification(self) -> None:
        """``skyrelay verify`` for every day, as the noon check does."""
        for day in self.plan.days:
            code, out, err = await cli("verify", "--dayobs", day.dayobs, "--json", "--workdir", str(self.cluster_dir))
            try:
                report = json.loads(out)
            except ValueError:
                report = {"error": (err or out).strip()[:2000]}
            self.verify[day.dayobs] = {"exit": code, "report": report}
            self.mark(f"skyrelay verify --dayobs {day.dayobs}: exit {code}", day=day.number, phase="verify")

    # ---- what the archive holds ------------------------------------------------------------

    async def gather(self) -> None:
        """The archive's notice log, catalog and quarantine, read at the end (before the cluster stops)."""
        assert self.cluster is not None
        cluster = self.cluster
        headers = cluster.basic_auth("subscriber")

        def page(after: int) -> dict[str, Any]:
            request = urllib.request.Request(
                f"{cluster.http_url('archive')}/v1/notices?after={after}&limit=5000", headers=headers
            )
            with urllib.request.urlopen(request, timeout=60) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data

        notices: list[dict[str, Any]] = []
        after = 0
        while True:
            got = await asyncio.to_thread(page, after)
            notices += got["notices"]
            after = int(got.get("next_after", after))
            if got["caught_up"] or not got["notices"]:
                break
        code, out, _ = await cli("quarantine", "list", "--json", "--workdir", str(self.cluster_dir))
        self.observed_quarantine = json.loads(out) if code == 0 else None
        self.notices = notices
        self.mark(f"gathered {len(notices)} notices from the archive's log")
        self.daemons = {
            site: {"restarts": d.restarts, "alive": d.proc is not None and d.proc.returncode is None}
            for site, d in cluster.daemons.items()
        }

    def catalog(self) -> list[dict[str, Any]]:
        """Every row of the archive's catalog (read-only; the daemon may be stopped)."""
        path = self.cluster_dir / "archive" / "state" / "journal.sqlite"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT name, size, checksum, archived_checksum, archive_path, status, reason, obsid, detector, "
                "dayobs, seqnum, imgtype, fixes, closed_at, arrived_at, route, released_at FROM catalog"
            ).fetchall()
        return [dict(r) for r in rows]

    def observed(self) -> dict[str, Any]:
        """Everything the checks and the report need, JSON-ready."""
        alerts = []
        cutouts = {}
        for n in self.notices:
            message = n["message"]
            if n["topic"].startswith("skyrelay/v1/alerts/"):
                alert = dict(message)
                packet = dict(alert.get("alert") or {})
                cutouts[str(alert.get("alert_id"))] = {
                    k: packet.pop(k, None) for k in ("cutoutScience", "cutoutTemplate", "cutoutDifference")
                }
                alert["alert"] = packet
                alerts.append(alert)
        others = [n for n in self.notices if not n["topic"].startswith("skyrelay/v1/alerts/")]
        return {
            "notices": others,
            "alerts": alerts,
            "cutouts": cutouts,
            "catalog": self.catalog(),
            "verify": self.verify,
            "quarantine_now": getattr(self, "observed_quarantine", None),
            "quarantine_log": self.quarantine_log,
            "reports": self.recorder.reports,
            "timeline": self.timeline,
            "drill": self.drill,
            "daemons": getattr(self, "daemons", {}),
            "archive_root": str(self.cluster_dir / "archive" / "root"),
        }
