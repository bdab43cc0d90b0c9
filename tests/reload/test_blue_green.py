"""Blue/green on one host for a single-process server: the recipe of docs/reloads.md, under load.

The recipe: the serving process (blue) listens with SO_REUSEPORT; a second process (green) is
started on the same port, polled until its own /readyz answers 200 (on an abstract Unix socket
of its own, so the poll reaches green and nothing else), and only then blue gets SIGTERM. With
graceful_web, blue stops listening, answers what it accepted and drains its jobs; green serves
everything after. tests/reload/_serve.py starts each process as the recipe does:
``web.run_app(app, reuse_port=True, ...)``, and for uvicorn, which has no reuse-port option, a
socket bound with SO_REUSEPORT handed to ``uvicorn.Server.run(sockets=...)``.

The runs (tests/reload/_reuseport_runs.py, scenario ``blue_green``) are made in a network
namespace of their own, once with net.ipv4.tcp_migrate_req=1, as the recipe sets it, and once
with 0, the kernel's default; each under the load of tests/reload/_load.py with a burst of new
connections across the switch, with graceful_web and bare (GRACEFUL=0). With graceful_web no
accepted job may be lost, and with the recipe's setting no request may fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ._figures import record_figures
from ._load import KINDS
from ._netns import run_in_new_netns

RUN_TIMEOUT = 110.0  # four runs of about 5 s each, with room for a loaded machine


def failed(run: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {kind: run[kind]["failed"] for kind in KINDS if run[kind]["failed"]}


@pytest.mark.parametrize("tcp_migrate_req", [1, 0], ids=["tcp_migrate_req=1", "tcp_migrate_req=0"])
def test_blue_green_on_one_port(tmp_path: Path, tcp_migrate_req: int) -> None:
    args = ["blue_green", "--tcp-migrate-req", str(tcp_migrate_req)]
    args += ["--workdir", str(tmp_path)]
    runs = run_in_new_netns("tests.reload._reuseport_runs", args, RUN_TIMEOUT)
    for run in runs:
        record_figures({"test": "blue_green", **run})
        print(f"\n{json.dumps(run)}")
    assert {(run["server"], run["graceful_web"]) for run in runs} == {
        (server, graceful) for server in ("aiohttp", "uvicorn") for graceful in (True, False)
    }
    for run in runs:
        name = f"{run['server']} {'with graceful_web' if run['graceful_web'] else 'bare'}"
        assert run["accepted"] and run["burst"]["sent"], f"{name}: no load"
        if not run["graceful_web"]:
            # uvicorn dies of the SIGTERM it re-raises, with every job in flight: the run
            # sees a loss. (A bare aiohttp may wait for a client that gets no answer.)
            if run["server"] == "uvicorn":
                assert run["lost"] > 0, f"{name} lost no job: the run cannot see a loss"
            continue
        assert run["lost"] == 0, f"{name}: {run['lost']} accepted jobs lost"
        assert run["exit_status"] == 0, f"{name}: blue exited with {run['exit_status']}"
        if tcp_migrate_req == 1:
            # With 0, what waits in blue's queue when it closes is reset: recorded only.
            assert not failed(run), f"{name}: failed requests {failed(run)}"
