"""``python -m tests._reload_table FIGURES``: docs/reloads.md's table of two reloads under load,
from the figures ``make reload-table`` had tests/reload/test_reload_matrix.py record (one JSON
line per run; lines of other tests in the same file are left out, and of a run made twice the
last counts).

The table goes between ``<!-- reload-matrix:begin -->`` and ``<!-- reload-matrix:end -->``,
and nothing else of the page is touched: its other sections are written by other hands. The
page is read right before it is written. A summary, one row a server, goes into the same page
between ``<!-- reload-summary:begin -->`` and ``<!-- reload-summary:end -->``; the README's
table of what a restart loses is written from it (``python -m tests._restart_table``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reloads.md"
BEGIN, END = "<!-- reload-matrix:begin -->", "<!-- reload-matrix:end -->"
SUMMARY_BEGIN, SUMMARY_END = "<!-- reload-summary:begin -->", "<!-- reload-summary:end -->"
TEST = "reload_matrix"
STEADY = ("fresh", "keepalive_get", "keepalive_post")
SHORT_REASONS = {"connection reset": "reset", "server disconnected": "closed unanswered"}


def failed(tally: dict[str, Any]) -> str:
    """``failed / sent``, with the reasons when any failed."""
    reasons: dict[str, int] = tally["failed"]
    count = sum(reasons.values())
    cell = f"{count} / {tally['sent']}"
    if count:
        by_count = sorted(reasons.items(), key=lambda item: -item[1])
        named = ", ".join(f"{n} {SHORT_REASONS.get(reason, reason)}" for reason, n in by_count)
        cell += f" ({named})"
    return cell


def lost(jobs: dict[str, Any]) -> str:
    cell = f"{jobs['lost']} / {jobs['accepted']}"
    at_stop = jobs["lost"] - jobs["lost_at_reloads"]
    if jobs["lost"]:
        cell += f" ({jobs['lost_at_reloads']} at the reloads, {at_stop} at the stop)"
    if jobs["done_unanswered"]:
        cell += f"; {jobs['done_unanswered']} more ran, their POST unanswered"
    return cell


def latest_runs(lines: list[str]) -> dict[tuple[str, bool], dict[str, Any]]:
    runs: dict[tuple[str, bool], dict[str, Any]] = {}
    for line in lines:
        if line.strip():
            run = json.loads(line)
            if run.get("test") == TEST:
                runs[(run["server"], run["graceful"])] = run
    return runs


def per_second(clients: int, interval: float) -> str:
    return f"{clients / interval:.0f}/s"


def setting(run: dict[str, Any]) -> str:
    """What every run did, from the figures of one of them."""
    traffic, burst = run["traffic"], run["burst"]
    fresh = per_second(traffic["fresh_clients"], traffic["fresh_interval"])
    kept_get = per_second(traffic["keepalive_get_clients"], traffic["keepalive_get_interval"])
    posts = per_second(traffic["keepalive_post_clients"], traffic["keepalive_post_interval"])
    return (
        f"Each server runs {run['workers']} workers of tests/apps/reload_app.py under a steady "
        f"load: GETs of a 5 ms handler, {fresh} each on a connection of its own and {kept_get} "
        f"over {traffic['keepalive_get_clients']} kept-alive connections, and {posts} POSTs over "
        f"{traffic['keepalive_post_clients']} kept-alive connections, each answered 202 after "
        f"starting a 1.5 s job. It is reloaded twice with its reload signal, each time with a "
        f"burst of {burst['clients']} clients opening a new connection per GET for "
        f"{burst['seconds']} s, started just before the signal; a reload is over once the old "
        f"workers are gone and the new ones answer. Then SIGTERM. graceful_web's deadline is "
        f"{run['drain_timeout']} s, the servers' own graceful timeouts {run['server_grace']} s."
    )


def table(runs: dict[tuple[str, bool], dict[str, Any]]) -> str:
    servers = list(dict.fromkeys(server for server, _ in runs))
    pythons = sorted({str(run["python"]) for run in runs.values()})
    rows = [
        (server, graceful, runs[(server, graceful)])
        for server in servers
        for graceful in (True, False)
        if (server, graceful) in runs
    ]
    lines = [
        f"Measured by `make reload-table` on Python {', '.join(pythons)}, on 127.0.0.1 of a "
        f"{rows[0][2]['cpus']}-core machine. {setting(rows[0][2])}",
        "",
        "Requests: failed / sent, of those started before the final SIGTERM, with what the "
        "client saw (*reset*: the connection was reset; *closed unanswered*: closed with no "
        "response after the request was written). Jobs: accepted (202) whose job never "
        "finished / accepted, over the whole run.",
        "",
        "| server, reload signal | | new connection GET | kept-alive GET | kept-alive POST "
        "| jobs lost |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    named: set[str] = set()
    for server, graceful, run in rows:
        name = "" if server in named else f"{server}, {run['signal']}"
        named.add(server)
        cells = [failed(run["reloads"][kind]) for kind in STEADY]
        mode = "graceful_web" if graceful else "bare"
        lines.append(f"| {name} | {mode} | {' | '.join(cells)} | {lost(run['jobs'])} |")
    lines += [
        f"\n{server} with graceful_web loses jobs at the stop: {run['known_loss_at_stop']}."
        for server, _, run in rows
        if run.get("known_loss_at_stop")
    ]
    lines += [
        "",
        "The bursts, the time each reload took (signal → old workers gone, new ones answering), "
        "and the parent's exit status after the SIGTERM:",
        "",
        "| server | | burst GETs failed / sent | reloads took | exit status |",
        "| --- | --- | --- | --- | ---: |",
    ]
    named.clear()
    for server, graceful, run in rows:
        name = "" if server in named else server
        named.add(server)
        took = " and ".join(f"{seconds:.1f} s" for seconds in run["reload_s"])
        mode = "graceful_web" if graceful else "bare"
        burst = failed(run["reloads"]["burst"])
        lines.append(f"| {name} | {mode} | {burst} | {took} | {run['exit_status']} |")
    return "\n".join(lines)


def summary(runs: dict[tuple[str, bool], dict[str, Any]]) -> str:
    """One row a server: every request of the reloads (bursts included) and the jobs."""

    def cells(run: dict[str, Any] | None) -> str:
        if run is None:
            return "not run | not run"
        tallies = run["reloads"].values()
        failures = sum(sum(tally["failed"].values()) for tally in tallies)
        sent = sum(tally["sent"] for tally in tallies)
        return f"{failures} / {sent} | {run['jobs']['lost']} / {run['jobs']['accepted']}"

    lines = [
        "| server, reload | with graceful_web: requests failed | jobs lost "
        "| bare: requests failed | jobs lost |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for server in dict.fromkeys(server for server, _ in runs):
        run = runs.get((server, True)) or runs[(server, False)]
        lines.append(
            f"| {server}, {run['signal']} | {cells(runs.get((server, True)))} "
            f"| {cells(runs.get((server, False)))} |"
        )
    return "\n".join(lines)


def write_between_markers(
    text: str, path: Path = PAGE, begin: str = BEGIN, end: str = END
) -> bool:
    page = path.read_text()  # right before writing: others edit the page's other sections
    if begin not in page or end not in page:
        print(f"{path} has no {begin} … {end} markers: left alone", file=sys.stderr)
        return False
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    path.write_text(pattern.sub(lambda _: f"{begin}\n{text}\n{end}", page, count=1))
    return True


def main() -> int:
    runs = latest_runs(Path(sys.argv[1]).read_text().splitlines())
    if not runs:
        print(f"no {TEST} figures in {sys.argv[1]}", file=sys.stderr)
        return 1
    text = table(runs)
    print(text)
    write_between_markers(text)
    short = summary(runs)
    print(short)
    write_between_markers(short, PAGE, SUMMARY_BEGIN, SUMMARY_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
