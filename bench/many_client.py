"""A client process holding N slow requests in flight at once, one connection each.

``python -m bench.many_client PORT N MS`` opens N connections to 127.0.0.1:PORT (a bounded
number of connects at a time), sends ``GET /slow?ms=MS&after=N`` on each (the server sleeps MS
once all N have started), prints ``sent`` once every request is written, and at the end one
JSON line: how many answered 200, which other statuses and errors were seen. Every connection
has a deadline; the client never retries.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys

from ._harness import HOST, raise_open_files

CONNECTS_AT_ONCE = 500
RESPONSE_TIMEOUT = 60.0


async def _one(port: int, ms: int, n: int, connects: asyncio.Semaphore, sent: list[int]) -> str:
    try:
        async with connects:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 30)
        try:
            writer.write(f"GET /slow?ms={ms}&after={n} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            await writer.drain()
            sent[0] += 1
            status_line = await asyncio.wait_for(reader.readline(), RESPONSE_TIMEOUT)
            parts = status_line.split()
            return parts[1].decode() if len(parts) > 1 else "no answer"
        finally:
            writer.close()
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        return type(exc).__name__


async def main(port: int, n: int, ms: int) -> dict[str, object]:
    connects = asyncio.Semaphore(CONNECTS_AT_ONCE)
    sent = [0]
    tasks = [asyncio.create_task(_one(port, ms, n, connects, sent)) for _ in range(n)]
    while sent[0] < n and not all(task.done() for task in tasks):
        await asyncio.sleep(0.01)
    print("sent", sent[0], flush=True)
    outcomes = collections.Counter(await asyncio.gather(*tasks))
    return {"ok": outcomes.pop("200", 0), "other": dict(outcomes)}


if __name__ == "__main__":
    port, count, slow_ms = (int(arg) for arg in sys.argv[1:4])
    raise_open_files(count + 100)
    print(json.dumps(asyncio.run(main(port, count, slow_ms))), flush=True)
