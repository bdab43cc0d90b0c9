"""Protected jobs under trio: a system task per job, and ``TrioJob``, the handle ``spawn``
returns there, shaped like a small task."""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import anyio

from ._report import log_job_failed

T = TypeVar("T")


class TrioJob(Generic[T]):
    """What ``spawn`` returns under trio: the job's handle, shaped like a small task."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._scope: Any = None
        self._done = anyio.Event()
        self._result: T | None = None
        self._exception: BaseException | None = None
        self._cancelled = False

    def get_name(self) -> str:
        return self._name

    def cancel(self) -> bool:
        if self._scope is None or self._done.is_set():
            return False
        self._scope.cancel()
        return True

    def done(self) -> bool:
        return self._done.is_set()

    def cancelled(self) -> bool:
        return self._cancelled

    def result(self) -> T:
        if not self._done.is_set():
            raise RuntimeError(f"job {self._name!r} has not finished")
        if self._exception is not None:
            raise self._exception
        return self._result  # type: ignore[return-value]

    async def wait(self) -> T:
        await self._done.wait()
        return self.result()


def trio_running() -> Any:
    """The trio module when it is imported (then the caller may be running under it)."""
    return sys.modules.get("trio")


def start(
    job: TrioJob[T],
    coro: Coroutine[Any, Any, T],
    context: contextvars.Context,
    done: Callable[[bool], None],
) -> None:
    """Run ``coro`` as ``job`` in a system task; ``done(failed)`` once it has ended."""
    trio = trio_running()
    assert trio is not None, "the caller checks trio_running() first"

    async def run_job() -> None:
        failed = False
        with trio.CancelScope() as scope:
            job._scope = scope
            try:
                job._result = await coro
            except trio.Cancelled:
                job._cancelled = True
                raise
            except BaseException as exc:
                # A system task must not raise: it would crash the whole trio run.
                failed = True
                job._exception = exc
                log_job_failed(job.get_name(), exc)
            finally:
                job._done.set()
                done(failed)

    # A system task lives as long as the run, outside any request's nursery, which is what
    # a job started from a request needs.
    trio.lowlevel.spawn_system_task(run_job, name=job.get_name(), context=context)
