"""Durable job functions: registered under a stable name, called with JSON arguments.

A call of a registered function is not a coroutine but a ``DurableCall``: awaited, it simply
runs; handed to ``graceful_web.spawn``, it is recorded first and run as a protected job.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

if TYPE_CHECKING:
    import asyncio

    from .._registry import Registry

P = ParamSpec("P")
T = TypeVar("T")

JobFunction = Callable[..., Coroutine[Any, Any, Any]]

#: Every durable function of this process, by its stable name.
functions: dict[str, DurableFunction[..., Any]] = {}


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


class DurableFunction(Generic[P, T]):
    """A coroutine function registered under ``name``; calling it makes a ``DurableCall``."""

    def __init__(
        self, function: Callable[P, Coroutine[Any, Any, T]], name: str, max_attempts: int | None
    ) -> None:
        self.function = function
        self.name = name
        self.max_attempts = max_attempts
        self._signature = inspect.signature(function)
        functools.update_wrapper(self, function)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> DurableCall[T]:
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"durable job {self.name!r}: {exc}") from None
        return DurableCall(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<durable job {self.name!r}>"


class DurableCall(Generic[T]):
    """One call of a durable function: ``await`` it to run it here and now, unrecorded, or
    ``graceful_web.spawn`` it to record it and run it as a protected job."""

    __slots__ = ("args", "function", "kwargs")

    def __init__(
        self, function: DurableFunction[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs

    def __await__(self) -> Generator[Any, None, T]:
        return self.function.function(*self.args, **self.kwargs).__await__()

    def encode(self) -> str:
        """The arguments as the JSON the record keeps; a clear error when they are not."""
        try:
            return json.dumps(
                {"args": list(self.args), "kwargs": self.kwargs},
                allow_nan=False,
                separators=(",", ":"),
            )
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"durable job {self.function.name!r} got arguments that cannot be recorded as "
                f"JSON ({exc}): pass ids and plain values (str, int, float, bool, None, lists "
                f"and dicts of them) and load the rest inside the job. Nothing was started"
            ) from None

    def __graceful_spawn__(self, registry: Registry, name: str | None) -> asyncio.Task[None]:
        from . import _journal  # the store and its drivers only once a job is spawned

        return _journal.spawn(registry, self, name)

    def __repr__(self) -> str:
        return f"<durable call {self.function.name!r}>"


@overload
def job(function: Callable[P, Coroutine[Any, Any, T]], /) -> DurableFunction[P, T]: ...


@overload
def job(
    *, name: str | None = None, max_attempts: int | None = None
) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], DurableFunction[P, T]]: ...


def job(
    function: Callable[P, Coroutine[Any, Any, T]] | None = None,
    /,
    *,
    name: str | None = None,
    max_attempts: int | None = None,
) -> DurableFunction[P, T] | Callable[[Callable[P, Coroutine[Any, Any, T]]], DurableFunction[P, T]]:
    """Register an async function as a durable job, under ``name`` (else
    ``module:qualname``). Give a stable ``name`` when the function may move or be renamed:
    records of earlier releases find their function by it."""
    if max_attempts is not None and (
        isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
    ):
        raise ValueError(f"max_attempts must be a whole number of 1 or more, got {max_attempts!r}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"a durable job's name must be a non-empty string, got {name!r}")

    def register(function: Callable[P, Coroutine[Any, Any, T]]) -> DurableFunction[P, T]:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(
                f"@durable.job takes an async function (async def ...), got {function!r}"
            )
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
        durable = DurableFunction(function, stable, max_attempts)
        functions[stable] = durable
        return durable

    if function is not None:
        return register(function)
    return register


def _place(function: Callable[..., Any]) -> tuple[str, str, int]:
    code = getattr(function, "__code__", None)
    if code is None:
        return (function.__qualname__, "", 0)
    return (function.__qualname__, code.co_filename, code.co_firstlineno)
