"""Steps: the parts of a durable job whose results are recorded as they complete, so that a job
run again (after a kill, a hand-over, a failure) resumes after its last completed step instead
of starting over. ::

    @durable.job
    async def export(day: str) -> None:
        rows = await durable.step("fetch", fetch_rows, day)
        for n, row in enumerate(rows):
            await durable.step("send", send_row, row)  # recorded as send, send#2, send#3, ...

A step runs at least once: one cut while it runs (before its result is recorded) runs again.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from ._journal import Journal

T = TypeVar("T")


class Run:
    """One run of a durable job, as its steps see it."""

    __slots__ = ("first", "job_id", "journal", "recorded", "seen")

    def __init__(self, journal: Journal, job_id: str, first: bool) -> None:
        self.journal = journal
        self.job_id = job_id
        self.first = first  # its first attempt ever: no step can be recorded yet
        # How often each step name was met in this run (made by the first step: a job
        # without steps pays for no more than this object).
        self.seen: dict[str, int] | None = None
        self.recorded: asyncio.Future[dict[str, str]] | None = None

    def step_key(self, name: str) -> str:
        """The name a step is recorded under: its n-th call in a run is ``name#n``."""
        if self.seen is None:
            self.seen = {}
        seen = self.seen[name] = self.seen.get(name, 0) + 1
        return name if seen == 1 else f"{name}#{seen}"

    async def recorded_steps(self) -> dict[str, str]:
        """The results of the steps recorded by earlier runs, read once a run."""
        if self.first:
            return {}
        if self.recorded is None:
            self.recorded = asyncio.ensure_future(self._read())
        return await asyncio.shield(self.recorded)

    async def _read(self) -> dict[str, str]:
        await self.journal.open()
        return await self.journal.store.steps(self.job_id)


#: The run of the durable job the current task is part of (None outside durable jobs).
current_run: contextvars.ContextVar[Run | None] = contextvars.ContextVar(
    "graceful_web_durable_run", default=None
)


@overload
async def step(
    name: str, function: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
) -> T: ...


@overload
async def step(name: str, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...


async def step(name: str, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run ``function(*args, **kwargs)`` (awaited if it gives an awaitable) as the step
    ``name`` of the durable job running it, and record its result, which must be JSON; when
    the job runs again, a step recorded already gives its result without running. Either way
    the result is what JSON gives back (a tuple comes back as a list).

    Outside a durable job (a durable function awaited directly) the function simply runs."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a step's name must be a non-empty string, got {name!r}")
    run = current_run.get()
    if run is None:
        return json.loads(_encoded(name, await _called(function, args, kwargs)))
    key = run.step_key(name)
    recorded = (await run.recorded_steps()).get(key)
    if recorded is not None:
        return json.loads(recorded)
    encoded = _encoded(key, await _called(function, args, kwargs))
    # Recorded before the job goes on: a job cut after this step does not run it again.
    await asyncio.shield(run.journal.step_done(run.job_id, key, encoded))
    return json.loads(encoded)


async def _called(function: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    result = function(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def _encoded(name: str, result: Any) -> str:
    try:
        return json.dumps(result, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"durable step {name!r} returned {type(result).__name__}, which cannot be recorded "
            f"as JSON ({exc}): return plain values (str, int, float, bool, None, lists and "
            f"dicts of them)"
        ) from None
