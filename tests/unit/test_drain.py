"""Property-based tests of the core registry: random interleavings of spawn, finish, fail,
signal, second signal and deadline on one ``Drain``. Whatever the order, every accepted job is
either completed or reported as abandoned, exactly once.

Time is the loop's and the core's shared clock, moved forward by the "deadline" step, so no
example waits for real time to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import types
from dataclasses import dataclass, field
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graceful_web
from graceful_web import _drain, _jobs, _registry, _report, _requests, _work, spawn
from graceful_web._config import CANCEL_GRACE, Config
from graceful_web._current import current_drain
from graceful_web._drain import Drain
from graceful_web._work import ShutdownInProgress


class Clock:
    """Monotonic time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


class ClockLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def time(self) -> float:
        return self.clock.monotonic()


@dataclass
class Model:
    """What the test saw happen, to compare with what the drain reported."""

    drain: Drain
    commands: dict[str, asyncio.Queue[str]] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)
    started: set[str] = field(default_factory=set)
    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    completed_while_draining: list[str] = field(default_factory=list)
    failed_while_draining: list[str] = field(default_factory=list)
    refused: int = 0
    refused_before_the_report: int = 0
    alive: list[str] = field(default_factory=list)

    async def job(self, name: str) -> None:
        self.started.add(name)
        try:
            while True:
                command = await self.commands[name].get()
                if command == "spawn":
                    self.spawn(parent=name)
                    continue
                self.alive.remove(name)
                draining = self.drain.draining
                if command == "finish":
                    self.completed.append(name)
                    if draining:
                        self.completed_while_draining.append(name)
                    return
                self.failed.append(name)
                if draining:
                    self.failed_while_draining.append(name)
                raise RuntimeError(f"job {name} failed")
        except asyncio.CancelledError:
            self.cancelled.append(name)
            self.alive.remove(name)
            raise

    def spawn(self, parent: str | None) -> None:
        """Spawn a job from outside any protected work, or from inside job ``parent``."""
        name = f"job-{len(self.accepted) + self.refused}" + (f"-of-{parent}" if parent else "")
        self.commands[name] = asyncio.Queue()
        try:
            graceful_web.spawn(self.job(name), name=name)
        except ShutdownInProgress:
            self.refused += 1
            # The report is what the drain saw until it ended; later refusals are not in it.
            self.refused_before_the_report += self.drain.report is None
            return
        self.accepted.append(name)
        self.alive.append(name)


STEPS = st.one_of(
    st.tuples(st.just("spawn"), st.just(0)),
    st.tuples(st.sampled_from(["spawn-from", "finish", "fail"]), st.integers(0, 7)),
    st.tuples(st.sampled_from(["signal", "deadline"]), st.just(0)),
)
# Each step is followed by 0 to 3 turns of the event loop, so done callbacks, wake-ups and
# cancellations land in every order relative to the next step.
SCENARIOS = st.lists(st.tuples(STEPS, st.integers(0, 3)), max_size=25)

DRAIN_TIMEOUT = 10.0


async def play(scenario: list[tuple[tuple[str, int], int]], clock: Clock) -> tuple[Model, object]:
    drain = current_drain()
    drain.configure(Config.build(drain_timeout=DRAIN_TIMEOUT, progress_interval=0))
    model = Model(drain)
    waiting: asyncio.Task[_report.DrainReport] | None = None
    signals = 0
    for (step, index), turns in scenario:
        if step == "spawn":
            model.spawn(parent=None)
        elif step in ("spawn-from", "finish", "fail") and model.alive:
            target = model.alive[index % len(model.alive)]
            model.commands[target].put_nowait("spawn" if step == "spawn-from" else step)
        elif step == "signal":
            signals += 1
            if signals == 1:
                # What an adapter does at the first signal: begin, then wait in the shutdown path.
                drain.begin("SIGTERM")
                waiting = asyncio.ensure_future(drain.wait("SIGTERM"))
            else:
                drain.force("SIGINT")  # a second signal
        elif step == "deadline" and drain.deadline is not None:
            clock.offset += max(0.0, drain.deadline - clock.monotonic()) + 0.001
        for _ in range(turns):
            await asyncio.sleep(0)
    if waiting is None:
        drain.begin("SIGTERM")
        waiting = asyncio.ensure_future(drain.wait("SIGTERM"))
    # Whatever is left meets the deadline and the cancel grace.
    clock.offset += DRAIN_TIMEOUT + CANCEL_GRACE + 1
    report = await asyncio.wait_for(waiting, timeout=DRAIN_TIMEOUT * 3)
    for _ in range(3):
        await asyncio.sleep(0)
    return model, report


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenario=SCENARIOS)
def test_every_accepted_job_is_completed_or_reported_abandoned_exactly_once(
    scenario: list[tuple[tuple[str, int], int]],
) -> None:
    clock = Clock()
    loop = ClockLoop(clock)
    try:
        fake_time = types.SimpleNamespace(monotonic=clock.monotonic)
        with contextlib.ExitStack() as patched:
            for module in (_drain, _jobs, _registry, _requests, _work):
                patched.enter_context(mock.patch.object(module, "time", fake_time))
            model, report = loop.run_until_complete(play(scenario, clock))
    finally:
        loop.close()
    assert isinstance(report, _report.DrainReport)

    finished = model.completed + model.failed
    abandoned = [work.name for work in report.abandoned if work.kind == "job"]
    assert len(abandoned) == len(set(abandoned)), "a job was reported abandoned twice"
    assert len(finished) == len(set(finished)), "a job finished twice"
    for name in model.accepted:
        outcomes = (name in finished) + (name in abandoned)
        assert outcomes == 1, f"{name}: finished={name in finished}, abandoned={name in abandoned}"
    assert set(abandoned) <= set(model.accepted)
    # Abandoned means cancelled (before its first step, if it had not run yet), and nothing
    # was cancelled without being reported.
    assert sorted(model.cancelled) == sorted(name for name in abandoned if name in model.started)
    assert set(model.accepted) - model.started <= set(abandoned)
    # A refused job never started, and the report counts it.
    assert model.started <= set(model.accepted)
    assert report.refused_jobs == model.refused_before_the_report
    # The report counts the jobs that finished during the drain (a job finishing in the same
    # turn of the loop as the signal may be counted on either side of it).
    drained = model.completed_while_draining + model.failed_while_draining
    assert len(drained) <= report.drained_jobs <= len(finished)
    assert len(model.failed_while_draining) <= report.failed_jobs <= len(model.failed)
    assert report.exit_code == (
        130 if report.forced else graceful_web.EXIT_ABANDONED if report.abandoned else 0
    )
    assert model.drain.jobs_in_flight == 0
    assert model.drain.requests_in_flight == 0
    assert set(model.alive) <= set(model.accepted) - model.started  # cancelled unstarted


# -- one drain, step by step ----------------------------------------------------------


async def test_drain_waits_for_a_job_and_reports_it() -> None:
    drain = current_drain()
    drain.configure(Config.build(drain_timeout=5))
    finished: list[str] = []

    async def job() -> None:
        await asyncio.sleep(0.05)
        finished.append("done")

    task = spawn(job(), name="unit-job")
    assert task.get_name() == "unit-job"
    report = await drain.wait("test")
    assert finished == ["done"]
    assert (report.drained_jobs, report.abandoned, report.exit_code) == (1, (), 0)


async def test_a_request_whose_response_cannot_be_delivered_is_named_not_drained() -> None:
    drain = current_drain()
    drain.configure(Config.build(drain_timeout=5))
    gone = asyncio.Event()

    async def handler(path: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        drain.enter_request(task, lambda path: f"GET {path}", path)
        try:
            await gone.wait()
            if path == "/cut":
                drain.undeliverable(task)  # as the server's send says its connection is gone
                drain.undeliverable(task)  # every later message says it again: named once
        finally:
            drain.exit_request(task)

    requests = [asyncio.create_task(handler(path)) for path in ("/kept", "/cut")]
    await asyncio.sleep(0)
    drain.begin("test")
    gone.set()
    report = await drain.wait()
    await asyncio.gather(*requests)
    assert [(work.kind, work.name) for work in report.undelivered] == [("request", "GET /cut")]
    assert (report.drained_requests, report.abandoned, report.exit_code) == (1, (), 0)


async def test_deadline_cancels_and_reports_by_name() -> None:
    drain = current_drain()
    drain.configure(Config.build(drain_timeout=0.1))
    spawn(asyncio.sleep(30), name="sleeper")
    report = await drain.wait("test")
    assert [(w.kind, w.name) for w in report.abandoned] == [("job", "sleeper")]
    assert report.exit_code == graceful_web.EXIT_ABANDONED


async def test_a_request_in_flight_at_the_drain_is_named_aged_and_drained() -> None:
    drain = current_drain()
    drain.configure(Config.build(drain_timeout=5))
    release = asyncio.Event()

    async def handler() -> None:
        task = asyncio.current_task()
        assert task is not None
        assert drain.enter_request(task, lambda path: f"GET {path}", "/slow")
        # A nested app's middleware on the same task does not count the request twice.
        assert not drain.enter_request(task, lambda path: f"GET {path}", "/slow")
        try:
            await release.wait()
        finally:
            drain.exit_request(task)

    request = asyncio.create_task(handler())
    await asyncio.sleep(0)
    assert drain.requests_in_flight == 1
    drain.begin("test")
    assert [(work.kind, work.name) for work in drain._work] == [("request", "GET /slow")]
    release.set()
    report = await drain.wait()
    await request
    assert (report.drained_requests, report.abandoned, drain.requests_in_flight) == (1, (), 0)
