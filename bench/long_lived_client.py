"""A client process holding websockets and event streams open until the server ends them.

``python -m bench.long_lived_client PORT WEBSOCKETS STREAMS SECONDS`` opens WEBSOCKETS
websockets to ``/ws`` and STREAMS server-sent-event feeds to ``/events`` on 127.0.0.1:PORT with
aiohttp's client (a bounded number of opens at a time), prints ``ready N`` once all are open (a
feed counts once its first event is in), then waits for the server to end each one. How each
ended is noted with the monotonic time it was told:

- a websocket: the close code of the server's close frame (1012, 1001, ...), or 1006 when the
  connection ended without one (aiohttp's client names a lost connection so);
- a feed: ``clean`` when the chunked body came to its proper end, ``cut`` when it broke off.

It ends by itself SECONDS after it started, closing whatever is still open (counted as
``still open``), and prints one JSON line: counts by outcome and the times of the first and
last polite end (a close frame or a clean end) and of the last end of any kind.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time

import aiohttp

from ._harness import HOST, raise_open_files

OPENS_AT_ONCE = 100
OPEN_TIMEOUT = 30.0
CLEAN, CUT, STILL_OPEN, NOT_OPENED = "clean", "cut", "still open", "not opened"


class Tally:
    def __init__(self) -> None:
        self.websockets: collections.Counter[str] = collections.Counter()
        self.streams: collections.Counter[str] = collections.Counter()
        self.polite: list[float] = []  # when each close frame or clean end came
        self.last_end = 0.0
        self.opened = 0

    def ended(self, polite: bool) -> None:
        now = time.monotonic()
        self.last_end = max(self.last_end, now)
        if polite:
            self.polite.append(now)


async def websocket(
    session: aiohttp.ClientSession, url: str, opens: asyncio.Semaphore, tally: Tally
) -> None:
    try:
        async with opens:
            ws = await session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5))
    except (aiohttp.ClientError, OSError, TimeoutError):
        tally.websockets[NOT_OPENED] += 1
        return
    tally.opened += 1
    try:
        message = await ws.receive()
        if message.type == aiohttp.WSMsgType.CLOSE:
            tally.ended(polite=True)
            tally.websockets[str(message.data)] += 1
        else:  # CLOSED or ERROR: the connection went without a close frame
            tally.ended(polite=False)
            tally.websockets[str(ws.close_code or 1006)] += 1
    except asyncio.CancelledError:
        tally.websockets[STILL_OPEN] += 1
        raise
    finally:
        await ws.close()


async def stream(
    session: aiohttp.ClientSession, url: str, opens: asyncio.Semaphore, tally: Tally
) -> None:
    try:
        async with opens:
            response = await session.get(url)
            await response.content.readuntil(b"\n\n")  # the first event: the handler runs
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        tally.streams[NOT_OPENED] += 1
        return
    tally.opened += 1
    try:
        async for _ in response.content.iter_any():
            pass
        tally.ended(polite=True)
        tally.streams[CLEAN] += 1
    except (aiohttp.ClientError, OSError):
        tally.ended(polite=False)
        tally.streams[CUT] += 1
    except asyncio.CancelledError:
        tally.streams[STILL_OPEN] += 1
        raise
    finally:
        response.close()


async def main(port: int, websockets: int, streams: int, seconds: float) -> dict[str, object]:
    began = time.monotonic()
    tally = Tally()
    opens = asyncio.Semaphore(OPENS_AT_ONCE)
    # No pool limit, no keep-alive: one connection each, closed when it ends.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, connect=OPEN_TIMEOUT, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        base = f"http://{HOST}:{port}"
        tasks = [
            *(asyncio.create_task(websocket(session, f"{base}/ws", opens, tally))
              for _ in range(websockets)),
            *(asyncio.create_task(stream(session, f"{base}/events", opens, tally))
              for _ in range(streams)),
        ]  # fmt: skip
        wanted = websockets + streams
        while tally.opened + tally.websockets[NOT_OPENED] + tally.streams[NOT_OPENED] < wanted:
            if time.monotonic() - began > seconds:
                break
            await asyncio.sleep(0.02)
        print("ready", tally.opened, flush=True)
        await asyncio.wait(tasks, timeout=max(0.0, seconds - (time.monotonic() - began)))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "opened": tally.opened,
        "websockets": dict(tally.websockets),
        "streams": dict(tally.streams),
        "first_polite": min(tally.polite, default=None),
        "last_polite": max(tally.polite, default=None),
        "last_end": tally.last_end or None,
    }


if __name__ == "__main__":
    port, ws_count, stream_count = (int(arg) for arg in sys.argv[1:4])
    bound = float(sys.argv[4])
    raise_open_files(ws_count + stream_count + 100)
    print(json.dumps(asyncio.run(main(port, ws_count, stream_count, bound))), flush=True)
