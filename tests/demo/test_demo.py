"""``make demo`` end to end: a live drain of every demo service with graceful_web and the same
traffic without it (GRACEFUL=0), the pictures and the summary that puts them side by side."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
from rich.console import Console

from demo_services import demo
from tests.support.servers import ROOT

SUMMARY_ROW = re.compile(
    r"^(?P<service>\S+)\s+(?P<mode>on|off)\s+(?P<answered>\d+)/(?P<requests>\d+)\s+(?P<recorded>\d+)/(?P<jobs>\d+)"
    r"\s+(?P<lost>\d+)\s+(?P<refused>\d+)/(?P<probes>\d+)\s+(?P<seconds>[\d.]+) s"
    r"\s+(?P<status>-?\d+)$"
)


@dataclass(frozen=True)
class DemoOutput:
    returncode: int
    text: str


@pytest.fixture(scope="module")
def demo_output() -> DemoOutput:
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)}
    for forces_a_terminal in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        env.pop(forces_a_terminal, None)
    result = subprocess.run(
        [sys.executable, "-m", "demo_services.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return DemoOutput(result.returncode, result.stdout + result.stderr)


def summary_rows(text: str) -> dict[tuple[str, str], dict[str, str]]:
    rows = {}
    for line in text.splitlines():
        match = SUMMARY_ROW.match(line.strip())
        if match:
            rows[match["service"], match["mode"]] = match.groupdict()
    return rows


def test_demo_drains_every_service_and_loses_nothing(demo_output: DemoOutput) -> None:
    assert demo_output.returncode == 0, demo_output.text
    rows = summary_rows(demo_output.text)
    # both adapters, each with graceful_web and without it, side by side
    assert sorted(rows) == [("aiohttp", "off"), ("aiohttp", "on"), ("asgi", "off"), ("asgi", "on")]
    for (_, mode), row in rows.items():
        if mode != "on":
            continue
        assert row["answered"] == row["requests"] == str(len(demo.REQUEST_MS)), row
        assert row["recorded"] == row["jobs"] == str(len(demo.JOB_MS)), row
        assert row["lost"] == "0", row
        assert int(row["refused"]) >= 1, row  # new work after the signal was turned away
        assert float(row["seconds"]) > 0
        assert row["status"] == "0"


def test_the_same_traffic_without_graceful_web_loses_the_job_that_outlives_the_requests(
    demo_output: DemoOutput,
) -> None:
    rows = summary_rows(demo_output.text)
    for service, _ in demo.SERVICES:
        row = rows[service, "off"]
        # the bare servers wait for requests in flight, then drop the longest job
        assert row["answered"] == row["requests"] == str(len(demo.REQUEST_MS)), row
        assert int(row["recorded"]) < int(row["jobs"]) == len(demo.JOB_MS), row
        assert int(row["lost"]) >= 1, row
        assert re.search(
            rf"^ {service} off: lost \d of 3 accepted jobs; exit \d+",
            demo_output.text,
            re.MULTILINE,
        ), demo_output.text


def test_demo_picture_marks_the_signal_the_exit_and_the_refusals(
    demo_output: DemoOutput,
) -> None:
    text = demo_output.text
    assert "^ SIGTERM" in text and "^ exit 0" in text
    runs = 2 * len(demo.SERVICES)  # each service with graceful_web and without
    assert len(re.findall(r"^ GET /slow \d\.\ds .*200\s*$", text, re.MULTILINE)) == 3 * runs
    recorded = len(re.findall(r"^ POST /jobs \d\.\ds .*recorded\s*$", text, re.MULTILINE))
    assert 3 * len(demo.SERVICES) <= recorded < 3 * runs
    assert re.search(r"^ POST /jobs \d\.\ds .*LOST\s*$", text, re.MULTILINE)
    assert re.search(r"^ new connection .* (\d)/\1 refused", text, re.MULTILINE)
    assert "drain finished in" in text  # the service's own log lines are shown


def test_demo_output_fits_80_columns(demo_output: DemoOutput) -> None:
    too_wide = [line for line in demo_output.text.splitlines() if len(line.rstrip()) > 80]
    assert too_wide == []


def test_demo_output_is_plain_text_when_not_a_terminal(demo_output: DemoOutput) -> None:
    assert "\x1b[" not in demo_output.text  # no colour or cursor codes in a pipe or a file


def sample_run() -> demo.Run:
    run = demo.Run("aiohttp", "demo_services.aiohttp_service", t0=100.0, pid=4321)
    run.rows = [
        demo.Row("GET /slow 0.8s", "request", 100.0, 100.8, "200", True),
        demo.Row("POST /jobs 3.3s", "job", 100.01, 103.3, "recorded", True),
        demo.Row("POST /jobs 9.9s", "job", 100.02, None, "lost", False),
    ]
    run.signal_at, run.exit_at, run.exit_code = 100.5, 103.4, 0
    run.probes = [demo.Probe("connection", 100.6, True, "refused")]
    return run


def test_terminal_picture_in_colour_fits_80_columns() -> None:
    console = Console(width=80, record=True, force_terminal=True, file=io.StringIO())
    demo.show(console, [sample_run()])
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert any("LOST" in line for line in lines)  # a lost job would stand out


def test_plain_ascii_picture_when_the_output_cannot_encode_box_characters() -> None:
    buffer = io.BytesIO()
    stream = io.TextIOWrapper(buffer, encoding="ascii")
    console = Console(width=80, file=stream)
    demo.show(console, [sample_run()])
    stream.flush()
    text = buffer.getvalue().decode("ascii")
    assert "^ SIGTERM" in text and "x" in text


def sample_pair() -> list[demo.Run]:
    on = sample_run()
    off = sample_run()
    off.graceful, off.pid, off.exit_code = False, 4322, -15
    off.rows[1] = demo.Row("POST /jobs 3.3s", "job", 100.01, None, "lost", False, "j")
    off.rows[2].job_id = "k"
    return [on, off]


def test_a_wide_terminal_draws_both_runs_side_by_side() -> None:
    console = Console(width=170, record=True, force_terminal=True, file=io.StringIO())
    demo.show(console, sample_pair())
    lines = console.export_text().splitlines()
    assert any(line.count("^ SIGTERM") == 2 for line in lines)  # one row, both timelines
    assert any("with graceful_web" in line and "without graceful_web" in line for line in lines)
    assert max(len(line.rstrip()) for line in lines) <= 170


def test_without_graceful_web_the_verdict_names_what_was_lost_and_the_signal() -> None:
    console = Console(width=80, record=True, file=io.StringIO())
    demo.show(console, sample_pair())
    text = console.export_text()
    assert "aiohttp off: lost 2 of 2 accepted jobs; exit 143 (killed by its own SIGTERM)" in text
