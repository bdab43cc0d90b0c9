"""The durable functions of this process, each under its stable name, and the job the current
task is running."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

JobFunction = Callable[..., Coroutine[Any, Any, Any]]


@dataclass(frozen=True)
class Registered:
    """A coroutine function registered as a durable job."""

    name: str
    function: JobFunction
    max_attempts: int | None  # None: the setting's
    key: Callable[..., str] | None = None  # makes a call's idempotency key of its arguments


#: Every durable function of this process, by its stable name.
functions: dict[str, Registered] = {}


def register(
    function: JobFunction,
    name: str | None,
    max_attempts: int | None,
    key: Callable[..., str] | None = None,
) -> Registered:
    """Register ``function`` under ``name`` (else ``module:qualname``), refusing what could
    not be found again by another process."""
    stable = name or f"{function.__module__}:{function.__qualname__}"
    if "<locals>" in stable:
        raise ValueError(
            f"{function.__qualname__} is defined inside a function, so its name is not "
            f"stable across processes: define it at module level, or pass "
            f"@durable.job(name='...')"
        )
    known = functions.get(stable)
    # (A module imported twice, as __main__ and by its name, is the same job.)
    if known is not None and _place(known.function) != _place(function):
        raise ValueError(
            f"two durable jobs are registered under {stable!r}: "
            f"{known.function!r} and {function!r}; give one of them another name"
        )
    registered = functions[stable] = Registered(stable, function, max_attempts, key)
    return registered


def _place(function: Callable[..., Any]) -> tuple[str, str, int]:
    code = getattr(function, "__code__", None)
    if code is None:
        return (function.__qualname__, "", 0)
    return (function.__qualname__, code.co_filename, code.co_firstlineno)


@dataclass(frozen=True)
class JobInfo:
    """The durable job the current task is running: ``id`` is the same on every attempt,
    ``attempt`` counts from 1. Use them to make the job idempotent: it runs at least once."""

    id: str
    name: str
    attempt: int


current_job: contextvars.ContextVar[JobInfo] = contextvars.ContextVar("graceful_web_durable_job")


def current() -> JobInfo:
    """The durable job being run by the calling task."""
    try:
        return current_job.get()
    except LookupError:
        raise RuntimeError(
            "graceful_web.durable.current() is only known inside a durable job started with "
            "graceful_web.spawn(your_job(...))"
        ) from None
