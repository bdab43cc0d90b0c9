"""``make demo``: a live drain of every demo service, drawn as a timeline, and the same traffic
without graceful_web beside it.

Each service is started on a free 127.0.0.1 port and sent slow requests and jobs. Once they are
in flight it gets SIGTERM; new connections and new jobs are tried while it drains. Each service
runs twice at the same time: with graceful_web, and with ``GRACEFUL=0`` (the same service on the
bare server). The timelines show every request and job, the signal, the exit and what was
refused; the summary puts both runs of each service side by side: what was answered, what was
recorded (job records read from JOBS_FILE), what was lost, signal -> exit and the exit status.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tests.support.polling import poll
from tests.support.ports import free_port
from tests.support.processes import stop

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

#: (label, module) of every demo service: each is started and drained side by side.
SERVICES = (
    ("aiohttp", "demo_services.aiohttp_service"),
    ("asgi", "demo_services.asgi_service"),
)
REQUEST_MS = (800, 1800, 2800)
JOB_MS = (1300, 2300, 4000)  # the last outlives the requests: bare servers lose it
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
    graceful: bool = True
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
    def key(self) -> str:
        return f"{self.name}-{'on' if self.graceful else 'off'}"

    @property
    def drain_seconds(self) -> float | None:
        if self.signal_at is None or self.exit_at is None:
            return None
        return self.exit_at - self.signal_at


# -- driving one service -------------------------------------------------------------------


def call(port: int, method: str, path: str, timeout: float = 30.0) -> tuple[int, str]:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


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


def drive(
    name: str,
    module: str,
    workdir: Path,
    children: list[subprocess.Popen[bytes]],
    graceful: bool = True,
) -> Run:
    run = Run(name, module, graceful)
    port, metrics_port = free_port(), free_port()
    jobs_file = workdir / f"{run.key}-jobs.log"
    log_path = workdir / f"{run.key}.log"
    env = {
        **os.environ,
        "GRACEFUL": "1" if graceful else "0",
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
        if not poll(lambda: _ready(proc, port), START_TIMEOUT, interval=0.02):
            raise RuntimeError(f"not ready after {START_TIMEOUT:.0f} s")
    except RuntimeError as exc:
        run.error = str(exc)
        return
    run.t0 = time.monotonic()
    senders = [_send_request(run, port, ms) for ms in REQUEST_MS]
    jobs = [_post_job(run, port, f"{run.key}-job{n}", ms) for n, ms in enumerate(JOB_MS, 1)]
    expected = (len(REQUEST_MS), sum(row.outcome == "accepted" for row in jobs))
    # Signal only once the service has every request in hand: a request still in the
    # listen backlog when the listener closes would be refused, not drained.
    if in_flight(metrics_port) is None:
        time.sleep(0.5)
    elif not poll(lambda: in_flight(metrics_port) == expected, 5.0, interval=0.02):
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
        _probe(run, port, "job", f"/jobs?ms=0&id={run.key}-late{n}")
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


def run_span(run: Run) -> float:
    """Seconds from the first request to the last thing seen, the width of the timeline."""
    ends = [row.end for row in run.rows if row.end is not None]
    last = max([run.exit_at or time.monotonic(), *ends, *(p.at for p in run.probes)])
    return max(last - run.t0, 0.5) * 1.02


def picture(run: Run, width: int, g: Glyphs, span: float | None = None) -> list[Text]:
    """The timeline of one run: a row per request and job, the probes, signal and exit.
    ``span`` gives runs drawn one above the other the same time scale."""
    bar = max(20, width - LABEL - OUTCOME - 3)
    assert run.signal_at is not None
    span = span or run_span(run)

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
        exit_label = f"^ exit {exit_status(run.exit_code)}"
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


def exit_status(code: int | None) -> str:
    """The status as a shell shows it: a process killed by signal N exits 128 + N."""
    if code is None:
        return "-"
    return str(128 - code) if code < 0 else str(code)


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
    title = "Summary: the same traffic, graceful_web on and off (GRACEFUL=0)"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    headers = ("service", "graceful_web", "requests", "jobs", "lost", "refused")
    for header in (*headers, f"signal{g.arrow}exit", "status"):
        table.add_column(header, justify="left" if header in headers[:2] else "right")
    for run in runs:
        requests = [r for r in run.rows if r.kind == "request"]
        jobs = [r for r in run.rows if r.kind == "job" and not r.outcome.startswith("not sent")]
        drain = run.drain_seconds
        table.add_row(
            run.name,
            "on" if run.graceful else "off",
            f"{sum(r.ok for r in requests)}/{len(requests)}",
            f"{sum(r.outcome == 'recorded' for r in jobs)}/{len(jobs)}",
            str(run.lost),
            f"{sum(p.refused for p in run.probes)}/{len(run.probes)}",
            f"{drain:.2f} s" if drain is not None else "-",
            exit_status(run.exit_code),
            style="green" if run.lost == 0 and run.exit_code == 0 else "red",
        )
    return table


def verdict(run: Run) -> Text:
    """One line on what a run without graceful_web lost, and whether its exit status said so."""
    jobs = [r for r in run.rows if r.kind == "job" and r.job_id is not None]
    lost_jobs = sum(not r.ok for r in jobs)
    lost_requests = sum(r.kind == "request" and not r.ok for r in run.rows)
    status = f"exit {exit_status(run.exit_code)}"
    if run.exit_code is not None and run.exit_code < 0:
        status += f" (killed by its own {signal.Signals(-run.exit_code).name})"
    elif run.exit_code == 0 and (lost_jobs or lost_requests):
        status += ", as if nothing was lost"
    lost = [f"{lost_jobs} of {len(jobs)} accepted jobs"] if lost_jobs else []
    lost += [f"{lost_requests} requests"] if lost_requests else []
    if not lost:
        return Text(f" {run.name} off: nothing lost this time; {status}")
    return Text(f" {run.name} off: lost {' and '.join(lost)}; {status}", style="red")


#: From this terminal width on, the two runs of a service are drawn side by side.
SIDE_BY_SIDE = 150


def run_lines(run: Run, width: int, g: Glyphs, span: float) -> list[Text]:
    """One run of a service: its title, then its timeline (or why there is none)."""
    how = "with graceful_web" if run.graceful else "without graceful_web (GRACEFUL=0)"
    lines = [Text(f" {how}, pid {run.pid}", style="bold")]
    if run.error is not None and run.signal_at is None:
        lines.append(Text(f" could not run: {run.error}", style="red"))
        lines.extend(Text(line) for line in run.log.splitlines()[-20:])
        return lines
    lines.extend(picture(run, width, g, span))
    if run.error is not None:
        lines.append(Text(f" problem: {run.error}", style="red"))
    return lines


def show(console: Console, runs: list[Run]) -> None:
    g = glyphs_for(console)
    width = min(console.width, 100)
    for name, module in dict.fromkeys((run.name, run.module) for run in runs):
        console.print()
        console.rule(f"[bold]{name}[/]  python -m {module}", align="left")
        group = [run for run in runs if run.name == name]
        span = max((run_span(run) for run in group if run.signal_at), default=0.0)
        if console.width >= SIDE_BY_SIDE and len(group) == 2:
            half = min(100, (console.width - 2) // 2)
            grid = Table.grid(padding=(0, 2))
            for _ in group:
                grid.add_column(width=half, no_wrap=True, overflow="crop")
            columns = [run_lines(run, half, g, span) for run in group]
            for left, right in itertools.zip_longest(*columns, fillvalue=Text("")):
                grid.add_row(left, right)
            console.print(grid)
        else:
            for run in group:
                for line in run_lines(run, width, g, span):
                    console.print(line, no_wrap=True, overflow="crop", crop=True)
        console.print(legend(g), no_wrap=True, overflow="crop")
        for run in (run for run in group if run.graceful):
            log = service_log(run)
            if log:
                console.print(" what it logged with graceful_web:", style="dim")
            for entry in log:
                for folded in fold_log_line(entry, width - 3):
                    console.print(Text("   " + folded, style="dim"), no_wrap=True, crop=True)
    console.print()
    console.print(summary(runs, g))
    for run in runs:
        if not run.graceful:
            console.print(verdict(run))


# -- main ---------------------------------------------------------------------------------


#: Each service runs with graceful_web and, at the same time, without it (GRACEFUL=0).
MODES = (True, False)


def main() -> int:
    console = Console(highlight=False)
    services = SERVICES
    console.print(
        f"[bold]graceful_web demo[/]: {', '.join(name for name, _ in services)} on {HOST}, "
        "each with graceful_web and without it (GRACEFUL=0). "
        f"Each gets {len(REQUEST_MS)} slow requests and {len(JOB_MS)} jobs, then SIGTERM; "
        "new connections and new jobs are tried while it drains."
    )
    children: list[subprocess.Popen[bytes]] = []
    runs: list[Run] = []
    wanted = [(name, module, graceful) for name, module in services for graceful in MODES]
    try:
        with tempfile.TemporaryDirectory(prefix="graceful-demo-") as tmp:
            threads = []
            results: dict[tuple[str, bool], Run] = {}
            for name, module, graceful in wanted:

                def go(name: str = name, module: str = module, graceful: bool = graceful) -> None:
                    results[name, graceful] = drive(name, module, Path(tmp), children, graceful)

                thread = threading.Thread(target=go, daemon=True)
                thread.start()
                threads.append(thread)
            with console.status("starting the services, sending traffic, draining..."):
                for thread in threads:
                    thread.join(START_TIMEOUT + EXIT_TIMEOUT + 15)
            runs = [results[n, g] for n, _, g in wanted if (n, g) in results]
    finally:
        for proc in children:
            stop(proc)
    show(console, runs)
    # Runs without graceful_web are expected to lose work: only that they ran is checked.
    ok = len(runs) == len(wanted) and all(
        run.error is None and (not run.graceful or (run.lost == 0 and run.exit_code == 0))
        for run in runs
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
