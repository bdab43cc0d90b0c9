"""``python -m tests._matrix_table FIGURES``: the server and loop table of docs/servers/index.md,
from the figures ``make matrix`` had tests/servers/test_servers_and_loops.py record (one JSON line
a row)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "servers" / "index.md"
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"


def table(rows: list[dict[str, object]]) -> str:
    pythons = sorted({str(row["python"]) for row in rows})
    lines = [
        f"Measured by `make matrix` on Python {', '.join(pythons)}: a slow request (2 s) and "
        "protected jobs (2.5 s) in flight, then SIGTERM. Every row: full response, every job "
        "recorded, exit status 0.",
        "",
        "| server | event loop | signal → new connections refused | signal → exit |",
        "| --- | --- | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['server']} | {row['loop']} | {float(str(row['refused_ms'])):.0f} ms "
            f"| {float(str(row['exit_s'])):.1f} s |"
        )
    lines += [
        "",
        "Multi-process rows: the parent holds the listening socket until its workers have exited. "
        "uvicorn looks at its stop flag every 100 ms and aiohttp's gunicorn worker once a second, "
        "in their own loops.",
    ]
    return "\n".join(lines)


def main() -> int:
    rows = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line]
    text = table(rows)
    print(text)
    page = PAGE.read_text()
    if BEGIN not in page or END not in page:
        print(f"{PAGE} has no {BEGIN} … {END} markers: left alone", file=sys.stderr)
        return 0
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    PAGE.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", page))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
