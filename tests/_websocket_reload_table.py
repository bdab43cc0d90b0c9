"""``python -m tests._websocket_reload_table FIGURES``: docs/reloads.md's table of websockets
through a reload, from the figures tests/reload/test_websocket_reloads.py recorded (one JSON
line per run, ``make reload-table``; lines of other tests are left out, and of a run made twice
the last counts). It goes between ``<!-- reload-websockets-table:begin -->`` and
``<!-- reload-websockets-table:end -->``; nothing else of the page is touched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests._reload_table import PAGE, write_between_markers

TEST = "websocket_reload"
BEGIN, END = "<!-- reload-websockets-table:begin -->", "<!-- reload-websockets-table:end -->"


def _count(value: int) -> str:
    return f"{value:,}".replace(",", " ")


def latest_runs(lines: list[str]) -> dict[tuple[str, bool, bool], dict[str, Any]]:
    runs: dict[tuple[str, bool, bool], dict[str, Any]] = {}
    for line in lines:
        if line.strip():
            run = json.loads(line)
            if run.get("test") == TEST:
                runs[(run["server"], run["behind_nginx"], run["graceful_web"])] = run
    return runs


def closes(run: dict[str, Any]) -> str:
    by_code = sorted(run["closes"].items(), key=lambda item: -item[1])
    return ", ".join(f"{_count(n)} × {code}" for code, n in by_code) or "none"  # noqa: RUF001


def failures(run: dict[str, Any]) -> str:
    cell = str(run["failed_reconnects"])
    if run["failed"]:
        cell += " (" + ", ".join(f"{n} {why}" for why, n in run["failed"].items()) + ")"
    return cell


def table(runs: dict[tuple[str, bool, bool], dict[str, Any]]) -> str:
    lines = [
        "| server | in front | graceful_web | closes seen by the clients | abnormal (1006) "
        "| failed reconnects | SIGHUP → workers replaced | exit status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (server, nginx, graceful), run in sorted(
        runs.items(), key=lambda item: (item[0][1], item[0][0], not item[0][2])
    ):
        name = server.split(" ", 1)
        label = f"{name[0]} `{name[1]}`" if len(name) == 2 else f"`{server}`"
        lines.append(
            f"| {label} | {'nginx' if nginx else 'none'} | {'on' if graceful else 'off'} "
            f"| {closes(run)} | {run['abnormal']} | {failures(run)} | {run['reload_s']} s "
            f"| {run['exit_status']} |"
        )
    return "\n".join(lines)


def main() -> int:
    runs = latest_runs(Path(sys.argv[1]).read_text().splitlines())
    if not runs:
        print(f"no {TEST} figures in {sys.argv[1]}", file=sys.stderr)
        return 1
    text = table(runs)
    print(text)
    write_between_markers(text, PAGE, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
