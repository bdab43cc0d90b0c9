"""The drain's settings, shared by every adapter: a value passed in code wins, else its
environment variable, else the default; each is checked with a message that says what to do."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack, get_type_hints

from ._report import AbandonedCallback, DrainFinishedCallback, DrainStartedCallback

DRAIN_TIMEOUT_ENV = "GRACEFUL_DRAIN_TIMEOUT"
PRE_STOP_DELAY_ENV = "GRACEFUL_PRE_STOP_DELAY"
PROGRESS_INTERVAL_ENV = "GRACEFUL_PROGRESS_INTERVAL"
IDLE_CONNECTION_GRACE_ENV = "GRACEFUL_IDLE_CONNECTION_GRACE"
LONG_LIVED_GRACE_ENV = "GRACEFUL_LONG_LIVED_GRACE"
WEBSOCKET_CLOSE_CODE_ENV = "GRACEFUL_WEBSOCKET_CLOSE_CODE"
DEFAULT_DRAIN_TIMEOUT = 25.0
DEFAULT_PROGRESS_INTERVAL = 1.0
#: How long connections with no request in progress stay open once the listeners have closed
#: (when none is given, at most a quarter of what the deadline leaves after the pre-stop delay).
DEFAULT_IDLE_CONNECTION_GRACE = 1.0
#: Websockets and reconnectable streams still open this long after the pre-stop delay are
#: ended by graceful_web (unless the deadline is shorter: then half of it).
DEFAULT_LONG_LIVED_GRACE = 1.0
#: 1012 (Service Restart, RFC 6455 as registered by IANA): the client reconnects, to another
#: instance, at once.
DEFAULT_WEBSOCKET_CLOSE_CODE = 1012
#: Close codes an endpoint may not send (RFC 6455 7.4.1: reserved for "no code", "abnormal",
#: "TLS failure").
_RESERVED_CLOSE_CODES = frozenset({1004, 1005, 1006, 1015})
#: A server that drops its connections without sending what it still holds for them (daphne's
#: Twisted reactor at its shutdown) is told to stop once that is sent: at most this long.
UNSENT_FLUSH_BOUND = 1.0

# The timers after the deadline, each derived from the one before it.
#: How long cancelled work may take to unwind after the deadline (finally blocks, rollbacks).
CANCEL_GRACE = 0.25
#: How long a cancelled durable job's hand-over may take: inside the unwinding, with a fifth of
#: it left for the job's task to end. Should it not make it, the lease runs out and another
#: process runs the job.
HAND_OVER_TIME = CANCEL_GRACE * 0.8
#: How long ``on_drain_finished`` may run when the deadline has already passed (or after a
#: second signal).
LATE_HOOK_TIME = 0.5
#: After a drain that abandoned work, how long the server gets to send its own shutdown
#: (ASGI's lifespan shutdown), then how long the app's shutdown may take before the process
#: exits with the drain's status: both within the late hook's time, before the hard exit.
SERVER_SHUTDOWN_WAIT = LATE_HOOK_TIME / 5
APP_SHUTDOWN_BOUND = LATE_HOOK_TIME * 3 / 5
#: The last-resort hard exit comes this long after the deadline: the unwinding and the late
#: hook fit before it, and the process is gone by deadline + 1 s whatever the work does.
HARD_EXIT_AFTER = CANCEL_GRACE + LATE_HOOK_TIME
#: Once a websocket got its close (or a stream its end), how long its handler may take to
#: return before it is cancelled: a client answers a close within a round trip.
CLOSE_HANDSHAKE_TIME = 1.0
#: A server may hand the app the end of a websocket before its close is written (granian
#: does): how long the close gets to reach the wire before such a server is told to stop.
CLOSE_FLUSH_TIME = 0.1

#: A hook handed in by the application (``on_abandoned``, ``on_drain_started``,
#: ``on_drain_finished``), plain or async. What it is called with is the drain's business:
#: the settings only keep it.
Hook = Callable[[Any], "Awaitable[None] | None"]


class DrainSettings(TypedDict, total=False):
    """The settings of every drain, as keyword arguments (``graceful_web.run``)."""

    drain_timeout: float | None
    signals: Iterable[signal.Signals | int | str] | None
    on_abandoned: AbandonedCallback | None
    progress_interval: float | None
    on_drain_started: DrainStartedCallback | None
    on_drain_finished: DrainFinishedCallback | None


class ServerSettings(DrainSettings, total=False):
    """The settings of a web server's drain (``graceful_web.aiohttp.setup``)."""

    pre_stop_delay: float | None
    readiness_path: str | None
    idle_connection_grace: float | None
    long_lived_grace: float | None
    websocket_close_code: int | None


class AsgiSettings(ServerSettings, total=False):
    """The settings of ``GracefulLifespan``."""


def config_of(
    caller: str, settings: dict[str, Any], accepted: type[DrainSettings]
) -> Config:
    """The checked settings ``caller`` was given, refusing a keyword it does not take."""
    names = get_type_hints(accepted)
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise TypeError(
            f"{caller} got an unexpected keyword argument {unknown[0]!r}; its settings are "
            f"{', '.join(sorted(names))}"
        )
    return Config.build(**settings)


@dataclass(frozen=True)
class Config:
    """Validated drain settings.

    A value passed in code wins; when it is ``None`` the environment variable is read,
    then the default applies.
    """

    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    pre_stop_delay: float = 0.0
    on_abandoned: Hook | None = None
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
    readiness_path: str | None = "/readyz"
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL  # 0 turns the progress lines off
    on_drain_started: Hook | None = None
    on_drain_finished: Hook | None = None
    idle_connection_grace: float = DEFAULT_IDLE_CONNECTION_GRACE  # 0: closed at once
    long_lived_grace: float = DEFAULT_LONG_LIVED_GRACE
    websocket_close_code: int = DEFAULT_WEBSOCKET_CLOSE_CODE

    @classmethod
    def build(cls, **settings: Unpack[AsgiSettings]) -> Config:
        drain_timeout = settings.get("drain_timeout")
        pre_stop_delay = settings.get("pre_stop_delay")
        on_abandoned = settings.get("on_abandoned")
        on_drain_started = settings.get("on_drain_started")
        on_drain_finished = settings.get("on_drain_finished")
        readiness_path = settings.get("readiness_path", "/readyz")
        timeout = _seconds(
            "drain_timeout", drain_timeout, DRAIN_TIMEOUT_ENV, DEFAULT_DRAIN_TIMEOUT, False
        )
        delay = _seconds("pre_stop_delay", pre_stop_delay, PRE_STOP_DELAY_ENV, 0.0, True)
        if delay >= timeout:
            raise ValueError(
                f"pre_stop_delay ({delay:g} s) must be shorter than drain_timeout "
                f"({timeout:g} s): the delay is spent inside the one drain deadline"
            )
        if on_abandoned is not None and not callable(on_abandoned):
            raise TypeError(f"on_abandoned must be callable, got {on_abandoned!r}")
        _check_callback("on_drain_started", on_drain_started)
        _check_callback("on_drain_finished", on_drain_finished)
        interval = _seconds(
            "progress_interval",
            settings.get("progress_interval"),
            PROGRESS_INTERVAL_ENV,
            DEFAULT_PROGRESS_INTERVAL,
            True,
        )
        idle_grace = _grace_after_delay(
            "idle_connection_grace",
            settings.get("idle_connection_grace"),
            IDLE_CONNECTION_GRACE_ENV,
            min(DEFAULT_IDLE_CONNECTION_GRACE, (timeout - delay) / 4),
            (timeout, delay, "the grace is spent inside the one drain deadline, after the "
             "listeners close"),
        )  # fmt: skip
        long_lived_grace = _grace_after_delay(
            "long_lived_grace",
            settings.get("long_lived_grace"),
            LONG_LIVED_GRACE_ENV,
            min(DEFAULT_LONG_LIVED_GRACE, (timeout - delay) / 2),
            (timeout, delay, "websockets and streams are ended inside the one drain deadline"),
        )
        close_code = _close_code(settings.get("websocket_close_code"))
        if readiness_path is not None and (
            not isinstance(readiness_path, str) or not readiness_path.startswith("/")
        ):
            raise ValueError(
                f"readiness_path must be a path starting with '/', e.g. '/readyz', or None to "
                f"turn it off; got {readiness_path!r}"
            )
        return cls(
            readiness_path=readiness_path,
            drain_timeout=timeout,
            pre_stop_delay=delay,
            on_abandoned=on_abandoned,
            signals=parse_signals(settings.get("signals")),
            progress_interval=interval,
            on_drain_started=on_drain_started,
            on_drain_finished=on_drain_finished,
            idle_connection_grace=idle_grace,
            long_lived_grace=long_lived_grace,
            websocket_close_code=close_code,
        )


def _close_code(value: int | None) -> int:
    name = "websocket_close_code"
    if value is None:
        raw = os.environ.get(WEBSOCKET_CLOSE_CODE_ENV, "").strip()
        if not raw:
            return DEFAULT_WEBSOCKET_CLOSE_CODE
        name = WEBSOCKET_CLOSE_CODE_ENV
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(
                f"{name}={raw!r} is not a close code; set it to e.g. {name}=1012"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int close code such as 1012 or 1001, got {value!r}")
    if not (1000 <= value <= 4999) or value in _RESERVED_CLOSE_CODES:
        raise ValueError(
            f"{name} must be a close code an endpoint may send (1000-4999, not 1004, 1005, "
            f"1006 or 1015), e.g. 1012 (service restart) or 1001 (going away); got {value!r}"
        )
    return value


def _grace_after_delay(
    name: str,
    value: float | None,
    env: str,
    default: float,
    bound: tuple[float, float, str],
) -> float:
    """A grace spent after the pre-stop delay, inside the deadline: checked against both."""
    grace = _seconds(name, value, env, default, True)
    timeout, delay, why = bound
    if grace >= timeout - delay:
        raise ValueError(
            f"{name} ({grace:g} s) must be shorter than drain_timeout ({timeout:g} s) less "
            f"pre_stop_delay ({delay:g} s): {why}"
        )
    return grace


def _seconds(name: str, value: float | None, env: str, default: float, allow_zero: bool) -> float:
    """``value`` checked, else the environment variable ``env`` checked, else ``default``;
    an error names whichever of the two was wrong."""
    if value is None:
        value = _env_seconds(env)
        name = env
    return _check_seconds(name, default if value is None else value, allow_zero=allow_zero)


def _env_seconds(name: str) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{name}={raw!r} is not a number of seconds; set it to e.g. {name}=25"
        ) from None
    return value


def _check_seconds(name: str, value: float, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")
    return float(value)


def _check_callback(name: str, callback: object) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(
            f"{name} must be callable (a function or an async function), got {callback!r}"
        )


def parse_signals(
    signals: Iterable[signal.Signals | int | str] | None,
) -> tuple[signal.Signals, ...]:
    """Turn names ("SIGTERM", "TERM"), numbers or ``signal.Signals`` into a checked tuple."""
    if signals is None:
        return (signal.SIGINT, signal.SIGTERM)
    if isinstance(signals, (str, int)):
        signals = (signals,)
    parsed = [_parse_signal(item) for item in signals]
    if not parsed:
        raise ValueError("signals must name at least one signal, e.g. ('SIGINT', 'SIGTERM')")
    return tuple(dict.fromkeys(parsed))


def _parse_signal(item: object) -> signal.Signals:
    if isinstance(item, signal.Signals):
        return item
    if isinstance(item, int) and not isinstance(item, bool):
        try:
            return signal.Signals(item)
        except ValueError:
            raise ValueError(f"unknown signal number {item}") from None
    if isinstance(item, str):
        key = item.upper()
        key = key if key.startswith("SIG") else "SIG" + key
        try:
            return signal.Signals[key]
        except KeyError:
            known = ", ".join(s.name for s in (signal.SIGINT, signal.SIGTERM))
            raise ValueError(f"unknown signal name {item!r}: use a name like {known}") from None
    raise TypeError(f"unknown signal {item!r}: use e.g. signal.SIGTERM or 'SIGTERM'")
