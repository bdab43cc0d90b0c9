"""``python -m tests._restart_table``: the README's table of what a restart loses, bare and with
graceful_web, added up from the measured tables on the docs pages.

Each figure lives on its page, written there by its own run (``make demo``, ``make test-docker``,
``make test-swarm``, ``make reload-table``, ``make long-lived-table``, ``make bench``); this
table only sums them, one row a kind of restart. It goes between
``<!-- restart-losses:begin -->`` and ``<!-- restart-losses:end -->`` of README.md. ``--check``
writes nothing and fails when the README's table is not the one the pages give.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- restart-losses:begin -->", "<!-- restart-losses:end -->"


#: One measured run: (with graceful_web, requests failed, sent, jobs lost, accepted).
Run = tuple[bool, int, int, int, int]


def losses(runs: Iterable[Run]) -> str:
    """The four cells, bare then with graceful_web, summed over the runs."""
    sums = {mode: [0, 0, 0, 0] for mode in (False, True)}
    for graceful, *figures in runs:
        sums[graceful] = [
            total + figure for total, figure in zip(sums[graceful], figures, strict=True)
        ]
    if not (sums[False][1] and sums[True][1]):
        raise SystemExit("a page no longer has the runs of both kinds: it changed shape")
    cells = []
    for failed, sent, lost, accepted in (sums[False], sums[True]):
        cells += [f"{failed} / {sent}", f"{lost} / {accepted}" if accepted else "no jobs"]
    return " | ".join(cells)


def rows(page: str, header: str) -> list[list[str]]:
    """The cells of the table on ``page`` (under docs/) whose header line starts with ``header``."""
    lines = (ROOT / "docs" / page).read_text().splitlines()
    start = next((n for n, line in enumerate(lines) if line.startswith(header)), None)
    if start is None:
        raise SystemExit(f"docs/{page} has no table headed {header!r}: the page changed shape")
    body = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        body.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return body


def ratio(cell: str) -> tuple[int, int]:
    """``2/3`` or ``9 / 7083 (…)`` → (2, 3), (9, 7083)."""
    match = re.match(r"(\d+) ?/ ?(\d+)", cell)
    assert match is not None, cell
    return int(match[1]), int(match[2])


def number(cell: str) -> int:
    """The first number of a cell: ``487 in 37 s`` → 487."""
    match = re.match(r"\d+", cell)
    assert match is not None, cell
    return int(match[0])


def answered_and_recorded(graceful: bool, requests: str, jobs: str) -> Run:
    answered, sent = ratio(requests)
    recorded, accepted = ratio(jobs)
    return graceful, sent - answered, sent, accepted - recorded, accepted


def demo() -> Iterator[Run]:
    """``make demo``'s summary as docs/demo.md shows it."""
    lines = (ROOT / "docs" / "demo.md").read_text().splitlines()
    header = [n for n, line in enumerate(lines) if line.startswith("service  graceful_web")]
    for line in itertools.takewhile(lambda line: line[:1].isalpha(), lines[header[0] + 1 :]):
        _, mode, requests, jobs = line.split()[:4]
        yield answered_and_recorded(mode == "on", requests, jobs)


def compose_stop() -> Iterator[Run]:
    for run, _, requests, jobs, *_ in rows("containers.md", "| run | service | requests answered"):
        yield answered_and_recorded(run == "with graceful_web", requests, jobs)


def swarm_update() -> Iterator[Run]:
    header = "| run | service | requests | failed | jobs accepted"
    for run, _, sent, failed, accepted, _, lost, *_ in rows("swarm.md", header):
        graceful = run == "with graceful_web"
        yield graceful, number(failed), number(sent), number(lost), number(accepted)


def reloads() -> Iterator[Run]:
    for _, *cells in rows("reloads.md", "| server, reload | with graceful_web"):
        (g_failed, g_sent), (g_lost, g_accepted), (failed, sent), (lost, accepted) = map(
            ratio, cells
        )
        yield True, g_failed, g_sent, g_lost, g_accepted
        yield False, failed, sent, lost, accepted


def long_lived() -> Iterator[Run]:
    """docs/long-lived.md's summary: a connection cut or never ended counts as a failed request."""
    for run, _, cut, lost in rows("long-lived.md", "| run | servers and loops | connections cut"):
        (failed, sent), (jobs_lost, accepted) = ratio(cut), ratio(lost)
        yield run == "with graceful_web", failed, sent, jobs_lost, accepted


def in_flight() -> Iterator[Run]:
    """Section 5 of bench/results.md (docs/benchmarks.md includes it): a cell holds every run."""
    row = re.compile(r"\| \w+ (bare|\+ graceful_web) \| ([\d, ]+) \| ([\d, ]+) \|")
    for line in (ROOT / "bench" / "results.md").read_text().splitlines():
        if cells := row.match(line):
            sent, answered = (sum(map(int, cells[n].split(","))) for n in (2, 3))
            yield cells[1] != "bare", sent - answered, sent, 0, 0


RESTARTS = [
    ("SIGTERM with 3 slow requests and 3 jobs in flight, aiohttp and uvicorn "
     "([`make demo`](docs/demo.md))", demo),
    ("`docker compose stop`, the same, aiohttp and uvicorn "
     "([containers](docs/containers.md#what-make-test-docker-measures))", compose_stop),
    ("`docker service update --force` under load, 3 replicas of aiohttp and of uvicorn "
     "([Docker Swarm](docs/swarm.md#what-make-test-swarm-measures))", swarm_update),
    ("two reloads (SIGHUP) under load, 2 workers, 6 servers and worker classes "
     "([reloads](docs/reloads.md#measured-two-reloads-under-load))", reloads),
    ("SIGTERM with websockets, event feeds, answers over SSE and long polls open (a connection "
     "cut counts as failed), every server ([long-lived connections]"
     "(docs/long-lived.md#measured-every-server-with-graceful_web-and-bare))", long_lived),
    ("SIGTERM with 10 000 slow requests in flight, aiohttp and uvicorn, 3 runs each "
     "([benchmarks](docs/benchmarks.md#the-last-run))", in_flight),
]  # fmt: skip


def table() -> str:
    lines = [
        "| a restart, as measured | bare: requests failed | jobs lost "
        "| with graceful_web: requests failed | jobs lost |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {label} | {losses(measured())} |" for label, measured in RESTARTS]
    return "\n".join(lines)


def with_table(readme: str) -> str:
    """``readme`` with the table between its markers written from the pages."""
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md has no {BEGIN} … {END} markers")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    return pattern.sub(lambda _: f"{BEGIN}\n{table()}\n{END}", readme, count=1)


def main() -> int:
    readme = README.read_text()
    written = with_table(readme)
    if "--check" in sys.argv[1:]:
        if written != readme:
            print("README.md's restart table is not what the docs pages say: make restart-table")
            return 1
        return 0
    README.write_text(written)
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
