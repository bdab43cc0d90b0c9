"""Config: the deadline and every setting checked at setup, saying what to do; signal names."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from starlette.applications import Starlette

import graceful_web
import graceful_web.aiohttp
from graceful_web._config import Config, parse_signals
from graceful_web.asgi import GracefulLifespan


def test_negative_deadline_is_refused_at_setup() -> None:
    with pytest.raises(ValueError, match="drain_timeout must be more than zero seconds, got -1"):
        Config.build(drain_timeout=-1)


def test_pre_stop_delay_must_fit_inside_the_deadline() -> None:
    with pytest.raises(ValueError, match="must be shorter than drain_timeout"):
        Config.build(drain_timeout=5, pre_stop_delay=5)


def test_the_idle_connection_grace_is_1_s_or_a_quarter_of_what_the_deadline_leaves() -> None:
    assert Config.build(drain_timeout=25).idle_connection_grace == 1.0
    assert Config.build(drain_timeout=3, pre_stop_delay=1).idle_connection_grace == 0.5
    assert Config.build(drain_timeout=3, idle_connection_grace=0).idle_connection_grace == 0.0


def test_unknown_signal_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown signal name 'SIGTERMINATE'"):
        parse_signals(["SIGTERMINATE"])


def test_signal_names_numbers_and_short_names_are_accepted() -> None:
    assert parse_signals(["term", 2, signal.SIGHUP]) == (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
    )


def test_deadline_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRACEFUL_DRAIN_TIMEOUT", "7.5")
    assert Config.build().drain_timeout == 7.5
    assert Config.build(drain_timeout=3).drain_timeout == 3.0  # code wins over environment


def test_readiness_path_must_be_a_path() -> None:
    with pytest.raises(ValueError, match="readiness_path must be a path starting with '/'"):
        Config.build(readiness_path="readyz")


# Wrong configuration raises at setup, in either adapter, with a message that says what to do.
# (Already covered elsewhere: a negative deadline, a pre-stop delay not inside the deadline, an
# unknown signal name, a readiness path without '/', hooks that are not callable, something
# that is not an ASGI 3 app, setup() twice or on something that is not an Application.)

WRONG_CONFIGURATION: list[tuple[dict[str, Any], dict[str, str], type[Exception], str]] = [
    ({"drain_timeout": 0}, {}, ValueError, "drain_timeout must be more than zero seconds, got 0"),
    ({"drain_timeout": float("nan")}, {}, ValueError, "must be a finite number of seconds"),
    ({"drain_timeout": "25"}, {}, TypeError, "drain_timeout must be a number of seconds"),
    ({"drain_timeout": True}, {}, TypeError, "drain_timeout must be a number of seconds"),
    ({"pre_stop_delay": -1}, {}, ValueError, "pre_stop_delay must be zero or more seconds"),
    ({"progress_interval": -1}, {}, ValueError, "progress_interval must be zero or more"),
    ({}, {"GRACEFUL_PRE_STOP_DELAY": "5s"}, ValueError,
     "GRACEFUL_PRE_STOP_DELAY='5s' is not a number of seconds; set it to e.g."),
    ({}, {"GRACEFUL_PROGRESS_INTERVAL": "often"}, ValueError,
     "GRACEFUL_PROGRESS_INTERVAL='often' is not a number of seconds; set it to e.g."),
    ({}, {"GRACEFUL_DRAIN_TIMEOUT": "-5"}, ValueError,
     "GRACEFUL_DRAIN_TIMEOUT must be more than zero seconds, got -5"),
    ({"signals": []}, {}, ValueError, "signals must name at least one signal, e.g."),
    ({"signals": [99999]}, {}, ValueError, "unknown signal number 99999"),
    ({"signals": [1.5]}, {}, TypeError, "unknown signal 1.5: use e.g. signal.SIGTERM or"),
    ({"on_abandoned": "requeue"}, {}, TypeError, "on_abandoned must be callable"),
    ({"idle_connection_grace": -1}, {}, ValueError,
     "idle_connection_grace must be zero or more seconds"),
    ({"drain_timeout": 10, "pre_stop_delay": 6, "idle_connection_grace": 4}, {}, ValueError,
     "idle_connection_grace (4 s) must be shorter than drain_timeout (10 s) less pre_stop_delay"),
    ({}, {"GRACEFUL_IDLE_CONNECTION_GRACE": "1s"}, ValueError,
     "GRACEFUL_IDLE_CONNECTION_GRACE='1s' is not a number of seconds; set it to e.g."),
]  # fmt: skip


def set_up_aiohttp(options: dict[str, Any]) -> None:
    graceful_web.aiohttp.setup(web.Application(), **options)


def set_up_asgi(options: dict[str, Any]) -> None:
    GracefulLifespan(Starlette(), **options)


@pytest.mark.parametrize("set_up", [set_up_aiohttp, set_up_asgi], ids=["aiohttp", "asgi"])
@pytest.mark.parametrize(
    ("options", "env", "error", "message"),
    WRONG_CONFIGURATION,
    ids=[message.split(" ", 1)[0] + f"-{n}" for n, (*_, message) in enumerate(WRONG_CONFIGURATION)],
)
def test_wrong_configuration_raises_at_setup_saying_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
    set_up: Callable[[dict[str, Any]], None],
    options: dict[str, Any],
    env: dict[str, str],
    error: type[Exception],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(error) as raised:
        set_up(options)
    assert message in str(raised.value)


@pytest.mark.parametrize("version", ["3.8.6", "2.3.10"])
def test_an_unsupported_aiohttp_version_raises_at_setup(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setattr(graceful_web.aiohttp, "aiohttp_version", version)
    with pytest.raises(RuntimeError) as raised:
        set_up_aiohttp({})
    assert str(raised.value) == (
        f"graceful_web.aiohttp needs aiohttp 3.14 or newer, found {version}: "
        "pip install -U 'graceful-web[aiohttp]'"
    )
