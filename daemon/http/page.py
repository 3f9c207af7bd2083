"""The live status page each daemon serves at ``/``: its /v1/status and /v1/queue, refreshed every 2 s."""

from __future__ import annotations

from importlib import resources

PAGE = resources.files("daemon.http").joinpath("status.html").read_text(encoding="utf-8")
