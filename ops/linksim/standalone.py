"""Run a link simulator stand-alone from a JSON spec: ``python -m ops.linksim SPEC.json``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ops.linksim.errors import LinkSimError
from ops.linksim.simulator import LinkSimulator
from ops.linksim.spec import ProxySpec

__all__ = ["load_spec", "main"]


def load_spec(path: Path) -> tuple[dict[str, list[ProxySpec]], str, int]:
    """Read a simulator spec: ``{"control": {"host", "port"}, "links": {name: [ProxySpec fields, ...]}}``.

    Raises:
        LinkSimError: unreadable file or invalid content.
    """
    try:
        raw = json.loads(path.read_text())
        control = raw.get("control", {})
        links = {str(name): [ProxySpec(**p) for p in proxies] for name, proxies in raw["links"].items()}
        return links, str(control.get("host", "127.0.0.1")), int(control.get("port", 0))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LinkSimError(f"{path}: invalid link simulator spec: {exc!r}") from exc


async def _run_standalone(spec_path: Path, addresses_out: Path | None) -> None:
    links, control_host, control_port = load_spec(spec_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with LinkSimulator(links, control_host=control_host, control_port=control_port) as sim:
        report = json.dumps({"control": sim.control_url, "links": sim.addresses()})
        if addresses_out is not None:
            partial = addresses_out.with_name(addresses_out.name + ".tmp")
            partial.write_text(report + "\n")
            os.replace(partial, addresses_out)
        print(report, flush=True)
        async with asyncio.TaskGroup() as group:
            serving = group.create_task(sim.serve_forever(), name="linksim.main.serve")
            await stop.wait()
            serving.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a link simulator from a JSON spec until SIGINT/SIGTERM; prints its addresses as JSON once ready."""
    parser = argparse.ArgumentParser(prog="python -m ops.linksim", description=main.__doc__)
    parser.add_argument("spec", type=Path, help="JSON spec: control host/port and the proxies of each link")
    parser.add_argument("--addresses-out", type=Path, help="also write the bound addresses to this file")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_run_standalone(args.spec, args.addresses_out))
    except LinkSimError as exc:
        print(f"linksim: {exc}", file=sys.stderr)
        return 2
    return 0
