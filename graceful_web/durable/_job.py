"""``@durable.job``: a coroutine function registered under a stable name, whose call is not a
coroutine but a ``DurableCall``: awaited, it simply runs; handed to ``graceful_web.spawn``, it
is recorded first and run as a protected job."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from . import _runner
from ._functions import Registered, register

if TYPE_CHECKING:
    import asyncio

    from .._registry import Registry

P = ParamSpec("P")
T = TypeVar("T")


class DurableFunction(Generic[P, T]):
    """A coroutine function registered as a durable job; calling it makes a ``DurableCall``."""

    def __init__(self, registered: Registered) -> None:
        self.registered = registered
        self.name = registered.name
        self._signature = inspect.signature(registered.function)
        functools.update_wrapper(self, registered.function)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> DurableCall[T]:
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"durable job {self.name!r}: {exc}") from None
        return DurableCall(self.registered, args, kwargs)

    def __repr__(self) -> str:
        return f"<durable job {self.name!r}>"


class DurableCall(Generic[T]):
    """One call of a durable function: ``await`` it to run it here and now, unrecorded, or
    ``graceful_web.spawn`` it to record it and run it as a protected job."""

    __slots__ = ("args", "kwargs", "registered")

    def __init__(
        self, registered: Registered, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.registered = registered
        self.args = args
        self.kwargs = kwargs

    def __await__(self) -> Generator[Any, None, T]:
        coroutine: Coroutine[Any, Any, T] = self.registered.function(*self.args, **self.kwargs)
        return coroutine.__await__()

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
                f"durable job {self.registered.name!r} got arguments that cannot be recorded as "
                f"JSON ({exc}): pass ids and plain values (str, int, float, bool, None, lists "
                f"and dicts of them) and load the rest inside the job. Nothing was started"
            ) from None

    def key(self) -> str | None:
        """The idempotency key its job declares for these arguments (``@durable.job(key=...)``),
        else None."""
        make = self.registered.key
        if make is None:
            return None
        key = make(*self.args, **self.kwargs)
        if not isinstance(key, str) or not key:
            raise TypeError(
                f"durable job {self.registered.name!r}: its key function gave {key!r}, not a "
                f"non-empty string"
            )
        return key

    def __graceful_spawn__(self, registry: Registry, name: str | None) -> asyncio.Task[None]:
        """How ``graceful_web.spawn`` starts a durable call (the core knows no more of it)."""
        encoded = self.encode()
        key = None if self.registered.key is None else self.key()
        spawned = _runner.spawn(
            registry, self.registered, self.args, self.kwargs, encoded, name, key
        )
        if spawned.found is not None:
            spawned.found.add_done_callback(functools.partial(_runner.log_conflict, spawned.record))
        return spawned.task

    def __repr__(self) -> str:
        return f"<durable call {self.registered.name!r}>"


@overload
def job(function: Callable[P, Coroutine[Any, Any, T]], /) -> DurableFunction[P, T]: ...


@overload
def job(
    *,
    name: str | None = None,
    max_attempts: int | None = None,
    key: Callable[..., str] | None = None,
) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], DurableFunction[P, T]]: ...


def job(
    function: Callable[P, Coroutine[Any, Any, T]] | None = None,
    /,
    *,
    name: str | None = None,
    max_attempts: int | None = None,
    key: Callable[..., str] | None = None,
) -> DurableFunction[P, T] | Callable[[Callable[P, Coroutine[Any, Any, T]]], DurableFunction[P, T]]:
    """Register an async function as a durable job, under ``name`` (else
    ``module:qualname``). Give a stable ``name`` when the function may move or be renamed:
    records of earlier releases find their function by it. ``max_attempts`` (else the
    setting, 5) is how many failures make it dead. ``key``, called with a call's arguments,
    makes its idempotency key: a second call with the same key starts nothing while the first
    one's job is kept (see ``durable.spawn``)."""
    if max_attempts is not None and (
        isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
    ):
        raise ValueError(f"max_attempts must be a whole number of 1 or more, got {max_attempts!r}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"a durable job's name must be a non-empty string, got {name!r}")

    def decorate(function: Callable[P, Coroutine[Any, Any, T]]) -> DurableFunction[P, T]:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(
                f"@durable.job takes an async function (async def ...), got {function!r}"
            )
        return DurableFunction(register(function, name, max_attempts, key))

    if function is not None:
        return decorate(function)
    return decorate
