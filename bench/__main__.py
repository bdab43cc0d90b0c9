"""``python -m bench`` (``make bench``): every figure, side by side, then bench/results.md and
the table in README.md. Bounded in time: a few minutes on two cores."""

from __future__ import annotations

import datetime
import importlib.util
import os
import pickle
import shutil
import sys
import time

from . import in_flight, jobs, report, stopping, throughput
from ._harness import ROOT, pin_cpus, raise_open_files

#: A B pairs per figure: enough for a median and a range, few enough for the time budget.
THROUGHPUT_ROUNDS = 5
STOP_PAIRS = 4
JOB_PAIRS = 3
IN_FLIGHT_PAIRS = 3


def _say(text: str) -> None:
    print(text, flush=True)


#: The figures of the last run, so the report can be written again without measuring again
#: (``python -m bench --report``), e.g. after a change to its wording.
SAVED = ROOT / "bench" / ".out" / "results.pickle"


def write_report(results: report.Results) -> None:
    report.RESULTS.write_text(report.results_markdown(results))
    _say(f"wrote {report.RESULTS.relative_to(ROOT)}")
    if report.update_readme(report.summary_table(results)):
        _say("updated the table in README.md")
    else:
        _say("README.md has no bench markers: its table was left alone")


def main() -> int:
    if sys.argv[1:] == ["--report"]:
        write_report(pickle.loads(SAVED.read_bytes()))
        return 0
    if shutil.which("wrk") is None:
        _say("make bench needs wrk, the HTTP load generator: apt-get install wrk")
        return 2
    began = time.monotonic()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    pinning = pin_cpus()
    raise_open_files(in_flight.REQUESTS + 1000)
    have_asgi = importlib.util.find_spec("graceful_web.asgi") is not None
    not_measured = [] if have_asgi else ["the ASGI rows (graceful_web.asgi is not there)"]
    http_servers = ["aiohttp", "uvicorn"] if have_asgi else ["aiohttp"]
    stop_servers = ["aiohttp", "uvicorn", "hypercorn"] if have_asgi else ["aiohttp"]
    _say(f"bench: {pinning}")

    compared = {}
    for server in http_servers:
        _say(f"1. GET /fast, {server}: {THROUGHPUT_ROUNDS} rounds")
        compared[server] = throughput.compare(server, THROUGHPUT_ROUNDS)
        _say(throughput.show(compared[server]))

    _say(f"2, 3. stopping, {', '.join(stop_servers)}: {STOP_PAIRS} pairs")
    stopped = stopping.measure(stop_servers, STOP_PAIRS)
    _say(stopping.show(stopped, stop_servers))

    _say(f"4. {jobs.JOBS} jobs: {JOB_PAIRS} pairs")
    job_figures = jobs.measure(JOB_PAIRS)
    _say(jobs.show(job_figures))

    _say(f"5. {in_flight.REQUESTS} requests in flight: {IN_FLIGHT_PAIRS} pairs")
    flight = in_flight.measure(IN_FLIGHT_PAIRS, tuple(http_servers))
    _say(in_flight.show(flight))

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
    )
    SAVED.parent.mkdir(parents=True, exist_ok=True)
    SAVED.write_bytes(pickle.dumps(results))
    write_report(results)
    _say(f"bench took {results.wall_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
