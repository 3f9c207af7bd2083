"""The console page each daemon serves at ``/``: plain HTML, CSS and JS fed by ``/v1/stream`` (server-sent events)."""

from __future__ import annotations

from importlib import resources

PAGE = resources.files("daemon.http").joinpath("status.html").read_text(encoding="utf-8")
