"""How every ``skyrelay`` command speaks: the answer on stdout, everything else on stderr, one set of exit codes.

The conventions, for anyone adding a command (``ops/template_cli.py``, ``check``/``render``, ``rehearse``)::

    from ops import output
    from ops.target import resolve, target_options

    def add_thing_commands(subparsers):
        p = subparsers.add_parser("thing", help="...", parents=[output.json_option(), target_options()])
        p.add_argument("--limit", type=int, default=20, help="every option has a help text")
        p.set_defaults(func=cmd_thing)

    def cmd_thing(args) -> int:
        target = resolve(args)                           # --workdir / --topology (CliError, exit 2, if neither works)
        rows = target.request_json(target.http[target.archive] + "/v1/thing")  # refusal: exit 4, site's message
        if args.json:
            output.emit_json(rows)                       # exactly one JSON document on stdout
            return output.Exit.OK
        output.table(["name", "state"], [(r["name"], output.state(r["ok"], "ok", "DOWN")) for r in rows])
        with output.progress("measuring", total=10) as step:   # a bar on stderr (a line per phase off a terminal)
            ...; step(1, description="phase two")
        raise output.CliError("what went wrong and what to do", output.Exit.REFUSED)

- **stdout** carries the answer only: a table (rich; colour and lines on a terminal, plain aligned text
  when piped or with ``NO_COLOR``), or with ``--json`` one JSON document (JSON lines for streams such as
  ``subscribe``). Progress, warnings and errors go to **stderr**, so ``--json | jq`` always works.
- **Errors**: raise :class:`CliError` (or call :func:`fail`); :func:`run_command` prints
  ``skyrelay <command>: <message>`` on stderr and exits with its code. No tracebacks for expected failures.
- **Exit codes**: :class:`Exit`, listed for ``--help`` by :data:`EXIT_CODES_HELP`; :func:`finish_parser`
  puts that epilog (and a formatter that shows defaults) on every command of a parser tree; ``build_parser``
  calls it once, so commands added with ``add_..._commands(subparsers)`` get it without doing anything.
  ``tests/test_cli.py`` checks that every option has a help text and every command a ``--json``.
- **A closed pipe** (``status | head -1``) ends the command quietly with status 141, as coreutils do
  (128 + SIGPIPE); Ctrl-C ends it quietly with 130.

rich is imported here on first use only (structlog, though, imports it whenever it is installed).
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

__all__ = [
    "EXIT_CODES_HELP",
    "CliError",
    "Exit",
    "HelpFormatter",
    "emit_json",
    "fail",
    "finish_parser",
    "json_option",
    "note",
    "progress",
    "run_command",
    "say",
    "state",
    "styled",
    "table",
]


class Exit(enum.IntEnum):
    """The exit status of every ``skyrelay`` command."""

    OK = 0
    """Done; the answer is good news (nothing missing, the route command applied, every site reached)."""
    FAILED = 1
    """Done, and the answer is bad news: files missing (verify), a rebuild differs, a drill missed its figures."""
    USAGE = 2
    """Bad arguments or configuration: unknown option or name, invalid topology, no ``cluster.json``."""
    OVERDUE = 3
    """verify: a file has been on its way longer than ``end_to_end_timeout_s`` (wins over 1)."""
    REFUSED = 4
    """A site answered and refused the request; its own reason is printed (bad dayobs, unknown route...)."""
    NO_DATA = 5
    """verify: the archive has nothing for that observing day."""
    UNREACHABLE = 6
    """A site (or the link simulator) could not be reached; ``status`` still shows the sites it reached."""


PIPE_CLOSED = 141
"""The reader of stdout went away (``| head``): 128 + SIGPIPE, what coreutils exit with."""
INTERRUPTED = 130
"""Ctrl-C: 128 + SIGINT."""

EXIT_CODES_HELP = """\
exit status:
  0    ok
  1    done, with bad news: files missing (verify), a rebuild differs, a drill target missed
  2    usage or configuration error (bad option or name, invalid topology, no cluster.json)
  3    verify: a file has been on its way longer than end_to_end_timeout_s
  4    a site refused the request (its own reason is printed)
  5    no data: verify found nothing for that observing day; no such alert
  6    a site (or the link simulator) unreachable; status still shows the others
  130  interrupted (Ctrl-C); 141 the output pipe was closed (| head)
--json prints one JSON document on stdout (subscribe: JSON lines); messages go to stderr."""


class CliError(Exception):
    """An expected failure: ``message`` goes to stderr and the command exits ``code``."""

    def __init__(self, message: str, code: int = Exit.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = int(code)


def fail(message: str, code: int = Exit.FAILED) -> NoReturn:
    """Raise :class:`CliError`."""
    raise CliError(message, code)


# ---- parsers ------------------------------------------------------------------------------------


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and the exit-code epilog kept as written; an option's default shown after its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or "default" in text.lower() or action.option_strings == []:
            return text
        if default is None or default is False or default is argparse.SUPPRESS or default == []:
            return text
        return f"{text} (default: %(default)s)"


def json_option() -> argparse.ArgumentParser:
    """A parent parser with ``--json`` (pass it in ``parents=[...]``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout instead of a table (for scripts, jq)"
    )
    return parent


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[argparse.ArgumentParser, str | None]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases map to the same parser
                    seen.add(id(sub))
                    yield sub, helps.get(name)


def walk_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every sub-command parser below it."""
    yield parser
    for sub, _ in _subparsers(parser):
        yield from walk_parsers(sub)


def finish_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every command of the tree the exit-code epilog and :class:`HelpFormatter` (unless it has its own)."""
    _finish(parser, None)
    return parser


def _finish(parser: argparse.ArgumentParser, help_text: str | None) -> None:
    if parser.epilog is None:
        parser.epilog = EXIT_CODES_HELP
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = HelpFormatter
    if parser.description is None and help_text:
        parser.description = help_text[:1].upper() + help_text[1:] + "."  # the sub-command's one-line help
    for sub, sub_help in _subparsers(parser):
        _finish(sub, sub_help)


# ---- running a command --------------------------------------------------------------------------


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str = "skyrelay") -> int:
    """Run a command function: :class:`CliError` becomes its message and code, a closed pipe a quiet 141."""
    try:
        try:
            return int(func(args))
        finally:
            sys.stdout.flush()  # a closed pipe shows here at the latest
    except CliError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        _silence_stdout()
        return PIPE_CLOSED
    except KeyboardInterrupt:
        return INTERRUPTED


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush does not complain about the closed pipe."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# ---- stdout: the answer -------------------------------------------------------------------------

_consoles: dict[str, Console] = {}


def console(stream: str = "stdout") -> Console:
    """The rich console of ``stdout`` or ``stderr``: styled on a terminal, plain (no colour, any width) when not."""
    if stream not in _consoles:
        from rich.console import Console

        class _Console(Console):
            def on_broken_pipe(self) -> None:
                self.quiet = True
                raise BrokenPipeError  # run_command ends quietly with 141 (rich itself would exit 1)

        file = sys.stdout if stream == "stdout" else sys.stderr
        terminal = file.isatty()
        _consoles[stream] = _Console(
            file=file,
            highlight=False,
            soft_wrap=not terminal,
            width=None if terminal else 100_000,
            no_color=not terminal or bool(os.environ.get("NO_COLOR")),
            force_terminal=terminal,
            emoji=False,
        )
    return _consoles[stream]


def is_terminal(stream: str = "stdout") -> bool:
    """Whether ``stream`` is a terminal (where colour and progress bars are drawn)."""
    return (sys.stdout if stream == "stdout" else sys.stderr).isatty()


def styled(text: object, style: str | None = None) -> Text:
    """A table cell or line: ``text`` as is (never read as markup), in ``style`` on a terminal."""
    from rich.text import Text

    return Text("" if text is None else str(text), style=style or "")


def state(ok: bool | None, good: str, bad: str, unknown: str = "?") -> Text:
    """``good`` in green or ``bad`` in bold red (``unknown`` in yellow when ``ok`` is None)."""
    if ok is None:
        return styled(unknown, "yellow")
    return styled(good, "green") if ok else styled(bad, "bold red")


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    title: str | None = None,
    right: Sequence[str] = (),
) -> None:
    """Print a table on stdout: boxed and coloured on a terminal, plain columns (greppable) when piped.

    Args:
        columns: Header of each column.
        rows: Cells; anything but a rich ``Text`` is printed as ``str(cell)`` (None as empty).
        title: A line above the table.
        right: Columns to right-align (numbers).
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    terminal = is_terminal()
    grid = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD if terminal else None,
        show_edge=False,
        pad_edge=False,
        header_style="bold" if terminal else "",
        title_style="bold" if terminal else "",
    )
    for column in columns:
        grid.add_column(column, justify="right" if column in right else "left", no_wrap=not terminal)
    for row in rows:
        grid.add_row(*(cell if isinstance(cell, Text) else styled(cell) for cell in row))
    out = console()
    if terminal:
        out.print(grid)
        return
    with out.capture() as captured:  # plain: no padding after the last column
        out.print(grid)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def say(text: object = "", style: str | None = None) -> None:
    """Print one line of the answer on stdout (styled on a terminal)."""
    console().print(styled(text, style))


def emit_json(data: Any) -> None:
    """Print ``data`` as one indented JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def note(text: str, style: str | None = None) -> None:
    """A message for the operator on stderr (never mixed into the answer)."""
    console("stderr").print(styled(text, style))


@contextlib.contextmanager
def progress(description: str, total: float | None = None) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr while the block runs (drawn only when stderr is a terminal).

    Yields ``step(advance=1, description=None)``: advance the bar, optionally renaming the phase.
    """
    if not is_terminal("stderr"):
        # no bar off a terminal: each new phase is one line on stderr (stdout stays the answer's)
        def plain(advance: float = 1, description: str | None = None) -> None:
            if description is not None:
                print(description, file=sys.stderr, flush=True)

        yield plain
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console("stderr"), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def step(advance: float = 1, description: str | None = None) -> None:
            if description is not None:
                bar.update(task, description=description)
            bar.advance(task, advance)

        yield step
