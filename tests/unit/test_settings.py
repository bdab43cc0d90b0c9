"""Every entry point takes the drain's settings by keyword, and refuses one it does not take
with a message naming those it does."""

from __future__ import annotations

import pytest
from aiohttp import web

import graceful_web
from graceful_web.aiohttp import _STATE, setup
from graceful_web.asgi import GracefulLifespan


async def asgi_app(scope: object, receive: object, send: object) -> None:
    pass


def test_a_misspelt_setting_is_refused_by_setup_naming_the_settings() -> None:
    with pytest.raises(TypeError, match=r"setup\(\) got .* 'drain_timout'; its settings are .*"):
        setup(web.Application(), drain_timout=5)  # type: ignore[call-arg]


def test_gracefullifespan_takes_long_lived_settings_and_refuses_what_it_does_not_take() -> None:
    wrapped = GracefulLifespan(
        asgi_app, drain_timeout=4, long_lived_grace=1, websocket_close_code=1001
    )
    assert (wrapped.config.long_lived_grace, wrapped.config.websocket_close_code) == (1.0, 1001)
    with pytest.raises(TypeError, match=r"'pre_stop'; its settings are .*pre_stop_delay"):
        GracefulLifespan(asgi_app, pre_stop=1)  # type: ignore[call-arg]


def test_run_refuses_a_server_setting_it_has_no_use_for() -> None:
    async def main() -> None:
        pass

    coro = main()
    with pytest.raises(TypeError, match=r"run\(\) got .* 'pre_stop_delay'"):
        graceful_web.run(coro, pre_stop_delay=1)  # type: ignore[call-arg]


def test_setup_settings_reach_the_drain() -> None:
    app = web.Application()
    setup(app, drain_timeout=7, pre_stop_delay=1, readiness_path=None)
    state = app[_STATE]
    assert (state.config.drain_timeout, state.config.pre_stop_delay) == (7.0, 1.0)
    assert state.config.readiness_path is None
