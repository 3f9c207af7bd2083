"""A mosquitto broker run as a child process on a chosen or free port (tests, ``skyrelay up``)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import random
import shutil
import signal
import socket
from pathlib import Path
from typing import BinaryIO

import structlog

from ops.accounts import BrokerAuth
from protocol.signing import MAX_ENVELOPE_BYTES

log = structlog.get_logger()


# The largest signed envelope plus room for the topic and properties.
MAX_PACKET_BYTES = MAX_ENVELOPE_BYTES + 4096


class BrokerError(RuntimeError):
    """mosquitto is missing or did not start."""


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (Linux; the IANA range elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


class _PortAllocator:
    """Hands out listening ports that stay free between being picked and being bound.

    A port the kernel picks with ``bind(0)`` comes from the ephemeral range, the same range every
    outgoing TCP connection (an MQTT client, an HTTP pull) takes its source port from: between being
    picked and being bound by a broker or a daemon, a busy machine can hand it to a connection, and
    the bind fails with EADDRINUSE. Ports below the ephemeral range are never used as source ports, so
    we pick there, starting at a random point (two processes rarely start on the same port), never
    hand out the same port twice in one process, and check that each is bindable right now.
    """

    def __init__(self) -> None:
        low, _high = _ephemeral_range()
        self._low, self._high = 10000, low - 1
        self._issued: set[int] = set()
        self._next = random.randint(self._low, self._high) if self._high - self._low > 1000 else 0

    def take(self, host: str) -> int:
        if not self._next:
            return self._kernel_pick(host)
        span = self._high - self._low + 1
        for _ in range(span):
            port = self._next
            self._next = self._low + (self._next - self._low + 1) % span
            if port not in self._issued and self._bindable(host, port):
                self._issued.add(port)
                return port
        return self._kernel_pick(host)

    @staticmethod
    def _bindable(host: str, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the real listeners bind
            try:
                sock.bind((host, port))
            except OSError:
                return False
            return True

    @staticmethod
    def _kernel_pick(host: str) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])


_ports = _PortAllocator()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now and that no outgoing connection can take before it is bound."""
    return _ports.take(host)


def mosquitto_binary() -> str:
    """Path of the mosquitto binary, or a clear error telling how to install it."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )
    if found is None:
        raise BrokerError("mosquitto not found: install it (apt-get install -y mosquitto)")
    return found


class ChildProcess:
    """A child process we start, signal and stop: the base of brokers and daemons."""

    proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self.proc.pid if self.proc and self.proc.returncode is None else None

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL by default: nothing unsaved survives) and wait for the end.

        The signal goes to the child's whole process group (it leads its own session), as systemd's
        control-group kill does: a SIGKILLed archive's process-pool workers and forkserver go with it
        instead of living on as orphans.
        """
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                self.proc.send_signal(sig)
            await self.proc.wait()

    async def terminate(self, timeout_s: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            async with asyncio.timeout(timeout_s):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class Mosquitto(ChildProcess):
    """One broker with its own config, persistence directory and log file."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        name: str = "broker",
        tls: tuple[Path, Path, Path] | None = None,
        auth: BrokerAuth | None = None,
        max_packet_bytes: int = MAX_PACKET_BYTES,
    ):
        """Args:
        tls: (CA file, certificate file, key file) makes the listener TLS-only.
        auth: a password file and an ACL file (``ops.accounts.write_broker_auth``): every client must log
            in and may do only what its ACL says. Without it the broker is anonymous and open (old tests).
        max_packet_bytes: with ``auth``, larger MQTT packets are refused by the broker itself.
        """
        self.workdir = workdir
        self.tls = tls
        self.auth = auth
        self.max_packet_bytes = max_packet_bytes
        self.host = host
        self.port = port or free_port(host)
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """``mqtt://host:port`` (``mqtts://`` with TLS)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n" + self._auth_config() + "persistence true\n"
            f"persistence_location {data}/\n"
            "autosave_interval 60\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
            f"user {getpass.getuser()}\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n"
            "set_tcp_nodelay true\n"
            + (f"cafile {self.tls[0]}\ncertfile {self.tls[1]}\nkeyfile {self.tls[2]}\n" if self.tls else "")
        )
        return conf

    def _auth_config(self) -> str:
        if self.auth is None:
            return "allow_anonymous true\n"
        return (
            "allow_anonymous false\n"
            f"password_file {self.auth.password_file}\n"
            f"acl_file {self.auth.acl_file}\n"
            f"max_packet_size {self.max_packet_bytes}\n"
        )

    def reload(self) -> None:
        """Make the running broker re-read its password and ACL files (SIGHUP), e.g. after a new account."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGHUP)

    async def start(self, timeout_s: float = 10.0) -> None:
        """Start mosquitto and wait for its "running" log line."""
        conf = self._write_config()
        self.proc = await asyncio.create_subprocess_exec(
            mosquitto_binary(),
            "-c",
            str(conf),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        logfile = (self.workdir / "mosquitto.log").open("ab")
        lines: list[bytes] = []
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise BrokerError(f"mosquitto exited: {b''.join(lines).decode(errors='replace')[-800:]}")
                    lines.append(line)
                    logfile.write(line)
                    if b" running" in line:
                        break
        except TimeoutError as exc:
            self.proc.kill()
            raise BrokerError(f"mosquitto did not start on port {self.port} within {timeout_s}s") from exc
        self._drain = asyncio.get_running_loop().create_task(self._copy_log(logfile), name=f"{self.name}.log")
        log.info("broker_started", name=self.name, url=self.url, pid=self.proc.pid)

    async def _copy_log(self, logfile: BinaryIO) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                logfile.write(line)
                logfile.flush()
        finally:
            logfile.close()

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL by default: the broker loses what it had not saved)."""
        await super().kill(sig)
        await self._finish_drain()

    async def stop(self) -> None:
        """Terminate cleanly (SIGTERM: the broker saves its persistence file), killing after 5 s."""
        await self.terminate(5.0)
        await self._finish_drain()

    async def _finish_drain(self) -> None:
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
            self._drain = None
