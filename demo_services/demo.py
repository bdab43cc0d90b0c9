"""``make demo``: a live drain of every demo service, drawn as a timeline.

Each service is started on a free 127.0.0.1 port and sent slow requests and jobs. Once they are
in flight it gets SIGTERM; new connections and new jobs are tried while it drains. The timeline
shows every request and job, the signal, the exit and what was refused; the report says what
finished (job records read from JOBS_FILE), what was lost, and how long signal -> exit took.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

#: (label, module) of every demo service: each is started and drained side by side.
SERVICES = (
    ("aiohttp", "demo_services.aiohttp_service"),
    ("asgi", "demo_services.asgi_service"),
)
REQUEST_MS = (800, 1800, 2800)
JOB_MS = (1300, 2300, 3300)
#: When new connections and new jobs are tried, in seconds after the signal.
PROBE_AFTER = (0.15, 1.0, 2.0, 2.8)
#: The signal comes this long after the traffic started (or later, once all is in flight).
SIGNAL_AFTER = 0.5
DRAIN_TIMEOUT = 10.0  # far beyond the longest job: nothing should be abandoned
START_TIMEOUT = 20.0
EXIT_TIMEOUT = DRAIN_TIMEOUT + 5.0


@dataclass
class Row:
    """One request or job: when it was sent, when it was seen finished, and how."""

    label: str
    kind: Literal["request", "job"]
    start: float
    end: float | None = None
    outcome: str = "lost"
    ok: bool = False
    job_id: str | None = None


@dataclass
class Probe:
    """A new connection or a new job tried after the signal."""

    what: Literal["connection", "job"]
    at: float
    refused: bool
    outcome: str
    job_id: str | None = None


@dataclass
class Run:
    name: str
    module: str
    rows: list[Row] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    t0: float = 0.0
    signal_at: float | None = None
    exit_at: float | None = None
    exit_code: int | None = None
    pid: int | None = None
    log: str = ""
    error: str | None = None

    @property
    def lost(self) -> int:
        return sum(not row.ok for row in self.rows)

    @property
    def drain_seconds(self) -> float | None:
        if self.signal_at is None or self.exit_at is None:
            return None
        return self.exit_at - self.signal_at


# -- driving one service -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def call(port: int, method: str, path: str, timeout: float = 30.0) -> tuple[int, str]:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def in_flight(metrics_port: int) -> tuple[int, int] | None:
    """(requests, jobs) in flight from the service's metrics, or None when it has none."""
    try:
        _, text = call(metrics_port, "GET", "/metrics", timeout=2)
    except OSError:
        return None
    found = dict(re.findall(r"^graceful_(requests|jobs)_in_flight (\S+)$", text, re.MULTILINE))
    if len(found) != 2:
        return None
    return int(float(found["requests"])), int(float(found["jobs"]))


def drive(name: str, module: str, workdir: Path, children: list[subprocess.Popen[bytes]]) -> Run:
    run = Run(name, module)
    port, metrics_port = free_port(), free_port()
    jobs_file = workdir / f"{name}-jobs.log"
    log_path = workdir / f"{name}.log"
    env = {
        **os.environ,
        "PORT": str(port),
        "JOBS_FILE": str(jobs_file),
        "METRICS_PORT": str(metrics_port),
        "GRACEFUL_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    children.append(proc)
    run.pid = proc.pid
    try:
        _exercise(run, proc, port, metrics_port, jobs_file)
    finally:
        run.log = log_path.read_text(errors="replace")
    return run


def _ready(proc: subprocess.Popen[bytes], port: int) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"exited with status {proc.returncode} before it was ready")
    try:
        return call(port, "GET", "/healthz", timeout=1)[0] == 200
    except OSError:
        return False


def _exercise(
    run: Run, proc: subprocess.Popen[bytes], port: int, metrics_port: int, jobs_file: Path
) -> None:
    try:
        if not wait_until(lambda: _ready(proc, port), START_TIMEOUT):
            raise RuntimeError(f"not ready after {START_TIMEOUT:.0f} s")
    except RuntimeError as exc:
        run.error = str(exc)
        return
    run.t0 = time.monotonic()
    senders = [_send_request(run, port, ms) for ms in REQUEST_MS]
    jobs = [_post_job(run, port, f"{run.name}-job{n}", ms) for n, ms in enumerate(JOB_MS, 1)]
    expected = (len(REQUEST_MS), sum(row.outcome == "accepted" for row in jobs))
    # Signal only once the service has every request in hand: a request still in the
    # listen backlog when the listener closes would be refused, not drained.
    if in_flight(metrics_port) is None:
        time.sleep(0.5)
    elif not wait_until(lambda: in_flight(metrics_port) == expected, 5.0):
        run.error = f"in flight never reached {expected}: {in_flight(metrics_port)}"
    time.sleep(max(0.0, run.t0 + SIGNAL_AFTER - time.monotonic()))

    exited = threading.Event()
    watcher = threading.Thread(target=_watch_jobs, args=(run, jobs, jobs_file, exited))
    watcher.start()
    run.signal_at = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    waiter = threading.Thread(target=_wait_exit, args=(run, proc, exited))
    waiter.start()
    for offset, n in zip(PROBE_AFTER, range(1, len(PROBE_AFTER) + 1), strict=True):
        if exited.wait(max(0.0, run.signal_at + offset - time.monotonic())):
            break
        _probe(run, port, "connection", "/fast")
        _probe(run, port, "job", f"/jobs?ms=0&id={run.name}-late{n}")
    waiter.join(EXIT_TIMEOUT)
    if not exited.is_set():
        run.error = f"still running {EXIT_TIMEOUT:.0f} s after the signal"
        exited.set()
    watcher.join(5)
    for sender in senders:
        sender.join(5)
    _read_jobs(run, jobs, jobs_file)


def _send_request(run: Run, port: int, ms: int) -> threading.Thread:
    row = Row(f"GET /slow {ms / 1000:.1f}s", "request", time.monotonic())
    run.rows.append(row)

    def send() -> None:
        try:
            status, _ = call(port, "GET", f"/slow?ms={ms}")
        except OSError as exc:
            row.outcome = type(exc).__name__
        else:
            row.outcome, row.ok = str(status), status == 200
        row.end = time.monotonic()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _post_job(run: Run, port: int, job_id: str, ms: int) -> Row:
    row = Row(f"POST /jobs {ms / 1000:.1f}s", "job", time.monotonic())
    run.rows.append(row)
    try:
        status, _ = call(port, "POST", f"/jobs?ms={ms}&id={job_id}", timeout=10)
    except OSError as exc:
        row.outcome, row.ok = f"not sent: {type(exc).__name__}", True
        return row
    row.outcome = "accepted" if status == 202 else f"answered {status}"
    row.ok = status != 202  # refused up front: nothing was promised, so nothing can be lost
    row.job_id = job_id
    return row


def _watch_jobs(run: Run, jobs: list[Row], jobs_file: Path, exited: threading.Event) -> None:
    while not exited.is_set():
        _read_jobs(run, jobs, jobs_file)
        time.sleep(0.02)


def _read_jobs(run: Run, jobs: list[Row], jobs_file: Path) -> None:
    try:
        recorded = set(jobs_file.read_text().splitlines())
    except FileNotFoundError:
        recorded = set()
    now = time.monotonic()
    for row in jobs:
        if row.job_id in recorded and row.end is None:
            row.end, row.outcome, row.ok = now, "recorded", True
    for probe in run.probes:
        if probe.job_id in recorded and probe.outcome == "accepted":
            probe.outcome = "recorded"


def _wait_exit(run: Run, proc: subprocess.Popen[bytes], exited: threading.Event) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        run.exit_code = proc.wait(timeout=EXIT_TIMEOUT)
        run.exit_at = time.monotonic()
    exited.set()


def _probe(run: Run, port: int, what: Literal["connection", "job"], path: str) -> None:
    at = time.monotonic()
    method = "GET" if what == "connection" else "POST"
    try:
        status, _ = call(port, method, path, timeout=5)
    except ConnectionRefusedError:
        probe = Probe(what, at, True, "refused")
    except OSError as exc:
        probe = Probe(what, at, True, type(exc).__name__)
    else:
        refused = status == 503
        probe = Probe(what, at, refused, str(status) if refused else "accepted")
        if what == "job" and not refused:
            probe.job_id = path.rsplit("id=", 1)[-1]
    run.probes.append(probe)


# -- drawing ------------------------------------------------------------------------------

LABEL = 16
OUTCOME = 11


@dataclass(frozen=True)
class Glyphs:
    before: str
    drained: str
    signal: str
    exit: str
    refused: str
    accepted: str
    lost: str
    arrow: str


UNICODE = Glyphs("─", "━", "│", "┊", "✗", "✓", "✗", "→")
ASCII = Glyphs("-", "=", "|", ":", "x", "+", "X", "->")


def glyphs_for(console: Console) -> Glyphs:
    return UNICODE if console.encoding.lower().startswith("utf") else ASCII


def picture(run: Run, width: int, g: Glyphs) -> list[Text]:
    """The timeline of one run: a row per request and job, the probes, signal and exit."""
    bar = max(20, width - LABEL - OUTCOME - 3)
    assert run.signal_at is not None
    ends = [row.end for row in run.rows if row.end is not None]
    last = max([run.exit_at or time.monotonic(), *ends, *(p.at for p in run.probes)])
    span = max(last - run.t0, 0.5) * 1.02

    def col(at: float) -> int:
        return min(bar - 1, max(0, round((at - run.t0) / span * (bar - 1))))

    signal_col = col(run.signal_at)
    exit_col = col(run.exit_at) if run.exit_at is not None else None
    lines: list[Text] = []

    axis = [" "] * bar
    for second in range(int(span) + 1):
        mark = f"{second}s"
        at = col(run.t0 + second)
        if at + len(mark) <= bar and all(c == " " for c in axis[max(0, at - 1) : at + len(mark)]):
            axis[at : at + len(mark)] = mark
    lines.append(Text(" " * (LABEL + 1) + "".join(axis), style="dim"))

    def cells() -> list[tuple[str, str]]:
        row = [(" ", "")] * bar
        row[signal_col] = (g.signal, "yellow")
        if exit_col is not None:
            row[exit_col] = (g.exit, "magenta")
        return row

    def emit(label: str, row: list[tuple[str, str]], outcome: str, style: str) -> None:
        text = Text(f" {label:<{LABEL}}"[: LABEL + 1])
        for char, cell_style in row:
            text.append(char, style=cell_style)
        text.append(f" {outcome:<{OUTCOME}}"[: OUTCOME + 1], style=style)
        lines.append(text)

    for item in run.rows:
        row = cells()
        colour = "cyan" if item.kind == "request" else "green"
        start = col(item.start)
        end = col(item.end) if item.end is not None else (exit_col or bar - 1)
        for at in range(start, end + 1):
            drained = at > signal_col
            row[at] = (g.drained if drained else g.before, colour if drained else f"dim {colour}")
        if not item.ok:
            row[end] = (g.lost, "bold red")
        outcome_style = "bold" if item.ok else "bold red"
        emit(item.label, row, item.outcome if item.ok else "LOST", outcome_style)

    for what, label in (("connection", "new connection"), ("job", "new job")):
        probes = [p for p in run.probes if p.what == what]
        if not probes:
            continue
        row = cells()
        for p in probes:
            row[col(p.at)] = (g.refused, "red") if p.refused else (g.accepted, "green")
        refused = sum(p.refused for p in probes)
        emit(label, row, f"{refused}/{len(probes)} refused", "red" if refused else "")

    marks = [" "] * (bar + OUTCOME + 1)
    signal_label = "^ SIGTERM"
    marks[signal_col : signal_col + len(signal_label)] = signal_label
    if exit_col is not None:
        exit_label = f"^ exit {run.exit_code}"
        at = max(exit_col, signal_col + len(signal_label) + 1)
        marks[at : at + len(exit_label)] = exit_label
    lines.append(Text(" " * (LABEL + 1) + "".join(marks).rstrip(), style="yellow"))
    return lines


def legend(g: Glyphs) -> Text:
    text = Text(" ")
    for glyph, style, meaning in (
        (g.before, "dim cyan", "before the signal"),
        (g.drained, "cyan", "drained"),
        (g.signal, "yellow", "SIGTERM"),
        (g.exit, "magenta", "exit"),
        (g.refused, "red", "refused"),
    ):
        text.append(glyph, style=style)
        text.append(f" {meaning}   ")
    return text


def report_lines(run: Run, g: Glyphs) -> list[Text]:
    requests = [r for r in run.rows if r.kind == "request"]
    jobs = [r for r in run.rows if r.kind == "job"]
    accepted = [r for r in jobs if r.outcome in ("accepted", "recorded", "lost")]
    recorded = [r for r in jobs if r.outcome == "recorded"]
    conns = [p for p in run.probes if p.what == "connection"]
    late = [p for p in run.probes if p.what == "job"]
    lines = [
        f" requests  {len(requests)} sent, {sum(r.ok for r in requests)} answered 200",
        f" jobs      {len(accepted)} accepted (202), {len(recorded)} recorded in JOBS_FILE",
        f" refused   after the signal: {sum(p.refused for p in conns)} of {len(conns)} new "
        f"connections, {sum(p.refused for p in late)} of {len(late)} new jobs",
    ]
    drain = run.drain_seconds
    timing = f"{drain:.2f} s" if drain is not None else "did not exit"
    lines.append(f" took      signal {g.arrow} exit {timing}, exit status {run.exit_code}")
    lost = run.lost
    texts = [Text(line) for line in lines]
    texts.append(Text(f" lost      {lost}", style="bold green" if lost == 0 else "bold red"))
    return texts


def service_log(run: Run) -> list[str]:
    """The graceful_web lines of the service's log, without their timestamps."""
    found = []
    for line in run.log.splitlines():
        match = re.search(r"\b(INFO|WARNING|ERROR|CRITICAL) graceful_web: (.*)$", line)
        if match:
            found.append(f"{match.group(1)} {match.group(2)}")
    return found


_GLUE = "\u00a0"  # a space textwrap does not break at


def fold_log_line(entry: str, width: int) -> list[str]:
    """Fold a log line to ``width``, continuation lines indented, never between a number and
    its unit nor inside a quoted name, so "(2.5 s)" and "'GET /slow'" stay whole."""
    glued = re.sub(r"(\d) (s|ms)\b", rf"\1{_GLUE}\2", entry)
    glued = re.sub(r"'[^']*'", lambda quoted: quoted.group(0).replace(" ", _GLUE), glued)
    lines = textwrap.wrap(glued, width=width, subsequent_indent="  ", break_on_hyphens=False)
    return [line.replace(_GLUE, " ") for line in lines]


def summary(runs: list[Run], g: Glyphs) -> Table:
    table = Table(title="Summary", title_justify="left", box=None, pad_edge=False)
    for header in ("service", "requests", "jobs", "lost", "refused", f"signal{g.arrow}exit"):
        table.add_column(header, justify="left" if header == "service" else "right")
    table.add_column("status", justify="right")
    for run in runs:
        requests = [r for r in run.rows if r.kind == "request"]
        jobs = [r for r in run.rows if r.kind == "job" and r.outcome != "not sent"]
        drain = run.drain_seconds
        table.add_row(
            run.name,
            f"{sum(r.ok for r in requests)}/{len(requests)}",
            f"{sum(r.outcome == 'recorded' for r in jobs)}/{len(jobs)}",
            str(run.lost),
            f"{sum(p.refused for p in run.probes)}/{len(run.probes)}",
            f"{drain:.2f} s" if drain is not None else "-",
            str(run.exit_code),
            style="green" if run.lost == 0 and run.exit_code == 0 else "red",
        )
    return table


def show(console: Console, runs: list[Run]) -> None:
    g = glyphs_for(console)
    width = min(console.width, 100)
    for run in runs:
        console.print()
        console.rule(f"[bold]{run.name}[/]  python -m {run.module}  pid {run.pid}", align="left")
        if run.error is not None and run.signal_at is None:
            console.print(f" [red]could not run: {run.error}[/]")
            console.print(Text(run.log[-2000:]), overflow="fold")
            continue
        for line in picture(run, width, g):
            console.print(line, no_wrap=True, overflow="crop", crop=True)
        console.print(legend(g), no_wrap=True, overflow="crop")
        console.print()
        for line in report_lines(run, g):
            console.print(line)
        if run.error is not None:
            console.print(f" [red]problem: {run.error}[/]")
        log = service_log(run)
        if log:
            console.print(" what the service logged (logger graceful_web):", style="dim")
            for entry in log:
                for line in fold_log_line(entry, width - 3):
                    console.print(Text("   " + line, style="dim"), no_wrap=True, crop=True)
    console.print()
    console.print(summary(runs, g))


# -- main ---------------------------------------------------------------------------------


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child we started, by its PID (it leads a process group of its own)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def main() -> int:
    console = Console(highlight=False)
    services = SERVICES
    console.print(
        f"[bold]graceful_web demo[/]: {', '.join(name for name, _ in services)} on {HOST}. "
        f"Each gets {len(REQUEST_MS)} slow requests and {len(JOB_MS)} jobs, then SIGTERM; "
        "new connections and new jobs are tried while it drains."
    )
    children: list[subprocess.Popen[bytes]] = []
    runs: list[Run] = []
    try:
        with tempfile.TemporaryDirectory(prefix="graceful-demo-") as tmp:
            threads = []
            results: dict[str, Run] = {}
            for name, module in services:

                def go(name: str = name, module: str = module) -> None:
                    results[name] = drive(name, module, Path(tmp), children)

                thread = threading.Thread(target=go, daemon=True)
                thread.start()
                threads.append(thread)
            with console.status("starting the services, sending traffic, draining..."):
                for thread in threads:
                    thread.join(START_TIMEOUT + EXIT_TIMEOUT + 15)
            runs = [results[name] for name, _ in services if name in results]
    finally:
        for proc in children:
            stop(proc)
    show(console, runs)
    ok = len(runs) == len(services) and all(
        run.lost == 0 and run.exit_code == 0 and run.error is None for run in runs
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
