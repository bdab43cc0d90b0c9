"""Long-lived connections in process: which streams are reconnectable, and how the drain ends
what is open (the real servers and clients are in tests/servers)."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest

from graceful_web import mark_stream
from graceful_web._long_lived import WEBSOCKETS, LongLived, reconnectable

pytestmark = pytest.mark.anyio


def test_an_event_stream_is_reconnectable_and_anything_else_finishing_unless_marked() -> None:
    assert reconnectable("text/event-stream; charset=utf-8")
    assert not reconnectable("application/x-ndjson")


async def test_a_mark_in_the_handler_decides_either_way() -> None:
    mark_stream("finishing")
    assert not reconnectable("text/event-stream")
    mark_stream("reconnectable")
    assert reconnectable("application/x-ndjson")


def test_an_unknown_mark_is_refused_naming_the_two() -> None:
    with pytest.raises(ValueError, match=r"'finishing' .* or 'reconnectable'"):
        mark_stream("endless")  # type: ignore[arg-type]


async def test_every_end_is_sent_before_any_handler_is_waited_for() -> None:
    long_lived = LongLived()
    happened: list[str] = []

    def connection(name: str) -> object:
        async def end() -> Awaitable[None]:
            happened.append(f"sent {name}")
            long_lived.ended("websocket")

            async def handler_returns() -> None:
                happened.append(f"returned {name}")

            return handler_returns()

        return end

    long_lived.add("a", "websocket", connection("a"))  # type: ignore[arg-type]
    long_lived.add("b", "websocket", connection("b"))  # type: ignore[arg-type]
    await long_lived.end_all(on_sent=lambda: happened.append("server told"))
    assert happened[:3] == ["sent a", "sent b", "server told"]
    assert sorted(happened[3:]) == ["returned a", "returned b"]
    assert long_lived.websockets_closed == 2


async def test_what_opens_after_its_kind_was_ended_is_refused_at_once() -> None:
    long_lived = LongLived()

    async def end() -> None:
        return None

    await long_lived.end_all(WEBSOCKETS)
    assert not long_lived.add("late", "websocket", end)
    assert long_lived.add("feed", "stream", end)  # streams end later, after their grace
    assert long_lived.any_open()


async def test_a_finder_is_asked_only_when_the_time_comes() -> None:
    long_lived = LongLived()
    asked: list[str] = []

    async def end() -> None:
        asked.append("ended")

    def finder() -> list[tuple[object, str, object]]:
        asked.append("asked")
        return [("ws", "websocket", end)]

    long_lived.find_with(finder)  # type: ignore[arg-type]
    assert long_lived.any_open() and asked == []
    await long_lived.end_all()
    assert asked == ["asked", "ended"]
    assert not long_lived.any_open()
    await long_lived.wait_sent()  # returns at once: every kind was sent
