"""Accepted means recorded: the records a request's durable jobs make are written before its
response leaves, and when they cannot be, the jobs were not accepted and the request is
answered 503 in place of the app's response. What that answer says is written here once;
each adapter only puts it in its own response type.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping
from types import MappingProxyType

from ._journal import journals

_running_loop = asyncio.events._get_running_loop  # None, not an exception, without a loop

#: The answer to a request whose durable jobs could not be recorded (so were not accepted).
UNRECORDED_STATUS = 503
UNRECORDED_TEXT = "the work this request started could not be recorded; try again\n"
UNRECORDED_HEADERS: Mapping[str, str] = MappingProxyType({"Retry-After": "1"})

#: The records the current request made, set by the adapters as it starts (a list shared with
#: the tasks it starts): its response leaves once they are written.
request_records: contextvars.ContextVar[list[asyncio.Future[None]] | None] = (
    contextvars.ContextVar("graceful_web_request_records", default=None)
)


def records_of_request() -> list[asyncio.Future[None]]:
    """A new list of the records the calling request makes (the adapters ask only when this
    process has durable jobs)."""
    records: list[asyncio.Future[None]] = []
    request_records.set(records)
    return records


async def written(records: list[asyncio.Future[None]]) -> bool:
    """Wait for a request's records; False when any of them could not be written (those jobs
    were not accepted). The list is emptied: its records are settled."""
    pending, records[:] = list(records), []
    ok = True
    for future in pending:
        try:
            await asyncio.shield(future)
        except Exception:
            ok = False
    return ok


async def recorded() -> None:
    """Wait until every durable job spawned so far on this loop is recorded; raises
    ``StoreUnavailable`` when their write failed (they were not accepted and will not run)."""
    loop = _running_loop()
    journal = None if loop is None else journals.get(loop)
    if journal is not None:
        await journal.barrier()
