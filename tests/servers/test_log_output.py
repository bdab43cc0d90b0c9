"""graceful_web's log lines are visible by default, in the server's own format, and never twice.

Every test starts a real server process on 127.0.0.1 with an app that configures no logging
(or configures it the way a user would), posts a job, sends SIGTERM with the job in flight and
reads what the process printed. The apps are written into the test's own directory, so nothing
but the server and graceful_web decides where the lines go.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.servers import ROOT, StartServer

PY = sys.executable

ASGI_APP = '''
import asyncio
import os

from graceful_web import spawn
from graceful_web.asgi import GracefulLifespan

{configure}


async def inner(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"].rsplit(".", 1)[-1]
            await send({{"type": f"lifespan.{{kind}}.complete"}})
            if kind == "shutdown":
                return
    status = 200
    if scope["path"] == "/job":
        spawn(asyncio.sleep(float(os.environ["JOB_SECONDS"])), name="receipt-1")
        status = 202
    await send({{"type": "http.response.start", "status": status, "headers": []}})
    await send({{"type": "http.response.body", "body": b"ok\\n"}})


app = GracefulLifespan(inner)
'''

AIOHTTP_APP = '''
import asyncio
import os

from aiohttp import web

from graceful_web import spawn
from graceful_web.aiohttp import setup

{configure}


async def job(request):
    spawn(asyncio.sleep(float(os.environ["JOB_SECONDS"])), name="receipt-1")
    return web.Response(status=202, text="accepted\\n")


async def healthz(request):
    return web.Response(text="ok\\n")


def build():
    app = web.Application()
    app.router.add_get("/job", job)
    app.router.add_get("/healthz", healthz)
    setup(app)
    return app


if __name__ == "__main__":
    web.run_app(build(), host="127.0.0.1", port=int(os.environ["PORT"]))
'''

STRUCTLOG = """
import logging
import structlog

handler = logging.StreamHandler()
handler.setFormatter(structlog.stdlib.ProcessorFormatter(
    foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.ExtraAdder()],
    processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer()],
))
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)
"""

CONFIGURE = {
    "none": "",
    "basicConfig": "import logging\nlogging.basicConfig(level=logging.INFO, "
    "format='USER %(levelname)s %(name)s: %(message)s')",
    "graceful_web handler": "import logging\n_h = logging.StreamHandler()\n"
    "_h.setFormatter(logging.Formatter('USER %(levelname)s %(name)s: %(message)s'))\n"
    "logging.getLogger('graceful_web').addHandler(_h)",
    "dictConfig": "import logging.config\nlogging.config.dictConfig({'version': 1, "
    "'disable_existing_loggers': False, 'formatters': {'f': {'format': "
    "'USER %(levelname)s %(name)s: %(message)s'}}, 'handlers': {'h': {'class': "
    "'logging.StreamHandler', 'formatter': 'f'}}, 'root': {'level': 'INFO', 'handlers': ['h']}})",
    "structlog": STRUCTLOG,
}

DATE = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\]"
#: What one graceful_web line looks like in each server's own format.
SERVER_FORMAT = {
    "uvicorn": r"INFO:     graceful_web: ",
    "hypercorn": DATE + r" \[\d+\] \[INFO\] graceful_web: ",
    "gunicorn": DATE + r" \[\d+\] \[INFO\] graceful_web: ",
    "granian": r"\[INFO\] graceful_web: ",
    "stderr": r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO graceful_web: ",
    "user": r"USER INFO graceful_web: ",
}

ASGI = "log_app:app"
COMMANDS: dict[str, tuple[str, str, list[str]]] = {
    # name: (app kind, server format, command)
    "uvicorn": ("asgi", "uvicorn", [PY, "-m", "uvicorn", ASGI, "--port", "{port}"]),
    "hypercorn": (
        "asgi", "hypercorn",
        [PY, "-m", "hypercorn", ASGI, "--bind", "127.0.0.1:{port}", "--graceful-timeout", "10"],
    ),
    "granian": (
        "asgi", "granian",
        [PY, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}",
         ASGI],
    ),
    "gunicorn-uvicorn-worker": (
        "asgi", "gunicorn",
        [PY, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-b", "127.0.0.1:{port}",
         "--graceful-timeout", "30", ASGI],
    ),
    "gunicorn-aiohttp-worker": (
        "aiohttp", "gunicorn",
        [PY, "-m", "gunicorn", "log_app:build()", "--worker-class", "aiohttp.GunicornWebWorker",
         "-b", "127.0.0.1:{port}", "--graceful-timeout", "30"],
    ),
    "aiohttp-run_app": ("aiohttp", "stderr", [PY, "log_app.py"]),
}  # fmt: skip


def write_app(directory: Path, kind: str, configure: str) -> None:
    template = ASGI_APP if kind == "asgi" else AIOHTTP_APP
    (directory / "log_app.py").write_text(template.format(configure=configure))


def drain_output(
    start_server: StartServer,
    tmp_path: Path,
    command: list[str],
    job_seconds: float = 0.8,
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Start the server, post a job, SIGTERM it with the job in flight: (status, output)."""
    server = start_server(
        command,
        env={
            "PYTHONPATH": f"{tmp_path}:{ROOT}",
            "JOB_SECONDS": str(job_seconds),
            "GRACEFUL_PROGRESS_INTERVAL": "0.3",
            **(env or {}),
        },
    )
    assert httpx.get(f"{server.url}/job", timeout=5).status_code == 202
    server.send(signal.SIGTERM)
    status = server.wait_exit(timeout=30)
    return status, server.log()


def assert_once_in_format(output: str, line_format: str) -> None:
    """The drain's lines each appear once, and each in ``line_format``."""
    started = [line for line in output.splitlines() if "drain started (SIGTERM)" in line]
    finished = [line for line in output.splitlines() if "drain finished in" in line]
    progress = [line for line in output.splitlines() if "draining: 0 requests and 1 jobs" in line]
    assert len(started) == 1, output
    assert len(finished) == 1, output
    assert progress, output  # the progress lines come through as well
    for line in [*started, *progress, *finished]:
        assert re.match(line_format + r"(drain|draining)", line), (line, output)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_lines_appear_once_in_the_servers_own_format(
    name: str, start_server: StartServer, tmp_path: Path
) -> None:
    kind, line_format, command = COMMANDS[name]
    write_app(tmp_path, kind, CONFIGURE["none"])
    status, output = drain_output(start_server, tmp_path, command)
    assert status == 0, output
    assert_once_in_format(output, SERVER_FORMAT[line_format])


@pytest.mark.parametrize(
    ("server", "configure"),
    [
        ("uvicorn", "basicConfig"),
        ("uvicorn", "graceful_web handler"),
        ("uvicorn", "dictConfig"),
        ("gunicorn-aiohttp-worker", "basicConfig"),
        ("aiohttp-run_app", "basicConfig"),
    ],
)
def test_the_users_logging_is_used_and_nothing_is_printed_twice(
    server: str, configure: str, start_server: StartServer, tmp_path: Path
) -> None:
    kind, _, command = COMMANDS[server]
    write_app(tmp_path, kind, CONFIGURE[configure])
    status, output = drain_output(start_server, tmp_path, command)
    assert status == 0, output
    assert_once_in_format(output, SERVER_FORMAT["user"])


def test_uvicorn_log_config_formats_the_lines(start_server: StartServer, tmp_path: Path) -> None:
    """uvicorn --log-config with a format of the user's own for uvicorn's loggers."""
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"mine": {"format": "MINE %(levelname)s | %(message)s"}},
        "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "mine"}},
        "loggers": {"uvicorn": {"handlers": ["out"], "level": "INFO", "propagate": False}},
    }
    (tmp_path / "logging.json").write_text(json.dumps(config))
    write_app(tmp_path, "asgi", CONFIGURE["none"])
    command = [*COMMANDS["uvicorn"][2], "--log-config", str(tmp_path / "logging.json")]
    status, output = drain_output(start_server, tmp_path, command)
    assert status == 0, output
    assert "MINE INFO | Application startup complete." in output  # uvicorn's own, in that format
    assert_once_in_format(output, r"MINE INFO \| graceful_web: ")


def test_structlog_renders_the_lines_once_as_json(
    start_server: StartServer, tmp_path: Path
) -> None:
    write_app(tmp_path, "asgi", CONFIGURE["structlog"])
    status, output = drain_output(start_server, tmp_path, COMMANDS["uvicorn"][2])
    assert status == 0, output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    started = [r for r in records if r.get("event", "").startswith("drain started")]
    finished = [r for r in records if r.get("event", "").startswith("drain finished")]
    assert len(started) == 1 and len(finished) == 1, output
    assert started[0]["graceful_jobs"] == 1  # the extra fields came through as fields
    assert "drain started" not in output.replace(json.dumps(started[0]), "")


@pytest.mark.parametrize(
    ("server", "warning_format"),
    [
        ("uvicorn", r"WARNING:  graceful_web: "),
        ("aiohttp-run_app", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING graceful_web: "),
    ],
)
def test_warnings_about_abandoned_work_appear_once(
    server: str, warning_format: str, start_server: StartServer, tmp_path: Path
) -> None:
    """Without the handler, logging.lastResort would print the warnings bare; with it they come
    out once, in the server's format."""
    kind, _, command = COMMANDS[server]
    write_app(tmp_path, kind, CONFIGURE["none"])
    status, output = drain_output(
        start_server, tmp_path, command, job_seconds=30, env={"GRACEFUL_DRAIN_TIMEOUT": "1"}
    )
    assert status == 75, output
    abandoned = [line for line in output.splitlines() if "abandoned job 'receipt-1'" in line]
    assert len(abandoned) == 1, output
    assert re.match(warning_format + "abandoned job", abandoned[0]), output


def test_a_quieter_server_log_level_quiets_the_info_lines(
    start_server: StartServer, tmp_path: Path
) -> None:
    write_app(tmp_path, "asgi", CONFIGURE["none"])
    command = [*COMMANDS["uvicorn"][2], "--log-level", "warning"]
    status, output = drain_output(start_server, tmp_path, command)
    assert status == 0, output
    assert "drain started" not in output and "Application startup" not in output
