"""SO_REUSEPORT listeners at a reload, with net.ipv4.tcp_migrate_req 0 and 1.

When several sockets listen on one port with SO_REUSEPORT, each has its own accept queue. One
that closes takes its queue with it: the kernel resets those connections, unless
``tcp_migrate_req`` is 1 and it moves them to another socket of the port. Measured, each in a
network namespace made for the run with the sysctl set there only (tests/reload/_netns.py), with
graceful_web and bare (GRACEFUL=0), under steady load (tests/reload/_load.py):

- granian ``--workers 2`` (each worker binds the port itself) reloaded with SIGHUP while bursts
  of new connections run across the whole reload;
- two ``web.run_app(app, reuse_port=True)`` processes on one port, one of them stopped with
  SIGTERM during a burst.

Counted: every request's fate by kind and reason (resets and refusals of new connections among
them), the accepted jobs lost, and the kernel's own counts of the namespace (requests migrated
or not, sockets closed with a request unread). With graceful_web no accepted job may be lost;
the rest is recorded (GRACEFUL_RELOAD_FIGURES), not asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ._figures import record_figures
from ._netns import run_in_new_netns

RUN_TIMEOUT = 110.0  # four runs of 4 to 10 s each, with room for a loaded machine


@pytest.mark.parametrize("tcp_migrate_req", [0, 1], ids=["tcp_migrate_req=0", "tcp_migrate_req=1"])
def test_reuse_port_listeners_at_a_reload(tmp_path: Path, tcp_migrate_req: int) -> None:
    args = ["granian", "pair", "--tcp-migrate-req", str(tcp_migrate_req)]
    args += ["--workdir", str(tmp_path)]
    runs = run_in_new_netns("tests.reload._reuseport_runs", args, RUN_TIMEOUT)
    for run in runs:
        record_figures({"test": "reuseport", **run})
        print(f"\n{json.dumps(run)}")
    assert {(run["scenario"], run["graceful_web"]) for run in runs} == {
        (scenario, graceful) for scenario in ("granian", "pair") for graceful in (True, False)
    }
    for run in runs:
        name = f"{run['server']} {'with graceful_web' if run['graceful_web'] else 'bare'}"
        assert run["accepted"] and run["burst"]["sent"], f"{name}: no load"
        if run["graceful_web"]:
            assert run["lost"] == 0, f"{name}: {run['lost']} accepted jobs lost"
            assert run["exit_status"] == 0, f"{name}: exit status {run['exit_status']}"
