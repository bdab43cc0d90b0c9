"""Writing bench/results.md and the summary table in README.md from one run's figures.

The README table sits between two markers and is replaced whole by every run, so it always
matches the results file written by the same run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from ._harness import ROOT, Spread, wrk_version
from .in_flight import InFlightFigures
from .jobs import JobFigures
from .stopping import EXIT_CASES, StopFigures
from .throughput import VARIANTS, Comparison

RESULTS = ROOT / "bench" / "results.md"
README = ROOT / "README.md"
BEGIN = "<!-- bench:begin (written by make bench) -->"
END = "<!-- bench:end -->"
EN_DASH = "\u2013"

#: The server each throughput comparison runs, as the tables name it.
APP_LABELS = {"aiohttp": "aiohttp", "uvicorn": "Starlette on uvicorn"}


@dataclass
class Results:
    date: str
    wall_s: float
    pinning: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    throughput: dict[str, Comparison]
    stop_servers: list[str]
    stopping: StopFigures
    jobs: JobFigures
    in_flight: InFlightFigures
    not_measured: list[str] = field(default_factory=list)


# -- formatting ---------------------------------------------------------------------------


def _num(value: float, digits: int) -> str:
    text = f"{value:,.{digits}f}"
    if float(text.replace(",", "")) == 0:
        text = text.lstrip("-")  # no "-0.0" for a median a hair below zero
    return text.replace(",", " ")


def med(spread: Spread | None, digits: int = 2, unit: str = "") -> str:
    """The median with its range: ``0.94 ms (0.88 to 1.02)``, with an en dash."""
    if spread is None:
        return "n/a"
    return (
        f"{_num(spread.median, digits)}{unit} "
        f"({_num(spread.low, digits)}{EN_DASH}{_num(spread.high, digits)})"
    )


def _mib(value: float) -> str:
    return f"{value / 2**20:.2f} MiB"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


# -- the summary table (README and results) -------------------------------------------------


def summary_table(results: Results) -> str:
    rows = [
        "| figure | bare | with graceful_web | target |",
        "| --- | --- | --- | --- |",
    ]
    for server, comparison in results.throughput.items():
        bare_rps = comparison.spread("bare", "requests_per_s").median
        graceful_rps = comparison.spread("graceful", "requests_per_s").median
        ratio = comparison.ratios().median
        rows.append(
            f"| `GET /fast` on {APP_LABELS[server]}: requests/s, p50 / p99 "
            f"| {_num(bare_rps, 0)}, {comparison.spread('bare', 'p50_ms').median:.2f} / "
            f"{comparison.spread('bare', 'p99_ms').median:.2f} ms "
            f"| {_num(graceful_rps, 0)}, {comparison.spread('graceful', 'p50_ms').median:.2f} / "
            f"{comparison.spread('graceful', 'p99_ms').median:.2f} ms; ratio {ratio:.3f}; "
            f"+{comparison.extra_cpu_us().median:.1f} µs CPU per request, of which an empty "
            f"middleware costs {_num(comparison.extra_cpu_us('middleware').median, 1)} "
            f"| ratio ≥ 0.98: {_verdict(ratio >= 0.98)} |"
        )
    stop = results.stopping
    for server in results.stop_servers:
        refused_bare = stop.refused_spread(server, False)
        refused = stop.refused_spread(server, True)
        if refused_bare is None or refused is None:
            continue
        # Not later than bare: the median with the library does not pass the slowest bare run.
        verdict = f"≤ bare: {_verdict(refused.median <= refused_bare.high)}"
        if server == "aiohttp":
            verdict = f"≤ 5 ms: {_verdict(refused.median <= 5)}; {verdict}"
        rows.append(
            f"| signal → new connections refused, {server} | {refused_bare.median:.2f} ms "
            f"| {refused.median:.2f} ms | {verdict} |"
        )
    for server in results.stop_servers:
        request = stop.exit_spread(server, True, "request")
        job = stop.exit_spread(server, True, "job")
        bare = stop.exit_spread(server, False, "request")
        if request is None or job is None or bare is None:
            continue
        worst = max(request.median, job.median)
        rows.append(
            f"| last request / job done → exit, {server} | {bare.median:.0f} ms (request) "
            f"| {request.median:.0f} / {job.median:.0f} ms | ≤ 150 ms: {_verdict(worst <= 150)} |"
        )
    jobs = results.jobs
    task_life = jobs.spread("task", "time", "total_us").median
    spawn_life = jobs.spread("spawn", "time", "total_us").median
    extra = jobs.extra_us().median
    extra_nogc = jobs.extra_us("time-nogc").median
    rows.append(
        f"| {_num(jobs.n, 0)} jobs: CPU per job, start to done (collector paused) "
        f"| {task_life:.1f} µs ({jobs.spread('task', 'time-nogc', 'total_us').median:.1f}) "
        f"| {spawn_life:.1f} µs ({jobs.spread('spawn', 'time-nogc', 'total_us').median:.1f}): "
        f"+{extra:.1f} (+{extra_nogc:.1f}) µs "
        f"| ≤ +2 µs: {_verdict(extra <= 2)} |"
    )
    task_after = jobs.spread("task", "memory", "after_drain_bytes").median
    spawn_after = jobs.spread("spawn", "memory", "after_drain_bytes").median
    rows.append(
        f"| {_num(jobs.n, 0)} jobs: memory per pending job; held after the drain "
        f"| {jobs.spread('task', 'memory', 'pending_bytes_per_job').median:.0f} B; "
        f"{_mib(task_after)} "
        f"| {jobs.spread('spawn', 'memory', 'pending_bytes_per_job').median:.0f} B; "
        f"{_mib(spawn_after)} "
        f"| back to baseline (bare's): {_verdict(spawn_after - task_after < 64 * 1024)} |"
    )
    flight = results.in_flight
    for (server, with_library), runs in flight.runs.items():
        if not with_library:
            continue
        bare_runs = flight.runs.get((server, False), [])
        ok = all(
            run.answered_ok == run.in_flight_at_signal == flight.requests and run.exit_status == 0
            for run in runs
        )
        exits = flight.spread(server, True, "signal_to_exit_s")
        bare_exits = flight.spread(server, False, "signal_to_exit_s")
        answered = min(run.answered_ok for run in runs)
        bare_answered = min((run.answered_ok for run in bare_runs), default=0)
        rows.append(
            f"| {_num(flight.requests, 0)} slow requests in flight at the signal, {server}: "
            f"answered 200, signal → exit "
            f"| {_num(bare_answered, 0)}, {bare_exits.median if bare_exits else 0:.2f} s "
            f"| {_num(answered, 0)}, {exits.median if exits else 0:.2f} s "
            f"| all, within the deadline: {_verdict(ok)} |"
        )
    return "\n".join(rows)


# -- the results file -----------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def _machine() -> list[str]:
    cpu = "unknown CPU"
    memory = "unknown"
    os_name = platform.system()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; memory {memory}",
        f"- OS: {os_name}, kernel {platform.release()}",
    ]


def _python_build() -> str:
    args = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    if "--enable-optimizations" in args:
        return ""
    return " (a build without PGO: every figure in µs is higher than on a distribution's Python)"


def _load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{value:.2f}" for value in load)


def results_markdown(results: Results) -> str:
    out: list[str] = []
    add = out.append
    add("# graceful_web benchmarks")
    add("")
    add(
        "Written by `make bench` (bench/). Every figure is measured side by side in one run: "
        "bare and with graceful_web alternate (A B A B …), the load comes from a separate "
        "process, everything runs on 127.0.0.1. Each cell is the median, with the lowest and "
        "highest run in brackets. Nothing here is asserted by the test suite."
    )
    add("")
    add("## Run")
    add("")
    add(f"- Date: {results.date}; `make bench` took {results.wall_s:.0f} s")
    out.extend(_machine())
    add(
        f"- Python {platform.python_version()}{_python_build()}; graceful_web "
        f"{_version('graceful-web')} (commit {_git_commit()}); aiohttp {_version('aiohttp')}; "
        f"starlette {_version('starlette')}; uvicorn {_version('uvicorn')}; hypercorn "
        f"{_version('hypercorn')}; anyio {_version('anyio')}; {wrk_version()}"
    )
    add(f"- CPU placement: {results.pinning}")
    add(
        f"- Load average (1 / 5 / 15 min) before: {_load(results.load_before)}, after: "
        f"{_load(results.load_after)}. On a shared machine, other work moves throughput and "
        "latency most; CPU time per request and per job move least."
    )
    if results.not_measured:
        add("- Not measured in this run: " + "; ".join(results.not_measured))
    add("")
    add("## Summary")
    add("")
    add(
        "Medians. *≤ bare* is met when the median with graceful_web is not above the slowest "
        "bare run."
    )
    add("")
    add(summary_table(results))
    add("")

    add("## 1. `GET /fast`: throughput and latency")
    add("")
    add(
        "wrk, one thread, 32 keep-alive connections, 3 s a run after a 1 s warm-up of each "
        "server. Three variants of the same minimal app run at once, each in its own process: "
        "bare, with graceful_web (aiohttp: `setup(app)`; ASGI: `GracefulLifespan(app)`), and "
        "bare behind an empty middleware that only passes each request on, which shows what "
        "the server charges for any middleware at all. wrk loads them in turn (A B C A B C). "
        "*CPU per request* is the server's own CPU time (read from the app around each run) "
        "over the requests served; it moves far less than throughput when other work shares "
        "the machine. Ratios and extras are taken round by round against bare."
    )
    add("")
    add(
        "| server | variant | requests/s | p50 ms | p99 ms | CPU µs per request | "
        "ratio (req/s) | ratio (CPU) | extra CPU µs per request | errors |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    names = {"bare": "bare", "graceful": "graceful_web", "middleware": "empty middleware"}
    for server, comparison in results.throughput.items():
        for variant in VARIANTS:
            compared = variant != "bare"
            errors = sum(sample.load.errors for sample in comparison.samples(variant))
            add(
                f"| {APP_LABELS[server]} | {names[variant]} "
                f"| {med(comparison.spread(variant, 'requests_per_s'), 0)} "
                f"| {med(comparison.spread(variant, 'p50_ms'))} "
                f"| {med(comparison.spread(variant, 'p99_ms'))} "
                f"| {med(comparison.spread(variant, 'cpu'), 1)} "
                f"| {med(comparison.ratios(variant), 3) if compared else ''} "
                f"| {med(comparison.cpu_ratios(variant), 3) if compared else ''} "
                f"| {med(comparison.extra_cpu_us(variant), 2) if compared else ''} "
                f"| {errors} |"
            )
    rounds = {len(c.bare) for c in results.throughput.values()}
    add("")
    add(f"Rounds per server: {', '.join(str(r) for r in sorted(rounds))}.")
    add("")

    stop = results.stopping
    add("## 2. Signal → new TCP connections refused")
    add("")
    add(
        "One slow request is in flight, so the process is still draining and the figure is "
        "the listener closing, not the process dying. The runner notes the monotonic time "
        "just before `os.kill(pid, SIGTERM)` and then calls `connect()` until one is refused: "
        "every 0.2 ms for 20 ms, then every millisecond. Back to back (some 20 000 connects a "
        "second) the probe slowed the servers itself, as each connect accepted before the "
        "close costs a server an accept and a connection to tear down (hypercorn with the "
        "library: 4 ms instead of under 1). hypercorn runs as one process (`-w 0`): with "
        "worker processes its arbiter holds its own copy of the listening socket until every "
        "worker has gone."
    )
    add("")
    add("| server | bare | with graceful_web | runs |")
    add("| --- | --- | --- | --- |")
    for server in results.stop_servers:
        bare = stop.refused_spread(server, False)
        graceful = stop.refused_spread(server, True)
        count = bare.count if bare else 0
        add(f"| {server} | {med(bare, 2, ' ms')} | {med(graceful, 2, ' ms')} | {count} + {count} |")
    add("")

    add("## 3. Last protected work done → process exit")
    add("")
    add(
        "The app writes `time.monotonic()` when its last slow request (400 ms) or protected "
        "job (400 ms) finishes; SIGTERM is sent while it runs. The runner notes when "
        "`waitpid` returned. CLOCK_MONOTONIC is one clock for the whole machine, so the two "
        "subtract. The exit includes the server's own shutdown and the interpreter's. A bare "
        "server cancels a background task at the signal, so it has no job row."
    )
    add("")
    add("| server | bare, last request | graceful_web, last request | graceful_web, last job |")
    add("| --- | --- | --- | --- |")
    for server in results.stop_servers:
        cells = [
            med(stop.exit_spread(server, graceful, work), 1, " ms") for graceful, work in EXIT_CASES
        ]
        add(f"| {server} | {' | '.join(cells)} |")
    add("")

    jobs = results.jobs
    add(f"## 4. {_num(jobs.n, 0)} jobs: `spawn` against bare `asyncio.create_task`")
    add("")
    add(
        "Each run is a fresh interpreter: a warm-up round of 10 000 jobs, then the measured "
        "round. Every job waits on one gate; once all of them are waiting the gate opens and "
        "the run waits until all are done (with `spawn` it then runs the drain). Times are "
        "the process's CPU time divided by the number of jobs: *start* is the loop that "
        "creates them, *start to done* their whole life. *Collector paused* repeats the timing "
        "with `gc.disable()`: the difference is the garbage collector, whose full collections "
        "walk every object still alive, so each object a pending job keeps alive costs time "
        "many times over. Memory is traced with tracemalloc in separate runs: what a pending "
        "job holds, and what is still held after the drain against the baseline before the "
        "first job (asyncio's own registry of tasks keeps the room it grew to, with or "
        "without graceful_web)."
    )
    add("")
    add(
        "| | start µs/job | start to done µs/job | collector paused: start to done "
        "| memory per pending job | held after the drain |"
    )
    add("| --- | --- | --- | --- | --- | --- |")
    for mode, label in (("task", "`asyncio.create_task`"), ("spawn", "`graceful_web.spawn`")):
        add(
            f"| {label} | {med(jobs.spread(mode, 'time', 'start_us'))} "
            f"| {med(jobs.spread(mode, 'time', 'total_us'))} "
            f"| {med(jobs.spread(mode, 'time-nogc', 'total_us'))} "
            f"| {med(jobs.spread(mode, 'memory', 'pending_bytes_per_job'), 0, ' B')} "
            f"| {_mib(jobs.spread(mode, 'memory', 'after_drain_bytes').median)} |"
        )
    add("")
    add(
        f"spawn's extra per job, pair by pair: {med(jobs.extra_us(), 2, ' µs')}; with the "
        f"collector paused {med(jobs.extra_us('time-nogc'), 2, ' µs')}. Runs per row: "
        f"{len(jobs.runs[('task', 'time')])}."
    )
    add("")

    flight = results.in_flight
    add(f"## 5. {_num(flight.requests, 0)} slow requests in flight at the signal")
    add("")
    add(
        "A client process opens one connection per request and sends `GET /slow` (the handler "
        "sleeps 4 s); once the server has started every request it gets SIGTERM. The deadline "
        "is 30 s. The bare servers wait for requests in flight by themselves too: aiohttp's "
        "`run_app` up to its `shutdown_timeout` (60 s), uvicorn for as long as connections "
        "are open, after which it kills itself with the SIGTERM it captured (exit status -15 "
        "as the parent sees it). The file-descriptor limit is raised for the server and the "
        "client. *Drain started* is the monotonic stamp of the library's log line."
    )
    add("")
    add(
        "| server | in flight at the signal | answered 200 | exit status | signal → drain "
        "started | drain (logged) | last request done → exit | signal → exit |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (server, with_library), runs in flight.runs.items():
        label = f"{server} {'+ graceful_web' if with_library else 'bare'}"
        held = ", ".join(str(run.in_flight_at_signal) for run in runs)
        answered = ", ".join(str(run.answered_ok) for run in runs)
        statuses = ", ".join(str(run.exit_status) for run in runs)
        started = flight.spread(server, with_library, "signal_to_drain_started_ms")
        add(
            f"| {label} | {held} | {answered} | {statuses} "
            f"| {med(started, 2, ' ms')} "
            f"| {med(flight.spread(server, with_library, 'drain_ms'), 0, ' ms')} "
            f"| {med(flight.spread(server, with_library, 'last_done_to_exit_ms'), 0, ' ms')} "
            f"| {med(flight.spread(server, with_library, 'signal_to_exit_s'), 2, ' s')} |"
        )
    add("")
    add(
        "Registering and releasing one request with 10 000 others in flight (in-process, "
        f"`request_started` + `discard`): {med(Spread.of(flight.registration), 0, ' ns')}."
    )
    add("")
    return "\n".join(out)


def update_readme(table: str) -> bool:
    """Replace the table between the markers in README.md; False when they are missing."""
    text = README.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    return True
