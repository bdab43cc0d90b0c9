"""``python -m tests._long_lived_table FIGURES``: docs/long-lived.md's tables of every server
stopped with websockets, event feeds, finishing streams, long polls and jobs open, with
graceful_web and bare, from the figures ``make long-lived-table`` had
tests/servers/test_long_lived_matrix.py record (one JSON line a run; of a run made twice the
last counts).

The tables go between ``<!-- long-lived:begin -->`` and ``<!-- long-lived:end -->``; nothing
else of the page is touched. The README's table of what a restart loses sums them
(``python -m tests._restart_table``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests._reload_table import write_between_markers

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "long-lived.md"
BEGIN, END = "<!-- long-lived:begin -->", "<!-- long-lived:end -->"
HEADER = (
    "| server | loop | websockets | event feeds | finishing streams | long polls | jobs "
    "| exit | signal → exit | last job → exit |"
)
SUMMARY_HEADER = "| run | servers and loops | connections cut or never ended | jobs lost |"
#: The polite ends: what the drain asks of each kind; anything else counts as cut.
POLITE = {"websockets": {"1012", "1001"}, "feeds": {"clean"}, "finishing": {"complete"},
          "polls": {"200"}}  # fmt: skip


def ended(kind: dict[str, Any]) -> str:
    """Each way with its count, then the latest end: ``20 with 1012 by 1.1 s``, ``20 clean by
    1.2 s``, ``3 complete, 1 incomplete by 2.0 s``."""
    tally: dict[str, int] = kind["tally"]
    ways = ", ".join(f"{count} with {how}" if how.isdigit() else f"{count} {how}"
                     for how, count in sorted(tally.items()))  # fmt: skip
    latest = kind["latest"]
    return f"{ways} by {latest:.1f} s" if latest is not None else ways


def row(run: dict[str, Any]) -> str:
    exit_status = "killed" if run["exit_status"] is None else str(run["exit_status"])
    exit_after = "-" if run["exit_after"] is None else f"{run['exit_after']:.1f} s"
    last_job = run["exit_after_last_job"]
    cells = [
        run["server"],
        run["loop"],
        ended(run["websockets"]),
        ended(run["feeds"]),
        ended(run["finishing"]),
        ended(run["polls"]),
        f"{run['jobs_done']}/{run['jobs_started']}",
        exit_status,
        exit_after,
        "-" if last_job is None else f"{last_job:.2f} s",
    ]
    return "| " + " | ".join(cells) + " |"


def latest_runs(lines: list[str]) -> dict[tuple[str, str, bool], dict[str, Any]]:
    runs: dict[tuple[str, str, bool], dict[str, Any]] = {}
    for line in lines:
        if line.strip():
            run = json.loads(line)
            runs[(run["server"], run["loop"], run["graceful"])] = run
    return runs


def tables(runs: dict[tuple[str, str, bool], dict[str, Any]]) -> str:
    lines = []
    for graceful, title in ((True, "With graceful_web"), (False, "Bare")):
        chosen = [run for key, run in runs.items() if key[2] == graceful]
        if not chosen:
            continue
        lines += [f"**{title}**", "", HEADER, "| --- | --- |" + " --- |" * 4 + " ---: |" * 4]
        lines += [row(run) for run in chosen]
        lines.append("")
    return "\n".join(lines).rstrip()


def impolite(run: dict[str, Any]) -> tuple[int, int]:
    """(connections not ended the polite way, connections)."""
    total = cut = 0
    for kind, polite in POLITE.items():
        for how, count in run[kind]["tally"].items():
            total += count
            cut += 0 if how in polite else count
    return cut, total


def summary(runs: dict[tuple[str, str, bool], dict[str, Any]]) -> str:
    """One line each for with and bare, summed over the rows: the README's restart table
    reads it."""
    lines = [SUMMARY_HEADER, "| --- | ---: | ---: | ---: |"]
    for graceful, title in ((True, "with graceful_web"), (False, "bare")):
        chosen = [run for key, run in runs.items() if key[2] == graceful]
        cut = sum(impolite(run)[0] for run in chosen)
        total = sum(impolite(run)[1] for run in chosen)
        lost = sum(run["jobs_started"] - run["jobs_done"] for run in chosen)
        accepted = sum(run["jobs_started"] for run in chosen)
        lines.append(f"| {title} | {len(chosen)} | {cut} / {total} | {lost} / {accepted} |")
    return "\n".join(lines)


def main() -> int:
    runs = latest_runs(Path(sys.argv[1]).read_text().splitlines())
    text = tables(runs) + "\n\n" + summary(runs)
    print(text)
    write_between_markers(text, PAGE, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
