"""``skyrelay check`` and ``skyrelay render``: a topology checked for deployment, and one site's host files."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ops import output

EXIT_PROBLEMS = 2


def add_deploy_commands(sub: Any) -> None:
    """Register ``check`` and ``render`` on the ``skyrelay`` subcommands."""
    p = sub.add_parser(
        "check",
        parents=[output.json_option()],
        help="validate a topology for deployment: every problem at once (exit 2 when there is any)",
        description="Load the topology as the daemons do and list every problem at once, then check what a "
        "deployment needs: no two listeners on one address and, for each --site (the sites on this host), its "
        "signing key, broker password and accounts files. Exit status: 0 no problem; 2 problems (listed).",
    )
    p.add_argument("--topology", required=True, help="the topology file")
    p.add_argument(
        "--site", action="append", default=[], help="a site installed on this host: check its files too (repeatable)"
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "render",
        parents=[output.json_option()],
        help="write one site's mosquitto config, broker files, unit drop-ins and install notes from the topology",
        description="Write under OUT, laid out like the host's /, what the host of SITE needs: "
        "etc/skyrelay/mosquitto-SITE.conf, the broker's ACL (and with --secrets its password file, the daemon's "
        "password and signing key), the systemd units with the site's drop-in, and INSTALL.md (where each file "
        "goes, owner and mode). Exit status: 0 written; 2 the topology or the request has problems.",
    )
    p.add_argument("--topology", required=True, help="the (secured) topology file")
    p.add_argument("--site", required=True, help="the site to render")
    p.add_argument("--out", required=True, help="folder to write into (laid out like the host's /)")
    p.add_argument("--secrets", help="the --out folder of `skyrelay secure` (secrets.json, <site>/signing.key)")
    p.add_argument("--install-root", default="/etc/skyrelay", help="the host's skyrelay configuration folder")
    p.add_argument("--prefix", default="/opt/skyrelay/venv", help="where the program is installed (ExecStart)")
    p.add_argument(
        "--broker-state", default="/var/lib/mosquitto-skyrelay", help="parent of the broker's persistence folder"
    )
    p.add_argument("--units-dir", help="the shipped unit files (default: the source tree's systemd/)")
    p.set_defaults(func=cmd_render)


def cmd_check(args: argparse.Namespace) -> int:
    """Every problem of a topology and of its deployment on this host, at once."""
    from daemon.config import load_topology
    from daemon.errors import TopologyError
    from ops.deploy import deployment_problems

    path = Path(args.topology)
    problems: list[str] = []
    try:
        topology = load_topology(path)
    except TopologyError as exc:
        problems += exc.problems
        problems += _raw_listener_clashes(path)
        if args.site:
            problems.append(f"files of {', '.join(args.site)} not checked: the topology does not load")
    else:
        problems += deployment_problems(topology, args.site)
    if args.json:
        output.emit_json({"topology": str(path), "ok": not problems, "problems": problems})
    elif problems:
        print(f"skyrelay check: {path}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
    else:
        files = f"; files of {', '.join(args.site)} present" if args.site else ""
        print(f"skyrelay check: {path}: OK ({len(topology.sites)} sites, {len(topology.routes)} routes{files})")
    return EXIT_PROBLEMS if problems else 0


def _raw_listener_clashes(path: Path) -> list[str]:
    """Listener clashes read from the raw file, for a topology that does not load (so they come at once)."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []
    users: dict[tuple[str, int], list[str]] = {}
    sites = raw.get("sites")
    for name, spec in sites.items() if isinstance(sites, dict) else []:
        for key in ("broker", "http_listen"):
            value = spec.get(key) if isinstance(spec, dict) else None
            if not isinstance(value, str):
                continue
            parts = urlsplit(value if "://" in value else f"tcp://{value}")
            try:
                port = parts.port
            except ValueError:
                continue
            if parts.hostname and port is not None:
                users.setdefault((parts.hostname, port), []).append(f"sites.{name}.{key}")
    return [f"{' and '.join(n)} both listen on {h}:{p}" for (h, p), n in users.items() if len(n) > 1]


def cmd_render(args: argparse.Namespace) -> int:
    """Write one site's host files from the topology."""
    from daemon.config import load_topology
    from daemon.errors import TopologyError
    from ops.accounts import AccountsError
    from ops.deploy import RenderError, render

    try:
        topology = load_topology(args.topology, check_dirs=False)
    except TopologyError as exc:
        raise output.CliError(str(exc), EXIT_PROBLEMS) from None
    out = Path(args.out)
    try:
        rendered = render(
            topology,
            args.site,
            out,
            secrets=Path(args.secrets) if args.secrets else None,
            install_root=Path(args.install_root),
            prefix=Path(args.prefix),
            broker_state=Path(args.broker_state),
            units_dir=Path(args.units_dir) if args.units_dir else None,
        )
    except (RenderError, AccountsError) as exc:
        raise output.CliError(str(exc), EXIT_PROBLEMS) from None
    files = sorted(p for p in out.rglob("*") if p.is_file())
    if args.json:
        output.emit_json(
            {
                "site": args.site,
                "out": str(out),
                "install_notes": str(rendered.install_notes),
                "files": [str(file.relative_to(out)) for file in files],
            }
        )
        return 0
    print(f"skyrelay render: {args.site}: {len(files)} file(s) under {out}; see {rendered.install_notes}")
    for file in files:
        print(f"  {file.relative_to(out)}")
    return 0
