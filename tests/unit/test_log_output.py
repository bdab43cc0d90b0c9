"""graceful_web's log handler in process: installed once, used only when nothing else is."""

from __future__ import annotations

import logging
import re
import sys

import pytest

from graceful_web import _log_output


def test_the_handler_is_installed_once_and_the_level_lets_info_through() -> None:
    logger = logging.getLogger("graceful_web")
    _log_output.install()  # a second install (importlib.reload) adds nothing
    ours = [h for h in logger.handlers if isinstance(h, _log_output.ServerLogHandler)]
    assert len(ours) == 1
    assert logger.isEnabledFor(logging.INFO)


def test_with_no_logging_configured_a_record_goes_to_stderr_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(logging.root, "handlers", [])  # pytest's own capture handlers
    for name in _log_output.SERVER_LOGGERS:
        monkeypatch.delitem(logging.Logger.manager.loggerDict, name, raising=False)
    logging.getLogger("graceful_web").warning("abandoned job %r after %.1f s", "receipt-1", 1.0)
    err = capsys.readouterr().err
    assert err.count("abandoned job 'receipt-1' after 1.0 s") == 1, err
    assert re.search(r" WARNING graceful_web: abandoned job 'receipt-1'", err), err


def test_a_handler_on_the_root_means_the_user_configured_logging(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stream_handler = logging.StreamHandler(sys.stdout)
    monkeypatch.setattr(logging.root, "handlers", [stream_handler])
    logging.getLogger("graceful_web").info("drain started (SIGTERM): test")
    captured = capsys.readouterr()
    assert captured.out.count("drain started (SIGTERM): test") == 1
    assert "drain started" not in captured.err


def test_format_with_the_logger_name_gets_no_prefix() -> None:
    record = logging.LogRecord("graceful_web", logging.INFO, __file__, 1, "drain %s", ("x",), None)
    named = logging.StreamHandler()
    named.setFormatter(logging.Formatter("%(name)s %(message)s"))
    leveled = logging.StreamHandler()
    leveled.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    assert _log_output._named(record, named) is record
    assert _log_output._named(record, leveled).getMessage() == "graceful_web: drain x"
    # a message that names graceful_web itself is not prefixed twice
    record.msg, record.args = "graceful_web: cannot handle SIGHUP here", None
    assert _log_output._named(record, leveled) is record
