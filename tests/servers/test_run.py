"""graceful_web.run(): a plain asyncio worker in a real process, real signals, what it wrote."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import pytest

import graceful_web
from tests.support.polling import wait_until
from tests.support.servers import ROOT, Server, StartServer

WORKER = "tests.apps.worker_app"
READY = "worker ready"
PROTECTED = ["protected-1", "protected-2", "protected-3"]
CANCELLED_UNPROTECTED = [f"cancelled:unprotected-{n}" for n in (1, 2, 3)]

SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])


def start_worker(start_server: StartServer, **env: str) -> Server:
    worker = start_server(WORKER, env={"JOB_MS": "1500", **env}, ready_path=None, name="worker")
    worker.wait_for_log(READY, timeout=20)
    return worker


def cancelled_unprotected(worker: Server) -> list[str]:
    return sorted(line for line in worker.events() if line.startswith("cancelled:unprotected"))


# -- the classic scenario -------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@SIGNALS
def test_protected_jobs_finish_and_unprotected_tasks_are_cancelled(
    start_server: StartServer, sig: int, loop: str
) -> None:
    # 3 protected and 3 unprotected tasks of 10 s; the signal comes 1 s into their work.
    worker = start_worker(start_server, JOB_MS="10000", CHECKPOINT_MS="1000", LOOP=loop)
    wait_until(
        lambda: len([line for line in worker.events() if line.startswith("running:")]) == 6,
        20,
        "all six tasks 1 s into their work",
    )
    worker.send(sig)
    # The unprotected ones are cancelled at the signal, while the protected ones go on.
    wait_until(lambda: cancelled_unprotected(worker) == CANCELLED_UNPROTECTED, 10, "cancels")
    assert worker.jobs() == []
    assert worker.proc.poll() is None, "the protected jobs have 9 s of work left"
    assert worker.wait_exit(timeout=40) == 0
    assert sorted(worker.jobs()) == PROTECTED
    assert cancelled_unprotected(worker) == CANCELLED_UNPROTECTED
    assert "main-cancelled" in worker.events()
    log = worker.log()
    assert f"drain started ({signal.Signals(sig).name}): 0 requests and 3 jobs in flight" in log
    assert "drained 0 requests and 3 jobs (0 failed), refused 0 jobs, abandoned 0" in log


def test_deadline_abandons_the_jobs_names_them_and_exits_75(start_server: StartServer) -> None:
    worker = start_worker(start_server, JOB_MS="60000", GRACEFUL_DRAIN_TIMEOUT="1")
    worker.send(signal.SIGTERM)
    assert worker.wait_exit(timeout=15) == 75
    assert worker.jobs() == []
    log = worker.log()
    for name in PROTECTED:
        assert f"abandoned job '{name}' after" in log
    assert "abandoned 3" in log
    # Abandoned jobs are cancelled, so their own clean-up runs.
    assert {f"cancelled:{name}" for name in PROTECTED} <= set(worker.events())


@SIGNALS
def test_second_signal_cancels_everything_and_exits_128_plus_signal(
    start_server: StartServer, sig: int
) -> None:
    worker = start_worker(start_server, JOB_MS="60000")
    worker.send(sig)
    worker.wait_for_log(f"drain started ({signal.Signals(sig).name})")
    worker.send(sig)
    assert worker.wait_exit(timeout=10) == 128 + sig
    assert worker.jobs() == []
    log = worker.log()
    assert f"second signal ({signal.Signals(sig).name})" in log
    assert "abandoned job 'protected-1'" in log


def test_job_that_swallows_cancellation_meets_the_hard_exit(start_server: StartServer) -> None:
    worker = start_worker(start_server, MAIN="stubborn", GRACEFUL_DRAIN_TIMEOUT="1")
    worker.send(signal.SIGTERM)
    assert worker.wait_exit(timeout=15) == graceful_web.EXIT_HARD
    assert "stubborn-ignored-cancel" in worker.events()
    assert "hard exit with status 70" in worker.log()


# -- main: returning, awaiting a job, raising -------------------------------------------------


def test_when_main_returns_jobs_are_drained_and_run_returns_its_result(
    start_server: StartServer,
) -> None:
    worker = start_worker(start_server, MAIN="return")
    assert worker.wait_exit() == 0
    assert sorted(worker.jobs()) == PROTECTED
    assert cancelled_unprotected(worker) == CANCELLED_UNPROTECTED
    log = worker.log()
    assert "drain started (main returned)" in log
    assert "run returned 'main result'" in log


def test_main_awaiting_a_protected_job_is_cancelled_once_the_job_is_done(
    start_server: StartServer,
) -> None:
    worker = start_worker(start_server, MAIN="await-job")
    worker.send(signal.SIGTERM)
    assert worker.wait_exit() == 0
    assert "awaited" in worker.jobs()
    events = worker.events()
    assert "cancelled:awaited" not in events
    assert events.index("main-resumed") < events.index("main-cancelled")


def test_tasks_a_protected_job_starts_are_drained_with_it(start_server: StartServer) -> None:
    worker = start_worker(start_server, MAIN="fan-out")
    worker.send(signal.SIGINT)
    assert worker.wait_exit() == 0
    assert {"child-1", "child-2", "fan-out"} <= set(worker.jobs())
    assert not [line for line in worker.events() if line.startswith("cancelled:child")]


def test_exception_from_main_is_raised_after_the_drain(start_server: StartServer) -> None:
    worker = start_worker(start_server, MAIN="raise")
    assert worker.wait_exit() == 1
    assert sorted(worker.jobs()) == PROTECTED
    log = worker.log()
    assert "drain started (main raised RuntimeError)" in log
    assert log.index("drain finished") < log.index("RuntimeError: main failed")


def test_sys_exit_in_main_keeps_its_status_and_the_jobs(start_server: StartServer) -> None:
    worker = start_worker(start_server, MAIN="exit")
    assert worker.wait_exit() == 3
    assert sorted(worker.jobs()) == PROTECTED


# -- the README example runs as printed ------------------------------------------------------


def readme_example() -> tuple[str, list[str], int]:
    """The code, the printed lines and the exit status shown in "Beyond web servers" (the
    drain's own log lines, with their times, are left out of the comparison)."""
    section = (ROOT / "docs" / "beyond-web-servers.md").read_text()
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shown = re.search(r"```text\n(.*?)```", section, re.S)
    assert code is not None and shown is not None
    lines = shown.group(1).splitlines()
    status = int(lines[lines.index("$ echo $?") + 1])
    printed = [
        line
        for line in lines
        if not line.startswith(("$", "^C")) and line != str(status) and "graceful_web:" not in line
    ]
    return code.group(1), printed, status


@SIGNALS
def test_readme_example_runs_as_printed(
    start_server: StartServer, tmp_path: Path, sig: int
) -> None:
    # The README shows Ctrl-C; its first line promises the same for SIGTERM.
    code, printed, status = readme_example()
    script = tmp_path / "worker.py"
    script.write_text(code)
    worker = start_server([sys.executable, str(script)], ready_path=None, name="readme")
    worker.wait_for_log(printed[0], timeout=20)
    worker.send(sig)
    assert worker.wait_exit() == status
    output = [line for line in worker.log().splitlines() if "graceful_web:" not in line]
    assert sorted(output) == sorted(printed)
