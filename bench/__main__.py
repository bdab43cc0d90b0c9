"""``python -m bench`` (``make bench``): every figure, side by side, then bench/results.md
(docs/benchmarks.md shows it whole). Bounded in time: about fifteen minutes on two cores.

``BENCH_QUICK=1`` (or ``python -m bench --quick``) runs every figure once, short and small,
to check the bench itself in about two minutes; it writes bench/.out/results-quick.md
and leaves bench/results.md alone.

``python -m bench durable`` measures figure 7 (durable jobs) by itself, in about two minutes,
and writes its section into bench/results.md in place of the one there (the summary table is
left to a whole run); with ``--quick`` (or ``BENCH_QUICK=1``) once and small,
printed and written to bench/.out/durable-quick.md only.

``python -m bench long-lived`` measures figure 8 (10 000 websockets and 10 000 event streams
open in one server at SIGTERM) by itself, in about three minutes, and writes its section into
bench/results.md likewise; ``python -m bench.long_lived [N]`` prints it with N of each.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import pickle
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import durable_jobs, hot_path, in_flight, jobs, long_lived, report, stopping, throughput
from ._harness import ROOT, pin_cpus, raise_open_files

#: A B pairs per figure: enough for a median and a range, few enough for the time budget.
THROUGHPUT_ROUNDS = 5
STOP_PAIRS = 4
JOB_PAIRS = 3
IN_FLIGHT_PAIRS = 3
DURABLE_RUNS = 3

#: The throughput rows: server (and event loop), request. ``/fast`` is the worst case, the
#: library's microseconds and nothing else; ``/work`` a realistic handler (1 ms of awaited
#: work and a JSON body) on the plain server and on what production runs.
THROUGHPUT_ROWS = (
    ("aiohttp", "/fast"),
    ("aiohttp-uvloop", "/fast"),
    ("uvicorn", "/fast"),
    ("uvicorn-uvloop", "/fast"),
    ("aiohttp", "/work"),
    ("uvicorn-uvloop", "/work"),
)
ASGI_SERVERS = ("uvicorn", "uvicorn-uvloop", "hypercorn")
STOP_SERVERS = ("aiohttp", "aiohttp-uvloop", "uvicorn", "uvicorn-uvloop", "hypercorn")
IN_FLIGHT_SERVERS = ("aiohttp", "uvicorn")


@dataclass(frozen=True)
class Plan:
    """How much of each figure a run measures."""

    throughput_rounds: int = THROUGHPUT_ROUNDS
    throughput_s: int = throughput.RUN_S
    warmup_s: int = throughput.WARMUP_S
    stop_pairs: int = STOP_PAIRS
    job_pairs: int = JOB_PAIRS
    jobs: int = jobs.JOBS
    in_flight_pairs: int = IN_FLIGHT_PAIRS
    requests: int = in_flight.REQUESTS
    hot_path_calls: int = hot_path.CALLS
    durable_runs: int = DURABLE_RUNS
    durable_n: int = durable_jobs.JOBS
    durable_samples: int = durable_jobs.SAMPLES
    long_lived: int = long_lived.CONNECTIONS
    quick: bool = False


#: One round or pair of each, short loads, fewer jobs and requests: the bench checks itself.
QUICK = Plan(
    throughput_rounds=1,
    throughput_s=1,
    warmup_s=1,
    stop_pairs=1,
    job_pairs=1,
    jobs=20_000,
    in_flight_pairs=1,
    requests=2_000,
    hot_path_calls=20_000,
    durable_runs=1,
    durable_n=200,
    durable_samples=50,
    long_lived=500,
    quick=True,
)


def _say(text: str) -> None:
    print(text, flush=True)


#: The figures of the last run, so the report can be written again without measuring again
#: (``python -m bench --report``), e.g. after a change to its wording.
SAVED = ROOT / "bench" / ".out" / "results.pickle"
QUICK_RESULTS = ROOT / "bench" / ".out" / "results-quick.md"


def write_report(results: report.Results) -> None:
    if results.quick:
        QUICK_RESULTS.write_text(report.results_markdown(results))
        _say(f"quick run: wrote {QUICK_RESULTS.relative_to(ROOT)}; results.md left alone")
        return
    report.RESULTS.write_text(report.results_markdown(results))
    _say(f"wrote {report.RESULTS.relative_to(ROOT)}")


def measure_durable(plan: Plan) -> durable_jobs.DurableFigures:
    _say(
        f"7. durable jobs: {plan.durable_n} at once, {plan.durable_samples} one at a time; "
        f"{plan.durable_runs} runs of each row"
    )
    figures = durable_jobs.measure(plan.durable_runs, plan.durable_n, plan.durable_samples)
    _say(durable_jobs.show(figures))
    return figures


def measure_long_lived(plan: Plan) -> long_lived.LongLivedFigures:
    _say(
        f"8. {plan.long_lived} websockets and {plan.long_lived} event streams open at SIGTERM: "
        f"{', '.join(long_lived.SERVERS)}, bare and with graceful_web"
    )
    figures = long_lived.measure(wanted=plan.long_lived)
    _say(long_lived.show(figures))
    return figures


class _Alone(Protocol):
    measured_alone: str


def figure_alone(
    name: str,
    number: int,
    quick: bool,
    measure: Callable[[Plan], _Alone],
    section: Callable[[Any], list[str]],
    heading: str,
) -> int:
    """``python -m bench NAME``: one figure by itself, its section spliced into
    bench/results.md (the summary table is left to a whole run); quick: written apart."""
    plan = QUICK if quick else Plan()
    load_before = os.getloadavg()
    pinning = pin_cpus()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"bench {name} (quick)" if quick else f"bench {name}"
    _say(f"{title}: {pinning}; load average {load_before[0]:.2f}")
    figures = measure(plan)
    load_after = os.getloadavg()
    figures.measured_alone = (
        f"{date}, commit {report._git_commit()}; {pinning}; load average (1 min) before "
        f"{load_before[0]:.2f}, after {load_after[0]:.2f}"
    )
    lines = section(figures)
    if quick:
        out = ROOT / "bench" / ".out" / f"{name}-quick.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        _say(f"quick run: wrote {out.relative_to(ROOT)}; results.md alone")
        return 0
    text = report.RESULTS.read_text() if report.RESULTS.exists() else ""
    report.RESULTS.write_text(report.splice_section(text, heading, lines))
    _say(f"wrote section {number} of {report.RESULTS.relative_to(ROOT)}")
    return 0


def main() -> int:
    args = sys.argv[1:]
    if args == ["--report"]:
        write_report(pickle.loads(SAVED.read_bytes()))
        return 0
    quick = "--quick" in args or os.environ.get("BENCH_QUICK", "") not in ("", "0")
    if args and args[0] == "durable" and set(args[1:]) <= {"--quick"}:
        return figure_alone(
            "durable", 7, quick, measure_durable, report.durable_section, report.DURABLE_HEADING
        )
    if args and args[0] == "long-lived" and set(args[1:]) <= {"--quick"}:
        return figure_alone(
            "long-lived", 8, quick, measure_long_lived, report.long_lived_section,
            report.LONG_LIVED_HEADING,
        )  # fmt: skip
    if args and args != ["--quick"]:
        _say(
            "usage: python -m bench [--quick | --report | durable [--quick] | long-lived [--quick]]"
        )
        return 2
    plan = QUICK if quick else Plan()
    if shutil.which("wrk") is None:
        _say("make bench needs wrk, the HTTP load generator: apt-get install wrk")
        return 2
    began = time.monotonic()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    pinning = pin_cpus()
    raise_open_files(plan.requests + 1000)
    have_asgi = importlib.util.find_spec("graceful_web.asgi") is not None
    not_measured = [] if have_asgi else ["the ASGI rows (graceful_web.asgi is not there)"]
    rows = [row for row in THROUGHPUT_ROWS if have_asgi or row[0] not in ASGI_SERVERS]
    stop_servers = [name for name in STOP_SERVERS if have_asgi or name not in ASGI_SERVERS]
    flight_servers = [name for name in IN_FLIGHT_SERVERS if have_asgi or name not in ASGI_SERVERS]
    _say(f"bench{' (quick)' if quick else ''}: {pinning}; load average {load_before[0]:.2f}")

    compared = {}
    for server, path in rows:
        _say(f"1. GET {path}, {server}: {plan.throughput_rounds} rounds")
        compared[f"{server} {path}"] = comparison = throughput.compare(
            server, plan.throughput_rounds, plan.throughput_s, path, plan.warmup_s
        )
        _say(throughput.show(comparison))

    _say(f"2, 3. stopping, {', '.join(stop_servers)}: {plan.stop_pairs} pairs")
    stopped = stopping.measure(stop_servers, plan.stop_pairs)
    _say(stopping.show(stopped, stop_servers))

    _say(f"4. {plan.jobs} jobs: {plan.job_pairs} runs of each")
    job_figures = jobs.measure(plan.job_pairs, plan.jobs)
    _say(jobs.show(job_figures))

    _say(f"5. {plan.requests} requests in flight: {plan.in_flight_pairs} pairs")
    flight = in_flight.measure(plan.in_flight_pairs, tuple(flight_servers), plan.requests)
    _say(in_flight.show(flight))

    _say(f"6. the request path in process: {plan.hot_path_calls} requests a repetition")
    request_path = hot_path.measure(plan.hot_path_calls)
    _say(hot_path.show(request_path))

    durable = measure_durable(plan)
    scale = measure_long_lived(plan)

    results = report.Results(
        date=date,
        wall_s=time.monotonic() - began,
        pinning=pinning,
        load_before=load_before,
        load_after=os.getloadavg(),
        throughput=compared,
        stop_servers=stop_servers,
        stopping=stopped,
        jobs=job_figures,
        in_flight=flight,
        not_measured=not_measured,
        throughput_s=plan.throughput_s,
        warmup_s=plan.warmup_s,
        quick=quick,
        hot_path=request_path,
        durable=durable,
        long_lived=scale,
    )
    if not quick:
        SAVED.parent.mkdir(parents=True, exist_ok=True)
        SAVED.write_bytes(pickle.dumps(results))
    write_report(results)
    _say(f"bench took {results.wall_s:.0f} s; load average after {results.load_after[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
