"""A hostile summit inbox: FIFOs, symlinks, sockets and symlinked directories are refused, reported once,
left in place, and never block the registrar or ship another file's bytes.

The first tests take :mod:`daemon.summit.intake` and the watcher's rescan on their own, on real
entries in ``tmp_path``; the last ones put the same entries into a real cluster's inbox.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import pytest
from conftest import (
    MakeCluster,
    Subscribe,
    blake3_of,
    query_journal,
    read_catalog,
    site_status,
    wait_settled,
    write_files,
)

from daemon.fsutil import hash_file
from daemon.summit.intake import NotRegularFile, hash_descriptor, open_regular, signature
from daemon.summit.watcher import scan

pytestmark = pytest.mark.timeout(120)

SUMMIT_PROBLEMS = "skyrelay/v1/problems/summit"
SECRET = b"SIMPLE  =                    T / not the camera's file, must never leave the summit"


def _refusal(inbox: Path, relative: str) -> str:
    """What ``open_regular`` says of an entry it refuses (run in a thread by the callers that may block)."""
    with pytest.raises(NotRegularFile) as refused, open_regular(inbox, relative):
        pass
    return refused.value.what


async def test_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    """A FIFO with no writer is refused at once (before: opening it for reading blocked until a writer came)."""
    os.mkfifo(tmp_path / "pipe.fits")
    async with asyncio.timeout(5):
        what = await asyncio.to_thread(_refusal, tmp_path, "pipe.fits")
    assert what == "FIFO (named pipe)"


def test_symlinks_to_files_outside_and_inside_the_inbox_are_refused(tmp_path: Path) -> None:
    """A symlink is never followed, whether it points out of the inbox, into it, or nowhere."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    outside = tmp_path / "secret.fits"
    outside.write_bytes(SECRET)
    (inbox / "real.fits").write_bytes(b"real")
    (inbox / "out.fits").symlink_to(outside)
    (inbox / "in.fits").symlink_to(inbox / "real.fits")
    (inbox / "dangling.fits").symlink_to(tmp_path / "nothing-here")
    assert _refusal(inbox, "out.fits") == f"symlink -> {outside}"
    assert _refusal(inbox, "in.fits") == f"symlink -> {inbox / 'real.fits'}"
    assert _refusal(inbox, "dangling.fits") == f"symlink -> {tmp_path / 'nothing-here'}"


def test_a_file_reached_through_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    """``inbox/linked/x.fits`` where ``linked`` is a symlink to a directory outside: refused, naming the link."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.fits").write_bytes(SECRET)
    (inbox / "linked").symlink_to(elsewhere)
    assert _refusal(inbox, "linked/x.fits") == f"symlink -> {elsewhere} on the way (linked)"


def test_a_socket_is_refused(tmp_path: Path) -> None:
    """A Unix socket in the inbox is refused as a socket."""
    short = Path(os.environ.get("TMPDIR", "/tmp")) / f"sk{os.getpid()}-{threading.get_ident() % 10000}"
    short.mkdir()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(short / "s.fits"))
            assert _refusal(short, "s.fits") == "socket"
    finally:
        (short / "s.fits").unlink(missing_ok=True)
        short.rmdir()


def test_a_regular_file_is_hashed_through_its_descriptor(tmp_path: Path) -> None:
    """The checksum and size come from the descriptor: renaming another file over the name after the open
    changes nothing in what is hashed."""
    first, second = b"first content " * 1000, b"second, swapped in " * 500
    (tmp_path / "a.fits").write_bytes(first)
    (tmp_path / "b.fits").write_bytes(second)
    with open_regular(tmp_path, "a.fits") as fd:
        os.replace(tmp_path / "b.fits", tmp_path / "a.fits")  # the swap, after the check
        taken = hash_descriptor(fd)
    (tmp_path / "first.fits").write_bytes(first)
    assert (taken.checksum, taken.size) == (blake3_of(tmp_path / "first.fits"), len(first))
    (tmp_path / "empty.fits").write_bytes(b"")
    with open_regular(tmp_path, "empty.fits") as fd:
        assert hash_descriptor(fd).size == 0


def test_a_large_file_is_hashed_whole_without_its_pages_counting_in_the_daemon_rss(tmp_path: Path) -> None:
    """A file several read buffers long hashes to its blake3; hashing a 96 MiB file (the summit's hash of an
    inbox file, then the archive's of a path) raises a fresh process's peak RSS by about one buffer, not the
    file (mapped whole, its pages all counted in the RSS)."""
    big = tmp_path / "big.fits"
    big.write_bytes(os.urandom(96 << 20) + b"odd tail")
    with open_regular(tmp_path, "big.fits") as fd:
        taken = hash_descriptor(fd)
    assert (taken.checksum, taken.size) == (blake3_of(big), (96 << 20) + 8) == hash_file(big)
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from daemon.fsutil import hash_file\n"
        "from daemon.summit.intake import hash_descriptor, open_regular\n"
        "def peak():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1]) * 1024\n"
        "before = peak()\n"
        "with open_regular(Path(sys.argv[1]), 'big.fits') as fd:\n"
        "    hash_descriptor(fd)\n"
        "hash_file(Path(sys.argv[1]) / 'big.fits')  # (the archive's hash, of fixed raws and products)\n"
        "print(peak() - before)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True, timeout=120
    )
    assert int(result.stdout) < 16 << 20, f"peak RSS grew by {int(result.stdout) >> 20} MiB"


def test_rescan_lists_hostile_entries_until_refused_and_never_descends_a_symlinked_directory(tmp_path: Path) -> None:
    """The rescan passes a FIFO, a symlink and a symlinked directory on (not what is behind the directory);
    once refused with the same identity they are not listed again."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.fits").write_bytes(SECRET)
    os.mkfifo(inbox / "pipe.fits")
    (inbox / "out.fits").symlink_to(elsewhere / "x.fits")
    (inbox / "linked").symlink_to(elsewhere)
    (inbox / "real.fits").write_bytes(b"real")
    found = {p.relative_to(inbox).as_posix() for p in scan(inbox, {})}
    assert found == {"pipe.fits", "out.fits", "linked", "real.fits"}
    refused = {name: signature(os.lstat(inbox / name)) for name in ("pipe.fits", "out.fits", "linked")}
    assert {p.name for p in scan(inbox, {}, refused)} == {"real.fits"}


# ---- a real summit ----------------------------------------------------------------------------


def _refused(problems: list[dict[str, object]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for problem in problems:
        if problem["kind"] == "not_a_regular_file":
            name = str(problem["name"])
            counts[name] = counts.get(name, 0) + 1
    return counts


async def test_fifos_in_the_inbox_are_reported_and_block_nothing(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """Two FIFOs (as many as registrars) are each reported once; a file dropped afterwards is archived, and
    the summit still stops cleanly on SIGTERM. Before: both registrar threads blocked opening the FIFOs,
    nothing moved, and SIGTERM left the daemon waiting on them."""
    cluster = await make_cluster(tuning={"rescan_interval_s": 1.0})
    problems = await subscribe(cluster, "summit", SUMMIT_PROBLEMS)
    arrivals = await subscribe(cluster, "archive", "skyrelay/v1/arrivals/#")
    os.mkfifo(cluster.inbox / "CC_O_20250601_000001_R22_S00.fits")
    os.mkfifo(cluster.inbox / "CC_O_20250601_000001_R22_S01.fits")
    await problems.wait_for(lambda _: len(_refused(problems.of_type("problem"))) == 2, timeout_s=15)

    paths = await write_files(cluster, seqnum=2, detectors=["R22_S11"])
    await wait_settled(cluster, archived=1, wake=arrivals, timeout_s=30)
    assert [r["name"] for r in read_catalog(cluster)] == [p.name for p in paths]
    # Several rescans (1 s apart) have passed over the FIFOs meanwhile; none reported them again.
    assert not await problems.next_message(2.5)
    assert _refused(problems.of_type("problem")) == {
        "CC_O_20250601_000001_R22_S00.fits": 1,
        "CC_O_20250601_000001_R22_S01.fits": 1,
    }
    names = list(_refused(problems.of_type("problem")))
    assert all(await asyncio.to_thread(lambda: [(cluster.inbox / n).is_fifo() for n in names])), "left in place"

    summit = cluster.daemons["summit"]
    assert summit.proc is not None
    summit.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(15):
        code = await summit.proc.wait()
    assert code == 0


async def test_symlinks_in_the_inbox_are_reported_and_their_targets_never_shipped(
    make_cluster: MakeCluster, subscribe: Subscribe, tmp_path: Path
) -> None:
    """A symlink to a file outside the inbox, and a symlinked directory, are reported once each; the bytes
    behind them appear neither in the summit's journal nor in the archive; a real file still goes through."""
    cluster = await make_cluster(tuning={"rescan_interval_s": 1.0})
    problems = await subscribe(cluster, "summit", SUMMIT_PROBLEMS)
    arrivals = await subscribe(cluster, "archive", "skyrelay/v1/arrivals/#")
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "CC_O_20250601_000001_R22_S00.fits"
    secret.write_bytes(SECRET)
    (outside / "CC_O_20250601_000001_R22_S01.fits").write_bytes(SECRET)
    link = cluster.inbox / "CC_O_20250601_000001_R22_S00.fits"
    link.symlink_to(secret)
    (cluster.inbox / "night").symlink_to(outside)
    await problems.wait_for(lambda _: len(_refused(problems.of_type("problem"))) == 2, timeout_s=15)

    (real,) = await write_files(cluster, seqnum=2, detectors=["R22_S11"])
    await wait_settled(cluster, archived=1, wake=arrivals, timeout_s=30)
    # Several rescans (1 s apart) have passed over the links meanwhile; none reported them again.
    assert not await problems.next_message(2.5)
    assert _refused(problems.of_type("problem")) == {link.name: 1, "night": 1}
    summit_files = query_journal(cluster, "summit", "SELECT name, checksum FROM files")
    assert summit_files == [{"name": real.name, "checksum": blake3_of(real)}]
    assert [r["name"] for r in read_catalog(cluster)] == [real.name]
    archived = [p for p in cluster.archive_root.rglob("*") if p.is_file()]
    assert all(SECRET not in p.read_bytes() for p in archived)
    assert link.is_symlink() and secret.read_bytes() == SECRET, "left in place, target untouched"
    async with aiohttp.ClientSession() as session:
        status = await site_status(session, cluster, "summit")
    assert status["problems"].get("not_a_regular_file") == 2
