"""The one stop sequence (graceful_web._stop), with a stand-in server: what happens, in which
order, from the signal to the server told to stop; a second signal forces."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from graceful_web._config import CANCEL_GRACE, HAND_OVER_TIME, Config
from graceful_web._current import current_drain
from graceful_web._drain import Drain, process
from graceful_web._signals import Installed
from graceful_web._stop import Connections, StopSequence


class Listener:
    """A listening asyncio.Server's stand-in: no socket, a close that is recorded."""

    def __init__(self, steps: list[str]) -> None:
        self.sockets: list[Any] = []
        self.steps = steps

    def close(self) -> None:
        self.steps.append("listeners closed")


class StandInServer:
    stopped_when_draining = False
    closes_long_lived_itself = True
    stop_again_when_forced = True

    def __init__(self, *, reachable: bool = True, idle: int | None = 0) -> None:
        self.steps: list[str] = []
        self.reachable = reachable
        self.idle = idle
        self.stops: list[signal.Signals] = []

    def connections(self) -> Connections | None:
        self.steps.append("connections read")
        if not self.reachable:
            return None
        return Connections([Listener(self.steps)], lambda: self.idle)

    def stop(self, sig: signal.Signals, installed: Installed | None) -> None:
        self.steps.append(f"told to stop by {sig.name}")
        self.stops.append(sig)

    def forced(self, sig: signal.Signals) -> None:
        self.steps.append("forced")


@pytest.fixture
async def drain() -> AsyncIterator[Drain]:
    drain = current_drain()
    try:
        yield drain
    finally:
        drain.disarm_watchdog()  # armed by the signal: it would end this test process
        process.serving = True  # for the in-process tests after this one


def configured(drain: Drain, **settings: Any) -> Drain:
    drain.configure(Config.build(drain_timeout=10, **settings))
    return drain


async def until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_the_signal_begins_the_drain_and_arms_the_watchdog(drain: Drain) -> None:
    server = StandInServer()
    sequence = StopSequence(configured(drain), server)
    sequence.on_signal(signal.SIGTERM)
    assert drain.draining and drain.reason == "SIGTERM"
    assert drain._watchdog.armed
    await until(lambda: server.stops)


async def test_listeners_close_before_the_server_is_told_to_stop(drain: Drain) -> None:
    server = StandInServer()
    StopSequence(configured(drain), server).on_signal(signal.SIGTERM)
    await until(lambda: server.stops)
    assert server.steps == ["connections read", "listeners closed", "told to stop by SIGTERM"]


async def test_idle_connections_are_given_the_grace_then_the_server_stops(drain: Drain) -> None:
    server = StandInServer(idle=1)
    sequence = StopSequence(configured(drain, idle_connection_grace=0.3), server)
    sequence.on_signal(signal.SIGTERM)
    await until(lambda: "listeners closed" in server.steps)
    await asyncio.sleep(0.05)
    assert server.stops == []  # an idle connection is still open, inside the grace
    server.idle = 0  # its request came and was answered
    await until(lambda: server.stops, timeout=0.25)


async def test_a_server_out_of_reach_is_told_in_the_signal_handler_itself(drain: Drain) -> None:
    server = StandInServer(reachable=False)
    StopSequence(configured(drain), server).on_signal(signal.SIGTERM)
    assert server.steps == ["connections read", "told to stop by SIGTERM"]  # no loop turn


async def test_the_pre_stop_delay_keeps_the_server_serving(drain: Drain) -> None:
    server = StandInServer(reachable=False)
    StopSequence(configured(drain, pre_stop_delay=0.2), server).on_signal(signal.SIGTERM)
    assert drain.draining
    await asyncio.sleep(0.1)
    assert server.stops == []
    await until(lambda: server.stops)


async def test_a_second_signal_forces_and_tells_the_server_again(drain: Drain) -> None:
    server = StandInServer(reachable=False)
    sequence = StopSequence(configured(drain), server)
    sequence.on_signal(signal.SIGTERM)
    sequence.on_signal(signal.SIGINT)
    assert drain.forced and drain.reason == "SIGINT"
    assert server.stops == [signal.SIGTERM, signal.SIGINT]
    assert server.steps[-1] == "forced"


async def test_a_second_signal_in_the_pre_stop_delay_stops_the_server_once(drain: Drain) -> None:
    server = StandInServer()
    server.stop_again_when_forced = False
    sequence = StopSequence(configured(drain, pre_stop_delay=0.1), server)
    sequence.on_signal(signal.SIGTERM)
    sequence.on_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    assert server.stops == [signal.SIGTERM]
    assert "connections read" not in server.steps  # told already: nothing left to close


async def test_a_drain_begun_without_a_signal_is_not_forced_by_the_first(drain: Drain) -> None:
    server = StandInServer(reachable=False)
    sequence = StopSequence(configured(drain), server)
    drain.begin("shutdown")  # the server stopped on its own (lifespan shutdown)
    sequence.on_signal(signal.SIGTERM)
    assert not drain.forced
    assert server.stops == [signal.SIGTERM]


async def test_where_the_drain_runs_after_the_server_stopped_any_signal_forces(
    drain: Drain,
) -> None:
    server = StandInServer(reachable=False)
    server.stopped_when_draining = True  # aiohttp: the drain runs in its own shutdown
    sequence = StopSequence(configured(drain), server)
    drain.begin("shutdown")
    sequence.on_signal(signal.SIGTERM)
    assert drain.forced


def test_the_hand_over_fits_inside_the_unwinding_after_the_deadline() -> None:
    assert 0 < HAND_OVER_TIME < CANCEL_GRACE


def test_the_long_lived_grace_is_checked_with_the_other_settings() -> None:
    assert Config.build(drain_timeout=1).long_lived_grace == 0.5
    assert Config.build(drain_timeout=25).long_lived_grace == 1.0
    assert Config.build(drain_timeout=25).websocket_close_code == 1012
    with pytest.raises(ValueError, match="long_lived_grace"):
        Config.build(drain_timeout=4, pre_stop_delay=2, long_lived_grace=2)
