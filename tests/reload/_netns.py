"""Runs in a network namespace of their own, with net.ipv4.tcp_migrate_req set there only.

``tcp_migrate_req`` is a sysctl of each network namespace: a run sets it in a namespace made
for it (``unshare --net``), whose only interface is its own loopback, and never touches the
machine's. The test calls :func:`run_in_new_netns` with a module; that module, now inside,
calls :func:`prepare` first, then prints one JSON line per result on stdout.

The run is also PID 1 of a PID namespace of its own (``--pid --fork --mount-proc``): when it
ends, however it ends, the kernel kills every process it started, servers and their workers
included, and the network namespace goes with the last of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.servers import ROOT

TCP_MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


HOST_NETNS_ENV = "GRACEFUL_HOST_NETNS"


def netns() -> str:
    return os.readlink("/proc/self/ns/net")


def prepare(tcp_migrate_req: int) -> None:
    """Inside the namespace: loopback up, and the sysctl set for this namespace alone."""
    if netns() == os.environ.get(HOST_NETNS_ENV, netns()):
        raise RuntimeError("refusing to set net.ipv4.tcp_migrate_req outside a namespace")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    TCP_MIGRATE_REQ.write_text(f"{tcp_migrate_req}\n")
    if int(TCP_MIGRATE_REQ.read_text()) != tcp_migrate_req:
        raise RuntimeError(f"net.ipv4.tcp_migrate_req did not take {tcp_migrate_req}")


def emit(result: dict[str, object]) -> None:
    print(json.dumps(result, sort_keys=True), flush=True)


def run_in_new_netns(module: str, args: list[str], timeout: float) -> list[dict[str, Any]]:
    """``python -m module args`` in a new network namespace; the JSON lines it printed."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to make a network namespace"
    # As root the namespace is made directly; otherwise in a user namespace of our own, where
    # this user is root and may set the namespace's sysctls.
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    command = [unshare, "--net", "--pid", "--fork", "--mount-proc", "--kill-child", *user,
               "--", sys.executable, "-m", module, *args]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        HOST_NETNS_ENV: netns(),  # so that inside, prepare() knows it is elsewhere
    }
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=10)
        raise AssertionError(
            f"{module} in its namespace still running after {timeout} s:\n{stderr.decode()}"
        ) from None
    finally:
        # unshare and the run (PID 1 inside): the kernel then ends the rest of the namespace.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, (
        f"{' '.join(command)} exited with {proc.returncode}:\n{stderr.decode()}\n"
        f"what it printed before:\n{stdout.decode()}"
    )
    return [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
