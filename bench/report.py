"""Writing bench/results.md from one run's figures: its summary table, then every figure with
its spread. docs/benchmarks.md includes the file whole, so the figures live in one place.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._harness import ROOT, Spread, wrk_version
from .durable_jobs import LABELS as DURABLE_LABELS
from .durable_jobs import STEPS, DurableFigures
from .hot_path import VARIANTS as HOT_PATH_VARIANTS
from .hot_path import HotPath
from .in_flight import InFlightFigures
from .jobs import JobFigures
from .long_lived import DRAIN_TIMEOUT as LONG_LIVED_DEADLINE
from .long_lived import LONG_LIVED_GRACE, LongLivedFigures
from .long_lived import Run as LongLivedRun
from .stopping import EXIT_CASES, StopFigures
from .throughput import CONNECTIONS, VARIANTS, Comparison

RESULTS = ROOT / "bench" / "results.md"
EN_DASH = "\u2013"

#: The server each throughput comparison runs, as the tables name it.
APP_LABELS = {
    "aiohttp": "aiohttp (asyncio)",
    "aiohttp-uvloop": "aiohttp on uvloop",
    "uvicorn": "Starlette on uvicorn (asyncio, h11)",
    "uvicorn-uvloop": "Starlette on uvicorn (uvloop, httptools)",
}

#: The targets the run judges, as the summary names them.
AIOHTTP_RATIO = 0.92  # GET /fast on aiohttp over bare
MIDDLEWARE_SLACK = 0.01  # ... and no further below an empty middleware's ratio than this
ASGI_RATIO = 0.98  # GET /fast on Starlette/uvicorn over bare
JOB_EXTRA_US = 3.0  # spawn over create_task, CPU per job start to done, collector on
JOB_EXTRA_BYTES = 100.0  # spawn over create_task, memory per pending job
EXIT_EXTRA_MS = 10.0  # last request done -> exit on uvicorn, over bare
EXIT_MS = 150.0  # last request / job done -> exit, every server
REFUSED_MS = 5.0  # signal -> refused, aiohttp
#: One request's path in process: graceful_web's extra over an empty middleware, at most this
#: many times the empty middleware's own cost (over the app alone).
REQUEST_PATH_OVER_EMPTY = {"aiohttp": 0.5, "asgi": 1.0}
#: GET /fast and /work on uvicorn (uvloop, httptools): CPU per request over an empty
#: middleware's, at most.
UVICORN_CPU_OVER_EMPTY_US = 1.0


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
    throughput_s: float = 3.0
    warmup_s: float = 1.0
    quick: bool = False
    hot_path: HotPath | None = None
    durable: DurableFigures | None = None
    long_lived: LongLivedFigures | None = None


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


def _signed(value: float, digits: int) -> str:
    text = _num(value, digits)
    return text if text.startswith("-") else f"+{text}"


def row_label(comparison: Comparison) -> str:
    return f"`GET {comparison.path}` on {APP_LABELS[comparison.server]}"


def throughput_verdict(comparison: Comparison) -> str:
    """The target of a ``GET /fast`` row; the realistic handler's rows are there to read."""
    verdicts = []
    if comparison.server == "uvicorn-uvloop":
        over = comparison.extra_cpu_us().median - comparison.extra_cpu_us("middleware").median
        verdicts.append(
            f"CPU per request ≤ an empty middleware's + {UVICORN_CPU_OVER_EMPTY_US:g} µs "
            f"({_signed(over, 1)} µs): {_verdict(over <= UVICORN_CPU_OVER_EMPTY_US)}"
        )
    if comparison.path != "/fast":
        return "; ".join(verdicts) or "no target: the cost beside 1 ms of work"
    ratio = comparison.ratios().median
    if comparison.server.startswith("aiohttp"):
        empty = comparison.ratios("middleware").median
        return (
            f"ratio ≥ {AIOHTTP_RATIO}: {_verdict(ratio >= AIOHTTP_RATIO)}; within "
            f"{MIDDLEWARE_SLACK} of an empty middleware ({empty:.3f}): "
            f"{_verdict(ratio >= empty - MIDDLEWARE_SLACK)}"
        )
    return "; ".join([f"ratio ≥ {ASGI_RATIO}: {_verdict(ratio >= ASGI_RATIO)}", *verdicts])


# -- the summary table -------------------------------------------------------------------


def summary_table(results: Results) -> str:
    rows = [
        "| figure | bare | with graceful_web | target |",
        "| --- | --- | --- | --- |",
    ]
    for comparison in results.throughput.values():
        bare_rps = comparison.spread("bare", "requests_per_s").median
        graceful_rps = comparison.spread("graceful", "requests_per_s").median
        ratio = comparison.ratios().median
        rows.append(
            f"| {row_label(comparison)}: requests/s, p50 / p99 "
            f"| {_num(bare_rps, 0)}, {comparison.spread('bare', 'p50_ms').median:.2f} / "
            f"{comparison.spread('bare', 'p99_ms').median:.2f} ms "
            f"| {_num(graceful_rps, 0)}, {comparison.spread('graceful', 'p50_ms').median:.2f} / "
            f"{comparison.spread('graceful', 'p99_ms').median:.2f} ms; ratio {ratio:.3f} "
            f"(per CPU second {comparison.cpu_ratios().median:.3f}); "
            f"{_signed(comparison.extra_cpu_us().median, 1)} µs CPU per request; an empty "
            f"middleware: ratio {comparison.ratios('middleware').median:.3f}, "
            f"{_signed(comparison.extra_cpu_us('middleware').median, 1)} µs "
            f"| {throughput_verdict(comparison)} |"
        )
    rows.extend(_hot_path_rows(results.hot_path))
    stop = results.stopping
    for server in results.stop_servers:
        refused_bare = stop.refused_spread(server, False)
        refused = stop.refused_spread(server, True)
        if refused_bare is None or refused is None:
            continue
        # Not later than bare: the median with the library does not pass the slowest bare run.
        verdict = f"≤ bare: {_verdict(refused.median <= refused_bare.high)}"
        if server.startswith("aiohttp"):
            verdict = f"≤ {REFUSED_MS:.0f} ms: {_verdict(refused.median <= REFUSED_MS)}; {verdict}"
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
        verdict = f"≤ {EXIT_MS:.0f} ms: {_verdict(worst <= EXIT_MS)}"
        if server.startswith("uvicorn"):
            within = request.median <= bare.median + EXIT_EXTRA_MS
            verdict = f"request ≤ bare + {EXIT_EXTRA_MS:.0f} ms: {_verdict(within)}; {verdict}"
        rows.append(
            f"| last request / job done → exit, {server} | {bare.median:.0f} ms (request) "
            f"| {request.median:.0f} / {job.median:.0f} ms | {verdict} |"
        )
    jobs = results.jobs
    task_life = jobs.spread("task", "time", "total_us").median
    task_nogc = jobs.spread("task", "time-nogc", "total_us").median
    spawn_life = jobs.spread("spawn", "time", "total_us").median
    spawn_nogc = jobs.spread("spawn", "time-nogc", "total_us").median
    extra = jobs.extra_us().median
    extra_nogc = jobs.extra_us("time-nogc").median
    rows.append(
        f"| {_num(jobs.n, 0)} jobs: CPU per job, start to done (collector paused) "
        f"| `create_task` {task_life:.1f} µs ({task_nogc:.1f}) "
        f"| `spawn` {spawn_life:.1f} µs ({spawn_nogc:.1f}): "
        f"{_signed(extra, 1)} ({_signed(extra_nogc, 1)}) µs "
        f"| ≤ +{JOB_EXTRA_US:.0f} µs (collector on): {_verdict(extra <= JOB_EXTRA_US)} |"
    )
    task_after = jobs.spread("task", "memory", "after_drain_bytes").median
    spawn_after = jobs.spread("spawn", "memory", "after_drain_bytes").median
    extra_bytes = jobs.extra_bytes().median
    rows.append(
        f"| {_num(jobs.n, 0)} jobs: memory per pending job; held once all are done "
        f"| {jobs.spread('task', 'memory', 'pending_bytes_per_job').median:.0f} B; "
        f"{_mib(task_after)} "
        f"| {jobs.spread('spawn', 'memory', 'pending_bytes_per_job').median:.0f} B "
        f"({_signed(extra_bytes, 0)} B); {_mib(spawn_after)} "
        f"| ≤ `create_task`'s + {JOB_EXTRA_BYTES:.0f} B: "
        f"{_verdict(extra_bytes <= JOB_EXTRA_BYTES)}; back to baseline (bare's): "
        f"{_verdict(spawn_after - task_after < 64 * 1024)} |"
    )
    if ("kept", "time") in jobs.runs:
        kept_life = jobs.spread("kept", "time", "total_us").median
        kept_nogc = jobs.spread("kept", "time-nogc", "total_us").median
        over_kept = jobs.extra_us(mode="spawn", over="kept").median
        over_kept_nogc = jobs.extra_us("time-nogc", "spawn", over="kept").median
        rows.append(
            f"| {_num(jobs.n, 0)} jobs, the floor: `create_task` kept in a set until done "
            f"(asyncio's documented idiom), CPU per job start to done (collector paused) "
            f"| kept {kept_life:.1f} µs ({kept_nogc:.1f}) "
            f"| `spawn` {spawn_life:.1f} µs ({spawn_nogc:.1f}): "
            f"{_signed(over_kept, 1)} ({_signed(over_kept_nogc, 1)}) µs "
            f"| not a target: what holding a job until it is done costs by itself |"
        )
    if ("aiojobs", "time") in jobs.runs:
        peer_life = jobs.spread("aiojobs", "time", "total_us").median
        peer_nogc = jobs.spread("aiojobs", "time-nogc", "total_us").median
        peer_bytes = jobs.spread("aiojobs", "memory", "pending_bytes_per_job").median
        rows.append(
            f"| {_num(jobs.n, 0)} jobs, the peer: aiojobs' `Scheduler.spawn`, CPU per job start "
            f"to done (collector paused); memory per pending job "
            f"| `create_task` {task_life:.1f} µs ({task_nogc:.1f}) "
            f"| aiojobs {peer_life:.1f} µs ({peer_nogc:.1f}), {peer_bytes:.0f} B; "
            f"`spawn` {spawn_life:.1f} µs "
            f"| not a target: the peer people use |"
        )
    rows.extend(_durable_summary_rows(results.durable))
    rows.extend(long_lived_summary_rows(results.long_lived))
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


HOT_PATH_LABELS = {
    "aiohttp": ("aiohttp", "an empty middleware", "`graceful_middleware`"),
    "asgi": ("ASGI", "an empty ASGI wrapper", "`GracefulLifespan`"),
}


def _hot_path_rows(hot_path: HotPath | None) -> list[str]:
    if hot_path is None:
        return []
    rows = []
    for family, (label, empty, ours) in HOT_PATH_LABELS.items():
        if family not in hot_path.runs:
            continue
        own = hot_path.fastest(family, "empty") - hot_path.fastest(family, "handler")
        times = hot_path.extra_ns(family) / own
        bound = REQUEST_PATH_OVER_EMPTY[family]
        rows.append(
            f"| one request's path in process, {label}, the server taken out: ns per request "
            f"| the app alone {hot_path.fastest(family, 'handler'):.0f} ns; behind {empty} "
            f"{hot_path.fastest(family, 'empty'):.0f} ns "
            f"| behind {ours} {hot_path.fastest(family, 'graceful'):.0f} ns: "
            f"{_signed(hot_path.extra_ns(family), 0)} ns over {empty} "
            f"| ≤ {bound:g}× {empty}'s own cost ({own:.0f} ns): {times:.2f}×, "
            f"{_verdict(times <= bound)} |"
        )
    return rows


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
    if results.quick:
        add(
            "**A quick run** (`BENCH_QUICK=1`): one round or pair per figure, short loads and "
            "fewer jobs and requests, to check the bench itself. Its figures are not the bench's."
        )
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
        f"{_version('hypercorn')}; uvloop {_version('uvloop')}; httptools "
        f"{_version('httptools')}; aiojobs {_version('aiojobs')}; anyio {_version('anyio')}; "
        f"{wrk_version()}"
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
        "bare run. A ratio is requests/s with graceful_web (or behind an empty middleware) over "
        "bare, round by round; *within 0.01 of an empty middleware* is met when graceful_web's "
        "ratio is at most 0.01 below the empty middleware's, measured in the same rounds. "
        "*Per CPU second* is the same ratio from the server's own CPU time per request, which "
        "other work on the machine moves far less than throughput. "
        "`GET /work` is the realistic handler: 1 ms of awaited work and a JSON body of some "
        "550 bytes."
    )
    add("")
    add(summary_table(results))
    add("")

    add("## 1. `GET /fast` and `GET /work`: throughput and latency")
    add("")
    add(
        f"wrk, one thread, {CONNECTIONS} keep-alive connections, {results.throughput_s:.0f} s "
        f"a run after a {results.warmup_s:.0f} s warm-up of each server. Three variants of the "
        "same minimal app run at once, each in its own process: "
        "bare, with graceful_web (aiohttp: `setup(app)`; ASGI: `GracefulLifespan(app)`), and "
        "bare behind an empty middleware that only passes each request on, which shows what "
        "the server charges for any middleware at all. wrk loads them in turn, the order "
        "rotating round by round (A B C, B C A, C A B, …) so that none always goes first. "
        "*CPU per request* is the server's own CPU time (read from the app around each run) "
        "over the requests served; it moves far less than throughput when other work shares "
        "the machine. Ratios and extras are taken round by round against bare."
    )
    add("")
    add(
        "`GET /fast` answers `ok` and does nothing else: the worst case, where the library's "
        "microseconds are all there is. `GET /work` is a realistic handler: it awaits 1 ms "
        "(`asyncio.sleep`, standing for a query or a call to another service) and answers a "
        "JSON body of some 550 bytes serialised on every request; there the server is not "
        "busy all the time, and the ratio shows what a client sees. The event loop and HTTP "
        "parser are named on the command line: aiohttp on asyncio's loop or on uvloop "
        "(`run_app(loop=uvloop.new_event_loop())`); uvicorn with `--loop asyncio --http h11` "
        "(what `pip install uvicorn` gives) or `--loop uvloop --http httptools` (what "
        "`uvicorn[standard]` gives)."
    )
    add("")
    add(
        "| request, server | variant | requests/s | p50 ms | p99 ms | CPU µs per request | "
        "ratio (req/s) | ratio (CPU) | extra CPU µs per request | errors |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    names = {"bare": "bare", "graceful": "graceful_web", "middleware": "empty middleware"}
    for comparison in results.throughput.values():
        for variant in VARIANTS:
            compared = variant != "bare"
            errors = sum(sample.load.errors for sample in comparison.samples(variant))
            add(
                f"| {row_label(comparison)} | {names[variant]} "
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
    add(f"Rounds per row: {', '.join(str(r) for r in sorted(rounds))}.")
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
        "worker has gone. *uvicorn* runs with `--loop asyncio --http h11`, *uvicorn-uvloop* "
        "with `--loop uvloop --http httptools`, *aiohttp-uvloop* is `run_app` on a uvloop "
        "loop; the library's signal handling differs between the two loops."
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
        "job (400 ms) finishes; SIGTERM is sent while it runs. The runner notes the moment "
        "the process ended, woken by its pidfd (`Popen.wait` with a timeout would poll, "
        "every 50 ms at the end). CLOCK_MONOTONIC is one clock for the whole machine, so the two "
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
    add(
        f"## 4. {_num(jobs.n, 0)} jobs: `spawn` against bare `asyncio.create_task`, a kept "
        "task and aiojobs' `Scheduler.spawn`"
    )
    add("")
    add(
        "Each run is a fresh interpreter: a warm-up round of 10 000 jobs, then the measured "
        "round, on a plain `asyncio.run` loop as under a web server. Every job waits on one "
        "gate; once all of them are waiting the gate opens and the run waits until all are "
        "done. Times are "
        "the process's CPU time divided by the number of jobs: *start* is the loop that "
        "creates them, *start to done* their whole life. *Collector paused* repeats the timing "
        "with `gc.disable()`: the difference is the garbage collector, whose full collections "
        "walk every object still alive, so each object a pending job keeps alive costs time "
        "many times over. Memory is traced with tracemalloc in separate runs: what a pending "
        "job holds, and what is still held once every job is done against the baseline "
        "before the first job (asyncio's own registry of tasks keeps the room it grew to, "
        "with or without graceful_web). aiojobs is the peer aiohttp apps use for background "
        "jobs today: one `Scheduler(limit=None)` made before the baseline, each job started "
        "with `await scheduler.spawn(job())`; without the limit every job runs at once, as "
        "with the others (its default, 100 at a time, queues the rest). *Kept* is "
        "`create_task` as asyncio's documentation advises for fire-and-forget tasks, since "
        "the loop holds only weak references to them: each task added to a set, with "
        "`add_done_callback(set.discard)`; holding a job until it is done costs that much "
        "by itself, with or without graceful_web. The four alternate run by run."
    )
    add("")
    add(
        "| | start µs/job | start to done µs/job | collector paused: start to done "
        "| memory per pending job | held once all are done |"
    )
    add("| --- | --- | --- | --- | --- | --- |")
    labels = (
        ("task", "`asyncio.create_task`"),
        ("kept", "`create_task`, kept in a set until done"),
        ("spawn", "`graceful_web.spawn`"),
        ("aiojobs", "aiojobs `Scheduler.spawn`"),
    )
    for mode, label in labels:
        if (mode, "time") not in jobs.runs:
            continue
        add(
            f"| {label} | {med(jobs.spread(mode, 'time', 'start_us'))} "
            f"| {med(jobs.spread(mode, 'time', 'total_us'))} "
            f"| {med(jobs.spread(mode, 'time-nogc', 'total_us'))} "
            f"| {med(jobs.spread(mode, 'memory', 'pending_bytes_per_job'), 0, ' B')} "
            f"| {_mib(jobs.spread(mode, 'memory', 'after_drain_bytes').median)} |"
        )
    add("")
    add(
        f"spawn's extra per job over `create_task`, run by run: {med(jobs.extra_us(), 2, ' µs')}; "
        f"with the collector paused {med(jobs.extra_us('time-nogc'), 2, ' µs')}; per pending "
        f"job {med(jobs.extra_bytes(), 0, ' B')}."
    )
    if ("kept", "time") in jobs.runs:
        add(
            "spawn's extra over a kept `create_task`: "
            f"{med(jobs.extra_us(mode='spawn', over='kept'), 2, ' µs')}; with the collector "
            f"paused {med(jobs.extra_us('time-nogc', 'spawn', over='kept'), 2, ' µs')}."
        )
    if ("aiojobs", "time") in jobs.runs:
        add(
            "aiojobs' extra over `create_task`: "
            f"{med(jobs.extra_us(mode='aiojobs'), 2, ' µs')}; with the collector paused "
            f"{med(jobs.extra_us('time-nogc', 'aiojobs'), 2, ' µs')}; per pending job "
            f"{med(jobs.extra_bytes('aiojobs'), 0, ' B')}."
        )
    add(f"Runs per row: {len(jobs.runs[('task', 'time')])}.")
    add("")

    flight = results.in_flight
    add(f"## 5. {_num(flight.requests, 0)} slow requests in flight at the signal")
    add("")
    add(
        "A client process opens one connection per request and sends `GET /slow` (the handler "
        "sleeps 4 s from the moment the server has started every request, so all of them are "
        "in flight however long the ramp-up takes; the servers run on asyncio's loop); once "
        "the server has started every request it gets SIGTERM. The deadline is 30 s. The bare "
        "servers wait for requests in flight by themselves too: aiohttp's `run_app` up to "
        "its `shutdown_timeout` (60 s), "
        "uvicorn for as long as connections are open, after which it kills itself with the "
        "SIGTERM it captured (exit status -15 as the parent sees it). The file-descriptor "
        "limit is raised for the server and the "
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

    if results.hot_path is not None:
        _hot_path_section(add, results.hot_path)
    if results.durable is not None:
        out.extend(durable_section(results.durable))
    if results.long_lived is not None:
        out.append("")
        out.extend(long_lived_section(results.long_lived))
    return "\n".join(out)


def _hot_path_section(add: Callable[[str], None], hot_path: HotPath) -> None:
    add("## 6. One request's path in process, the server taken out")
    add("")
    add(
        "Throughput on a shared machine moves by more than the library's whole cost per "
        "request, so this times the request path itself. In a fresh interpreter on the "
        "server's core, each request's coroutine is driven to its end by hand "
        f"({_num(hot_path.calls, 0)} requests a repetition; nothing in the path waits): the app "
        "alone, behind an empty middleware (aiohttp: called as aiohttp calls a middleware "
        "chain; ASGI: a wrapper that only awaits the app), and behind graceful_web "
        "(`graceful_middleware`; `GracefulLifespan` after its lifespan startup). The variants "
        "alternate; each cell is the fastest repetition, the one least disturbed by the rest "
        "of the machine, with the median and the slowest in brackets. graceful_web's cost while "
        "serving is its difference from the empty middleware."
    )
    add("")
    add(
        "| | the app alone | behind an empty middleware | behind graceful_web "
        "| graceful_web over the empty one |"
    )
    add("| --- | --- | --- | --- | --- |")
    for family, (label, _empty, _ours) in HOT_PATH_LABELS.items():
        if family not in hot_path.runs:
            continue
        cells = []
        for variant in HOT_PATH_VARIANTS:
            spread = hot_path.spread(family, variant)
            cells.append(f"{spread.low:.0f} ns ({spread.median:.0f}, {spread.high:.0f})")
        add(f"| {label} | {' | '.join(cells)} | {_signed(hot_path.extra_ns(family), 0)} ns |")
    add("")


# -- figure 7: durable jobs -----------------------------------------------------------------

DURABLE_HEADING = "## 7. Durable jobs"


def _ms(spread: Spread | None) -> str:
    return "n/a" if spread is None else f"{spread.median / 1000:.2f}"


def _durable_summary_rows(figures: DurableFigures | None) -> list[str]:
    if figures is None:
        return []
    graceful = [("graceful", "sqlite"), ("graceful", "postgres")]
    dbos = [("dbos", "sqlite"), ("dbos", "postgres")]
    arq = ("arq", "redis")
    if not all(figures.measured(row) for row in (*graceful, *dbos)):
        return []  # a row missing or failed: section 7 says which

    def pair(rows: list[tuple[str, str]], key: str, per_job: bool = False) -> str:
        values = [
            figures.per_job_us(row, key) if per_job else figures.spread(row, key) for row in rows
        ]
        if per_job:
            return " / ".join(f"{v.median:.0f}" if v else "n/a" for v in values) + " µs"
        return " / ".join(_ms(v) for v in values) + " ms"

    arq_one = f"; arq `enqueue_job` (Redis, in memory) {_ms(figures.spread(arq, 'one_us'))} ms"
    arq_burst = figures.per_job_us(arq)
    arq_each = f"; arq {arq_burst.median:.0f} µs" if arq_burst else ""
    return [
        f"| one durable job per request, recorded before the response: the request's wait "
        f"from the start call to the record (median), SQLite / PostgreSQL "
        f"| DBOS `start_workflow_async` {pair(dbos, 'one_us')}"
        f"{arq_one if figures.measured(arq) else ''} "
        f"| `spawn` + `await durable.recorded()` {pair(graceful, 'one_us')} "
        f"| no target: the peers on the same stores |",
        f"| {_num(figures.n, 0)} durable jobs from one process, until all are recorded: "
        f"per job, SQLite / PostgreSQL "
        f"| DBOS, {figures.in_flight} in flight: {pair(dbos, 'burst_s', True)}"
        f"{arq_each if figures.measured(arq) else ''} "
        f"| {_num(figures.n, 0)} spawns, one `recorded()`: {pair(graceful, 'burst_s', True)}; "
        f"as {figures.in_flight} requests at a time: {pair(graceful, 'requests_s', True)} "
        f"| no target |",
    ]


def durable_section(figures: DurableFigures) -> list[str]:
    """Section 7 of bench/results.md, lines without the trailing newline."""
    out: list[str] = []
    add = out.append
    add(f"{DURABLE_HEADING}: recorded in SQLite and PostgreSQL, beside DBOS and arq")
    add("")
    if figures.measured_alone:
        add(f"*Measured by itself* (`python -m bench durable`): {figures.measured_alone}.")
        add("")
    versions = figures.versions
    add(
        f"Versions: DBOS {versions.get('dbos', '?')}, arq {versions.get('arq', '?')} (redis-py "
        f"{versions.get('redis (client)', '?')}), asyncpg {versions.get('asyncpg', '?')}; "
        f"{versions.get('postgres', '?')}; {versions.get('redis-server', '?')}; SQLite "
        f"{versions.get('sqlite', '?')}."
    )
    add("")
    add(
        "What a job costs to record, from the process that starts it. Every row is a fresh "
        "interpreter on the server's core, the stores on the other; the rows alternate run by "
        "run and each run has a store of its own (a new SQLite file in a temporary directory "
        "on the same disk, a new PostgreSQL database). PostgreSQL and Redis are started by "
        "the bench on 127.0.0.1 and stopped by their PIDs at the end: PostgreSQL with its "
        "defaults, so each commit is flushed to disk; Redis with `--save ''` and no "
        "append-only file, so arq's jobs are held in memory only, which no other row "
        "allows itself. graceful_web writes SQLite in WAL mode with `synchronous=FULL`, DBOS "
        "with SQLite's rollback journal; both flush every commit. The job does nothing: the "
        "figures are the recording. graceful_web and DBOS run the job in the same process "
        "(DBOS starts the workflow on the caller's loop once its row is written); arq only "
        "queues it for a worker, and no worker runs."
    )
    add("")
    add(
        f"- *{_num(figures.n, 0)} jobs at once*: wall time from the first start until every "
        "job is recorded, per job, and the jobs per second that makes. graceful_web: "
        f"{_num(figures.n, 0)} `spawn` calls, then one `await durable.recorded()`: the calls "
        "of one turn of the loop share one write. DBOS and arq have no call that records "
        f"many jobs at once: {figures.in_flight} starts in flight at a time, each awaited "
        "(`DBOS.start_workflow_async` returns once the workflow's row is written, "
        "`enqueue_job` once Redis holds the job)."
    )
    add(
        f"- *as {figures.in_flight} requests*: the same number of jobs started by "
        f"{figures.in_flight} concurrent requests, each starting one job and awaiting its "
        "own record before it answers (graceful_web: `spawn` then `await "
        "durable.recorded()`, as the adapters do before the response leaves). For DBOS and "
        "arq this is the run above."
    )
    add(
        "- *one request*: one job at a time, 2 ms idle between them, "
        f"{_num(figures.samples, 0)} a run: the time from the start call until the job is "
        "recorded, which is what the job adds to the response that starts it; the median "
        "and the 90th percentile of each run. *Added* is that median minus plain `spawn`'s "
        "(not durable) in the same round."
    )
    add(
        "- *CPU*: this process's CPU time over the jobs at once, per job (the stores' own "
        "work is not in it; DBOS's includes its threads)."
    )
    add(
        "- *all ran*: for the rows that run the jobs in this process, the wall time from "
        "the first start until every job's body has run, per job."
    )
    add("")
    add(
        f"| | {_num(figures.n, 0)} jobs at once: µs per job | jobs per second "
        f"| as {figures.in_flight} requests: µs per job | one request: median, ms "
        "| one request: 90th percentile, ms | added to one request over `spawn`, ms "
        "| CPU µs per job | all ran: µs per job |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in figures.rows:
        label = DURABLE_LABELS.get(row, f"{row[0]}, {row[1]}")
        if row in figures.not_measured:
            add(f"| {label} | not measured: {figures.not_measured[row]} |||||||")
            continue
        if row in figures.failed:
            reason = figures.failed[row].splitlines()[-1].replace("|", "\\|")
            add(f"| {label} | **failed**: {reason} |||||||")
            continue
        if not figures.measured(row):
            continue
        requests = figures.per_job_us(row, "requests_s")
        ran = figures.per_job_us(row, "ran_s")
        one = figures.spread(row, "one_us")
        p90 = figures.spread(row, "one_p90_us")
        added = figures.added_us(row) if row[0] != "spawn" else None
        cpu = figures.per_job_us(row, "burst_cpu_s")
        added_cell = "the reference" if row[0] == "spawn" else _scaled(added, 1000, 3)
        add(
            f"| {label} | {med(figures.per_job_us(row), 1)} | {med(figures.per_second(row), 0)} "
            f"| {med(requests, 1) if requests else 'the run at once'} "
            f"| {_scaled(one, 1000, 3)} | {_scaled(p90, 1000, 3)} "
            f"| {added_cell} "
            f"| {med(cpu, 1)} "
            f"| {med(ran, 1) if ran else 'not run here (no worker)'} |"
        )
    add("")
    bounds = []
    for row in figures.rows:
        one = figures.spread(row, "one_us")
        if row[0] != "spawn" and one is not None and one.median > 0:
            label = DURABLE_LABELS.get(row, f"{row[0]}, {row[1]}").split(" (")[0]
            bounds.append(f"{label} {_num(1e6 / one.median, 0)}")
    if bounds:
        add(
            "One job at a time, each awaited, a loop is bounded by the one-request median: "
            f"jobs per second, {'; '.join(bounds)}. Where that is more than the jobs per "
            f"second above, {figures.in_flight} starts in flight cost the peer more than they "
            "gain (its writes wait for each other)."
        )
        add("")
    steps = [
        f"{DURABLE_LABELS.get(row, row[0]).split(',')[0]} on {row[1]} {med(step, 1)} µs"
        for row in figures.rows
        if row[0].endswith("-steps") and (step := figures.step_us(row)) is not None
    ]
    if steps:
        add(
            f"A step, recorded before the next one runs (jobs of {STEPS} steps, "
            f"{_num(figures.n, 0)} at once): its rows' *all ran* over their peer's without "
            f"steps, per step, run by run: {'; '.join(steps)}."
        )
        add("")
    runs = sorted({len(runs) for runs in figures.runs.values()})
    add(f"Runs per row: {', '.join(str(count) for count in runs) or '0'}.")
    add("")
    return out


def _scaled(spread: Spread | None, divisor: float, digits: int) -> str:
    if spread is None:
        return "n/a"
    return med(
        Spread(spread.median / divisor, spread.low / divisor, spread.high / divisor, spread.count),
        digits,
    )


def splice_section(text: str, heading: str, section: list[str]) -> str:
    """``text`` (a results file) with its section under ``heading`` replaced by ``section``, or
    with ``section`` added at its end when it has none."""
    lines = text.rstrip("\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        spliced = [*lines, "", *section]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        spliced = [*lines[:start], *section, *lines[end:]]
    return "\n".join(spliced).rstrip("\n") + "\n"


# -- figure 8: websockets and event streams at scale ------------------------------------------

LONG_LIVED_HEADING = "## 8. Websockets and event streams"
LONG_LIVED_EXIT_S = 2.0  # last one told -> exit


def _long_lived_cells(run: LongLivedRun) -> tuple[str, str, str]:
    """Websockets, feeds, times of one run, as the tables show them."""
    codes = ", ".join(
        f"{_num(count, 0)} × {code}" for code, count in sorted(run.websockets.items())
    )
    feeds = ", ".join(f"{_num(count, 0)} {how}" for how, count in sorted(run.streams.items()))
    told = "n/a" if run.signal_to_last_told_s is None else f"{run.signal_to_last_told_s:.2f} s"
    after = "n/a" if run.last_told_to_exit_s is None else f"{run.last_told_to_exit_s:.2f} s"
    return codes or "none", feeds or "none", f"{told} / {after}"


def long_lived_met(run: LongLivedRun, n: int) -> bool:
    return (
        run.polite_closes == n
        and run.streams.get("clean", 0) == n
        and run.signal_to_last_told_s is not None
        and run.signal_to_last_told_s <= LONG_LIVED_GRACE + 1
        and run.last_told_to_exit_s is not None
        and run.last_told_to_exit_s <= LONG_LIVED_EXIT_S
        and run.exit_status == 0
    )


def long_lived_summary_rows(figures: LongLivedFigures | None) -> list[str]:
    if figures is None:
        return []
    n = _num(figures.connections, 0)
    rows = []
    for server in dict.fromkeys(run.server for run in figures.runs):
        runs = {run.graceful: run for run in figures.runs if run.server == server}
        if set(runs) != {False, True}:
            continue
        bare, ours = (
            "; ".join((*_long_lived_cells(runs[graceful]), f"exit {runs[graceful].exit_status}"))
            for graceful in (False, True)
        )
        rows.append(
            f"| {n} websockets + {n} event streams open at SIGTERM, {server}: close codes; "
            f"feeds; signal → last one told / → exit | {bare} | {ours} "
            f"| every one closed (1012/1001) or ended cleanly, last told ≤ grace + 1 s, exit "
            f"≤ {LONG_LIVED_EXIT_S:.0f} s after, status 0: "
            f"{_verdict(long_lived_met(runs[True], figures.connections))} |"
        )
    return rows


def long_lived_section(figures: LongLivedFigures) -> list[str]:
    """Section 8 of bench/results.md, lines without the trailing newline."""
    n = _num(figures.connections, 0)
    out: list[str] = [f"{LONG_LIVED_HEADING}: {n} of each open in one process at SIGTERM", ""]
    add = out.append
    if figures.measured_alone:
        add(f"*Measured by itself* (`python -m bench long-lived`): {figures.measured_alone}.")
        add("")
    scaled = ""
    if figures.connections < figures.wanted:
        scaled = (
            f" ({n} of each, not {_num(figures.wanted, 0)}: the open-files hard limit of this "
            f"machine, {_num(figures.files_limit, 0)}, is what one process may hold, and only "
            "a privileged process raises it)"
        )
    add(
        f"One server process with {n} websockets (an echo handler, as each framework's docs "
        f"write one) and {n} server-sent-event feeds (an endless `text/event-stream`, one event "
        f"every few seconds) open{scaled}, opened by {figures.clients} client processes on "
        "aiohttp's client, then SIGTERM. Read from the clients: how each websocket was closed "
        "(the close code of the server's close frame; 1006 when the connection went without "
        "one), whether each feed came to its proper end (*clean*) or broke off (*cut*), the "
        "time from the signal to the last connection told (its close frame or clean end) and "
        "from then to the process's exit; the server's peak RSS from its rusage. graceful_web "
        f"runs with a {LONG_LIVED_DEADLINE:g} s deadline and `long_lived_grace` "
        f"{LONG_LIVED_GRACE:g} s; the bare servers get the same deadline of their own "
        f"(aiohttp's `run_app` `shutdown_timeout`, uvicorn `--timeout-graceful-shutdown`; "
        "without it uvicorn waits for an endless feed for ever). One run each."
    )
    add("")
    add(
        "| server | opened | websockets closed | feeds ended | signal → last one told / "
        "→ exit | signal → last one ended, told or not | signal → exit | exit status "
        "| peak RSS |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in figures.runs:
        codes, feeds, times = _long_lived_cells(run)
        ended = "n/a" if run.signal_to_last_end_s is None else f"{run.signal_to_last_end_s:.2f} s"
        add(
            f"| {run.label} | {_num(run.opened, 0)} | {codes} | {feeds} | {times} | {ended} "
            f"| {run.signal_to_exit_s:.2f} s | {run.exit_status} | {run.peak_rss_mib:.0f} MiB |"
        )
    add("")
    verdicts = [
        f"{run.server} {_verdict(long_lived_met(run, figures.connections))}"
        for run in figures.runs
        if run.graceful
    ]
    add(
        "Target with graceful_web: every websocket closed with 1012 or 1001 and every feed "
        f"ended cleanly, the last one told at most `long_lived_grace` + 1 s after the signal, "
        f"the exit at most {LONG_LIVED_EXIT_S:.0f} s after that, status 0: "
        f"{'; '.join(verdicts)}."
    )
    add("")
    return out
