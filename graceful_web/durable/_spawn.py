"""``durable.spawn``: a durable call spawned for its job id, the one a 202 can point to; with an
idempotency key, a call whose key names a job kept already starts nothing and answers that
job's id. (``graceful_web.spawn`` of a durable call stays the way that answers a task.)"""

from __future__ import annotations

import asyncio
from typing import Any

from .._current import current_drain
from . import _runner
from ._job import DurableCall
from ._records import KeyConflict


async def spawn(call: DurableCall[Any], *, key: str | None = None, name: str | None = None) -> str:
    """Record ``call`` and run it as a protected job, as ``graceful_web.spawn`` does; its job
    id once it is recorded (``durable.status`` and ``durable.cancel`` take it).

    ``key`` (else the one its job declares, ``@durable.job(key=...)``) is its idempotency
    key: while a job with that key is kept (queued, running, or finished within the
    retention), this creates nothing and answers that job's id; ``KeyConflict`` when that job
    is of another function or other arguments. Raises ``StoreUnavailable`` when it could not
    be recorded (it was not accepted), ``ShutdownInProgress`` once the drain refuses work."""
    if not isinstance(call, DurableCall):
        raise TypeError(
            f"durable.spawn takes a call of a @durable.job function, got {call!r}; spawn "
            f"other coroutines with graceful_web.spawn"
        )
    if key is None:
        key = call.key()
    elif not isinstance(key, str) or not key:
        raise ValueError(f"an idempotency key must be a non-empty string, got {key!r}")
    encoded = call.encode()
    spawned = _runner.spawn(
        current_drain().work, call.registered, call.args, call.kwargs, encoded, name, key
    )
    await asyncio.shield(spawned.written)
    if spawned.found is not None:
        found = spawned.found.result()
        if found is not None and found != (spawned.record.name, spawned.record.args):
            raise KeyConflict(key or "", spawned.record.id)
    return spawned.record.id
