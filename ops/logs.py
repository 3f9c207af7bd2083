"""Logging, configured once at the entry point: JSON lines under systemd, a console format on a terminal.

Every line goes through structlog, the libraries' own too: structlog's loggers are stdlib loggers, and
the root logger's one handler formats every record (skyrelay's, and paho's ``mqtt``, ``aiohttp.access``,
``asyncio``, ``watchdog``, dask's ``distributed``, ``py.warnings``) with structlog's
``ProcessorFormatter``. So under systemd every line of a daemon is one JSON object
(``journalctl -u skyrelay@summit -o cat | jq`` never meets a plain-text line), with ``timestamp``,
``level``, ``logger``, ``event``, and what the code bound: ``site``, ``file``, ``obsid``, ``transfer_id``.

Levels: ``--log-level`` (``SKYRELAY_LOG_LEVEL``, default info) for skyrelay's own loggers,
``--library-log-level`` (``SKYRELAY_LIBRARY_LOG_LEVEL``, default warning) for the libraries' (their
info lines are an access log per request and a line per MQTT packet).

journald priorities: when stderr is the journal (systemd's ``$JOURNAL_STREAM`` names its device and
inode), each line starts with a syslog priority, ``<3>`` error, ``<4>`` warning, ``<6>`` info,
``<7>`` debug. journald (``SyslogLevelPrefix=yes``, its default) takes the prefix off and stores it as
the entry's PRIORITY: ``journalctl -p warning`` works, and ``-o cat`` prints the bare JSON, so ``| jq``
still works. Anywhere else (a terminal, a file, a pipe) no prefix is written: the line is pure JSON.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from types import TracebackType
from typing import TextIO

import structlog

OWN_LOGGERS = ("daemon", "ops", "protocol", "processors", "__main__")
"""skyrelay's own logger names (structlog names each logger after its module)."""

PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
"""syslog priority (what journald stores as PRIORITY) of each stdlib level."""

PROCESS_FIELDS: dict[str, str] = {}
"""Fields every line of this process carries (``skyrelay run`` puts its ``site`` here), the libraries' lines too."""


def _add_process_fields(
    logger: object, method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    for key, value in PROCESS_FIELDS.items():
        event_dict.setdefault(key, value)
    return event_dict


_DASK_LOGGING = "{'version': 1, 'incremental': True, 'disable_existing_loggers': False}"
"""dask's ``distributed.logging`` in logging's dict form: distributed then adds no stderr handler of its
own (as its default, old-style setting does) and its records reach the root logger's handler."""


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """``--log-level``, ``--library-log-level`` and ``--json-logs`` on the top-level parser."""
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SKYRELAY_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="skyrelay's own log lines from this level up (env SKYRELAY_LOG_LEVEL)",
    )
    parser.add_argument(
        "--library-log-level",
        default=os.environ.get("SKYRELAY_LIBRARY_LOG_LEVEL", "warning"),
        choices=["debug", "info", "warning", "error"],
        help="the libraries' log lines (paho, aiohttp, asyncio, watchdog, dask) from this level up "
        "(env SKYRELAY_LIBRARY_LOG_LEVEL)",
    )
    parser.add_argument(
        "--json-logs", action="store_true", default=None, help="JSON log lines (default: JSON unless on a terminal)"
    )


def on_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is connected to journald (systemd's ``JOURNAL_STREAM=<device>:<inode>``)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = expected.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return bool(inode) and (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


class LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """One formatted line per record on the stream, with a journald priority prefix when it is the journal."""

    def __init__(self, stream: TextIO, *, priority_prefix: bool) -> None:
        super().__init__(stream)
        self.priority_prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line (a multi-line message or traceback stays inside the JSON string)."""
        line = super().format(record)
        if self.priority_prefix:
            priority = PRIORITIES.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
            return f"<{priority}>{line}"
        return line


def _level(name: str) -> int:
    return int(logging.getLevelName(name.upper()))


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """An exception nothing caught (a daemon crashing): one log line with its traceback, not bare text."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    structlog.get_logger("ops.logs").critical("uncaught_exception", exc_info=(kind, exc, tb))


def configure(
    level: str = "info",
    *,
    json_logs: bool | None = None,
    library_level: str = "warning",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and the standard library's logging alike (see the module docstring).

    Args:
        level: skyrelay's own loggers' level.
        json_logs: JSON lines (None: when ``stream`` is not a terminal).
        library_level: every other logger's level (the libraries').
        stream: where log lines go (stderr; stdout stays the commands' answer).
    """
    stream = stream or sys.stderr
    if json_logs is None:
        json_logs = not stream.isatty()
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _add_process_fields,
        timestamper,
    ]
    foreign: list[structlog.types.Processor] = [
        *shared,
        structlog.stdlib.ExtraAdder(),
        structlog.stdlib.PositionalArgumentsFormatter(),
    ]
    renderer: structlog.types.Processor
    if json_logs:
        renderer = structlog.processors.JSONRenderer(default=str)
        final: list[structlog.types.Processor] = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        final = [structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]
    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=foreign, processors=final)
    handler = LogHandler(stream, priority_prefix=json_logs and on_journal(stream))
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level(library_level))
    own = _level(level)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(own)
    import aiomqtt  # noqa: F401 - it pins paho's "mqtt" logger at WARNING when imported: import it first

    logging.getLogger("mqtt").setLevel(logging.NOTSET)  # then let --library-log-level decide
    logging.captureWarnings(True)
    # No line shows the caller's file and line, or thread and process ids: don't look them up for every
    # record (logging's documented optimisation; a third of the cost of a line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    sys.excepthook = _log_uncaught
    os.environ.setdefault("DASK_DISTRIBUTED__LOGGING", _DASK_LOGGING)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
