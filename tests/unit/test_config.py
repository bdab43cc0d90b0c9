"""Config: the deadline and every setting checked at setup, saying what to do; signal names."""

from __future__ import annotations

import signal

import pytest

from graceful_web._config import Config, parse_signals


def test_negative_deadline_is_refused_at_setup() -> None:
    with pytest.raises(ValueError, match="drain_timeout must be more than zero seconds, got -1"):
        Config.build(drain_timeout=-1)


def test_pre_stop_delay_must_fit_inside_the_deadline() -> None:
    with pytest.raises(ValueError, match="must be shorter than drain_timeout"):
        Config.build(drain_timeout=5, pre_stop_delay=5)


def test_the_idle_connection_grace_is_1_s_or_a_quarter_of_what_the_deadline_leaves() -> None:
    assert Config.build(drain_timeout=25).idle_connection_grace == 1.0
    assert Config.build(drain_timeout=3, pre_stop_delay=1).idle_connection_grace == 0.5
    assert Config.build(drain_timeout=3, idle_connection_grace=0).idle_connection_grace == 0.0


def test_unknown_signal_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown signal name 'SIGTERMINATE'"):
        parse_signals(["SIGTERMINATE"])


def test_signal_names_numbers_and_short_names_are_accepted() -> None:
    assert parse_signals(["term", 2, signal.SIGHUP]) == (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
    )


def test_deadline_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRACEFUL_DRAIN_TIMEOUT", "7.5")
    assert Config.build().drain_timeout == 7.5
    assert Config.build(drain_timeout=3).drain_timeout == 3.0  # code wins over environment


def test_readiness_path_must_be_a_path() -> None:
    with pytest.raises(ValueError, match="readiness_path must be a path starting with '/'"):
        Config.build(readiness_path="readyz")
