"""The modes a link can be in (up, cut, blackhole, slow, flaky, corrupt) and their validated parameters."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from ops.linksim.errors import LinkParamsError

__all__ = ["DEFAULT_CORRUPT_PROBABILITY", "DEFAULT_RESET_INTERVAL_S", "PARAM_NAMES", "LinkMode", "LinkState"]


DEFAULT_RESET_INTERVAL_S: Final = 2.0
DEFAULT_CORRUPT_PROBABILITY: Final = 0.01
PARAM_NAMES: Final = ("mbps", "latency_ms", "reset_interval_s", "corrupt_probability")


class LinkMode(StrEnum):
    """What a link does to the connections crossing it."""

    UP = "up"
    CUT = "cut"
    BLACKHOLE = "blackhole"
    SLOW = "slow"
    FLAKY = "flaky"
    CORRUPT = "corrupt"


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkState:
    """The mode of a link and its parameters.

    Parameters that do not apply to the mode keep their neutral values (no cap, no latency) or defaults.

    Attributes:
        mode: the current mode.
        mbps: bandwidth cap per direction in Mbit/s (``slow``), None for no cap.
        latency_ms: added one-way latency (``slow``).
        reset_interval_s: mean seconds between random resets of a connection (``flaky``).
        corrupt_probability: chance that a forwarded HTTP body chunk gets one bit flipped (``corrupt``).
        since: when the mode was set (``time.time()``).
    """

    mode: LinkMode
    mbps: float | None = None
    latency_ms: float = 0.0
    reset_interval_s: float = DEFAULT_RESET_INTERVAL_S
    corrupt_probability: float = DEFAULT_CORRUPT_PROBABILITY
    since: float

    @classmethod
    def build(
        cls,
        mode: LinkMode | str,
        *,
        mbps: float | None = None,
        latency_ms: float | None = None,
        reset_interval_s: float | None = None,
        corrupt_probability: float | None = None,
        since: float | None = None,
    ) -> LinkState:
        """Validate a mode and its parameters; parameters that do not apply to the mode are ignored.

        Raises:
            LinkParamsError: unknown mode, or a parameter out of range.
        """
        try:
            link_mode = LinkMode(mode)
        except ValueError:
            valid = ", ".join(m.value for m in LinkMode)
            raise LinkParamsError(f"unknown mode {mode!r}; valid modes: {valid}") from None
        _check_number("mbps", mbps, minimum=0.0, exclusive=True)
        _check_number("latency_ms", latency_ms, minimum=0.0)
        _check_number("reset_interval_s", reset_interval_s, minimum=0.0, exclusive=True)
        _check_number("corrupt_probability", corrupt_probability, minimum=0.0, maximum=1.0)
        state = cls(mode=link_mode, since=time.time() if since is None else since)
        if link_mode is LinkMode.SLOW:
            if mbps is None and not latency_ms:
                raise LinkParamsError("mode slow needs mbps and/or latency_ms")
            return cls(mode=link_mode, mbps=mbps, latency_ms=latency_ms or 0.0, since=state.since)
        if link_mode is LinkMode.FLAKY and reset_interval_s is not None:
            return cls(mode=link_mode, reset_interval_s=reset_interval_s, since=state.since)
        if link_mode is LinkMode.CORRUPT and corrupt_probability is not None:
            return cls(mode=link_mode, corrupt_probability=corrupt_probability, since=state.since)
        return state

    def params(self) -> dict[str, float | None]:
        """The parameters that apply to the current mode."""
        if self.mode is LinkMode.SLOW:
            return {"mbps": self.mbps, "latency_ms": self.latency_ms}
        if self.mode is LinkMode.FLAKY:
            return {"reset_interval_s": self.reset_interval_s}
        if self.mode is LinkMode.CORRUPT:
            return {"corrupt_probability": self.corrupt_probability}
        return {}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {
            "mode": self.mode.value,
            "mbps": self.mbps,
            "latency_ms": self.latency_ms,
            "reset_interval_s": self.reset_interval_s,
            "corrupt_probability": self.corrupt_probability,
            "since": self.since,
        }


def _check_number(
    name: str,
    value: float | None,
    *,
    minimum: float,
    maximum: float | None = None,
    exclusive: bool = False,
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LinkParamsError(f"{name} must be a finite number, not {value!r}")
    if value < minimum or (exclusive and value == minimum):
        raise LinkParamsError(f"{name} must be {'>' if exclusive else '>='} {minimum:g}, not {value!r}")
    if maximum is not None and value > maximum:
        raise LinkParamsError(f"{name} must be <= {maximum:g}, not {value!r}")
