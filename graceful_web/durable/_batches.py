"""Writes batched by the turn of the loop: every item added in one turn shares one write, and
the next batch waits for the one in flight, so writes leave in the order they were made."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from ._records import StoreUnavailable

T = TypeVar("T")


class Batches(Generic[T]):
    """Items added in one turn of the loop share one ``write``; each ``add`` answers the
    future of its batch's write."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        write: Callable[[list[T]], Awaitable[None]],
        context: contextvars.Context,
    ) -> None:
        self._loop = loop
        self._write = write
        self.context = context
        self._items: list[T] = []
        self._next: asyncio.Future[None] | None = None
        self.in_flight: asyncio.Future[None] | None = None

    def add(self, item: T) -> asyncio.Future[None]:
        self._items.append(item)
        future = self._next
        if future is None:
            future = self._next = self._loop.create_future()
            if self.in_flight is None:
                self._loop.call_soon(self._start, context=self.context)
        return future

    def latest(self) -> asyncio.Future[None] | None:
        """The future of the last write asked for: settled once every item so far is."""
        return self._next or self.in_flight

    def _start(self) -> None:
        if self.in_flight is not None or self._next is None:
            return
        items, future = self._items, self._next
        self._items, self._next = [], None
        self.in_flight = future
        # In a context of its own: under run() the signal cancels no task started here.
        self._loop.create_task(self._flush(items, future), context=self.context)

    async def _flush(self, items: list[T], future: asyncio.Future[None]) -> None:
        try:
            await self._write(items)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: not every batch has a waiter left
        except BaseException:
            future.set_exception(StoreUnavailable("the write was interrupted"))
            future.exception()
            raise
        else:
            future.set_result(None)
        finally:
            self.in_flight = None
            if self._next is not None:
                self._start()
