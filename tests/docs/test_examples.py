"""Every code block of README.md and docs/ is run or checked, so the documentation cannot rot.

What each kind of block gets (the convention is also described in docs/development.md):

- ``python``: run in a fresh interpreter; it must exit 0.
- ``python`` after ``<!-- docs-test: app request="POST /orders/42" -->``: saved as app.py and
  served as a real process on 127.0.0.1 (``python app.py`` when it has a ``__main__`` block,
  ``uvicorn app:app`` otherwise), unless a ``commands`` block serves it. The request is sent,
  then SIGTERM; the process must exit 0 after logging that the drain finished, abandoning
  nothing. No example configures logging: the lines must be visible by default.
- ``python`` after ``<!-- docs-test: signal SIGINT -->``: run, signalled once it printed its
  first line; its exit status and printed lines must be those of the ``text`` block after it.
- ``bash`` after ``<!-- docs-test: commands [from=PAGE] request="..." -->``: each line is a
  server command for the app block of PAGE (or the last one above it), served as above.
- ``bash``: ``bash -n``, and every command must be known: extras, make targets, modules,
  compose services named must exist, curl may only reach localhost.
- ``yaml``, ``json``: parsed. ``mermaid``: a diagram. ``nginx``, ``ini``
  (systemd units, run by tests/docker/test_systemd_units.py): a snippet include that exists.
- ``text`` or no language: output; each graceful_web log line in it must have the shape of a
  line the library logs.

Ports are rewritten to free ones and 0.0.0.0 to 127.0.0.1; every process is stopped by PID.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests import _restart_table
from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.processes import spawn, stop
from tests.support.servers import ROOT

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
MARKER = re.compile(r"^\s*<!-- docs-test: (?P<kind>[\w-]+)(?P<params>.*?) -->\s*$")
PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|(\S+))')
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::(?P<start>\d+):(?P<end>\d*))?"\s*$')

#: The shape of every line graceful_web logs that the pages show.
LOG_SHAPES = [
    re.compile(p)
    for p in (
        r"drain started \(\w+\): \d+ requests and \d+ jobs in flight, deadline in [\d.]+ s",
        r"draining: \d+ requests and \d+ jobs left, oldest (request|job) '[^']+' \([\d.]+ s\), "
        r"[\d.]+ s to the deadline",
        r"drain finished in \d+ ms: drained \d+ requests and \d+ jobs \(\d+ failed\), "
        r"refused \d+ jobs, (handed over \d+, )?(undelivered \d+, )?abandoned \d+",
        r"undelivered request '[^']+' after [\d.]+ s: its connection closed under the response",
        r"handed over job '[^']+' after [\d.]+ s: its record stays for the next process",
        r"\d+ durable jobs wait in the store for a function this process does not have, '[^']+': "
        r"register it \(@durable.job\(name='[^']+'\)\) where it now lives, or they wait for a "
        r"process that has it",
        r"abandoned (request|job) '[^']+' after [\d.]+ s",
        r"hard exit with status 70: protected work did not stop [\d.]+ s after the deadline "
        r"\(.+\)",
        r"this process listens on .+ with SO_REUSEPORT while net\.ipv4\.tcp_migrate_req is 0: "
        r".+",
        r"this hypercorn worker replaces one stopped by a reload: .+",
        r"the server sent no lifespan: graceful_web started with the first request, and holds "
        r"the server's stop until the drain is over",
    )
]
LOGGED = re.compile(r"graceful_web: (?P<message>.*)$")
DIAGRAMS = ("sequenceDiagram", "flowchart", "graph", "stateDiagram", "classDiagram")
KNOWN_COMMANDS = {
    "pip", "make", "python", "python3", ".venv/bin/python", "docker", "curl", "cat",
    "uvicorn", "hypercorn", "granian", "gunicorn", "daphne",
    "echo", "sleep", "kill", "wait", "cd", "ls", "export", "tail", "head", "grep", "seq", "true",
}  # fmt: skip
#: A line of a loop or a condition is not a command of its own: its body is checked.
SHELL_WORDS = {"for", "while", "until", "if", "then", "else", "elif", "fi", "do", "done", "{", "}"}
SERVERS = {"uvicorn", "hypercorn", "granian", "gunicorn"}
START_TIMEOUT = 20.0


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    kind: str = ""
    params: dict[str, str] = field(default_factory=dict)
    positional: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}:{self.lang or 'text'}"


def parse(page: Path, text: str | None = None) -> list[Block]:
    """The fenced blocks of a page, with the docs-test marker just above each, and the blocks of
    the files it includes with a snippet line."""
    lines = (page.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    n = 0
    while n < len(lines):
        fence = FENCE.match(lines[n])
        snippet = SNIPPET.match(lines[n])
        if snippet:
            blocks.extend(parse(ROOT / snippet["path"], included(snippet)))
        if not fence:
            n += 1
            continue
        end = n + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        indent = len(fence["indent"])
        code = "\n".join(line[indent:] for line in lines[n + 1 : end]) + "\n"
        block = Block(page, n + 1, fence["lang"], code)
        above = next((line for line in reversed(lines[:n]) if line.strip()), "")
        if marker := MARKER.match(above):
            block.kind = marker["kind"]
            rest = marker["params"]
            block.params = {m[1]: m[2] or m[3] for m in PARAM.finditer(rest)}
            block.positional = PARAM.sub("", rest).split()
        blocks.append(block)
        n = end + 1
    return blocks


def included(snippet: re.Match[str]) -> str:
    path = ROOT / snippet["path"]
    assert path.is_file(), f"snippet include of a missing file: {snippet['path']}"
    lines = path.read_text().splitlines()
    start = int(snippet["start"] or 1)
    end = int(snippet["end"]) if snippet["end"] else len(lines)
    return "\n".join(lines[start - 1 : end])


BLOCKS = [block for page in PAGES for block in parse(page)]


def test_the_pages_have_blocks_of_every_kind_the_convention_names() -> None:
    kinds = {(block.lang, block.kind) for block in BLOCKS}
    for expected in [("python", ""), ("python", "app"), ("python", "signal"), ("bash", ""),
                     ("bash", "commands"), ("text", ""), ("mermaid", "")]:  # fmt: skip
        assert expected in kinds, expected
    assert all(block.kind in ("", "app", "signal", "commands") for block in BLOCKS)


def test_the_readmes_links_lead_to_files_that_exist() -> None:
    """mkdocs checks the links of docs/ in strict mode; the README's are checked here."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into the docs"
    assert [t for t in local if not (ROOT / t).exists()] == []


def test_the_readmes_restart_table_adds_up_the_figures_of_the_docs() -> None:
    """Each figure lives on its docs page; after changing one, `make restart-table`."""
    readme = (ROOT / "README.md").read_text()
    assert _restart_table.with_table(readme) == readme


# -- rewriting for this machine ------------------------------------------------------------


def localise(code: str, port: int) -> str:
    """Listen on a free port of 127.0.0.1 instead of the ports and addresses the pages show."""
    code = code.replace("0.0.0.0", "127.0.0.1")
    return re.sub(r"\b(8000|8080|9100)\b", str(port), code)


def run_app_pinned(port: int) -> list[str]:
    """``python app.py``, with aiohttp's run_app held to 127.0.0.1 and the free port."""
    return [
        sys.executable,
        "-c",
        "import runpy, aiohttp.web as web\n"
        "run_app = web.run_app\n"
        f"web.run_app = lambda app, **kw: run_app(app, **{{**kw, 'host': '127.0.0.1', "
        f"'port': {port}}})\n"
        "runpy.run_path('app.py', run_name='__main__')",
    ]


def server_command(line: str, port: int) -> list[str]:
    words = shlex.split(line)
    if words == ["python", "app.py"]:
        return run_app_pinned(port)
    name = words[0]
    assert name in SERVERS, f"not a server command: {line}"
    if re.search(r"\b8000\b", line):
        words = shlex.split(localise(line, port))
    elif name in ("uvicorn", "granian"):
        words += ["--port", str(port)]
    else:
        words += ["--bind", f"127.0.0.1:{port}"]
    return [sys.executable, "-m", *words]


# -- serving an app ------------------------------------------------------------------------


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def serve_and_drain(app_code: str, command_line: str, request: str, tmp_path: Path) -> str:
    """Serve the app with the command, send the request, SIGTERM, check the drain: the output."""
    port = free_port()
    (tmp_path / "app.py").write_text(localise(app_code, port))
    log_path = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "PYTHONUNBUFFERED": "1"}
    proc = spawn(server_command(command_line, port), log_path, cwd=tmp_path, env=env)
    try:
        wait_until(lambda: proc.poll() is not None or listening(port), START_TIMEOUT, "listening")
        if workers := re.search(r"--workers (\d+)", command_line):
            # Every worker up first: one still starting would end on the signal, not drain.
            def started() -> bool:
                return log_path.read_text().count("startup complete") >= int(workers[1])

            wait_until(started, START_TIMEOUT, "every worker")
        assert proc.poll() is None, log_path.read_text()
        method, path = request.split(" ", 1)
        response = httpx.request(method, f"http://127.0.0.1:{port}{path}", timeout=10)
        assert response.is_success, (response.status_code, response.text)
        os.kill(proc.pid, signal.SIGTERM)
        status = proc.wait(timeout=30)
    finally:
        stop(proc)
    output = log_path.read_text(errors="replace")
    assert status == 0, output
    # No example configures logging: the drain must be in the server's output all the same.
    assert "graceful_web: drain started (SIGTERM)" in output, output
    assert re.search(r"graceful_web: drain finished in \d+ ms: .* abandoned 0$", output, re.M)
    assert_log_shapes(output)
    return output


def assert_log_shapes(text: str) -> None:
    for line in text.splitlines():
        logged = LOGGED.search(line)
        if logged and not line.lstrip().startswith("{"):
            message = logged["message"]
            assert any(shape.fullmatch(message) for shape in LOG_SHAPES), line


def app_block_for(commands: Block) -> Block:
    if "from" in commands.params:
        page = DOCS / commands.params["from"]
        return next(b for b in BLOCKS if b.page == page and b.kind == "app")
    above = [b for b in BLOCKS if b.page == commands.page and b.line < commands.line]
    return next(b for b in reversed(above) if b.kind == "app")


def served() -> list[tuple[str, str, str, str]]:
    """(id, app code, command, request) for every app block and command line; a command shown
    on several pages for the same app is served once."""
    runs: dict[tuple[str, str], tuple[str, str, str, str]] = {}
    used: set[int] = set()
    for block in BLOCKS:
        if block.kind == "commands":
            app = app_block_for(block)
            used.add(id(app))
            for line in filter(None, map(str.strip, block.code.splitlines())):
                run = (f"{block.id}:{line}", app.code, line, block.params["request"])
                runs.setdefault((app.code, line), run)
    for block in BLOCKS:
        if block.kind == "app" and id(block) not in used:
            line = "python app.py" if "__main__" in block.code else "uvicorn app:app"
            run = (block.id, block.code, line, block.params["request"])
            runs.setdefault((block.code, line), run)
    return list(runs.values())


SERVED = served()


@pytest.mark.parametrize(
    ("app_code", "command", "request_line"),
    [run[1:] for run in SERVED],
    ids=[run[0] for run in SERVED],
)
def test_served_examples_drain_and_log_it(
    app_code: str, command: str, request_line: str, tmp_path: Path
) -> None:
    serve_and_drain(app_code, command, request_line, tmp_path)


# -- every other block -----------------------------------------------------------------------

PLAIN = [b for b in BLOCKS if b.kind not in ("app", "commands")]


@pytest.mark.parametrize("block", PLAIN, ids=[b.id for b in PLAIN])
def test_block(block: Block, tmp_path: Path) -> None:
    check = CHECKS.get(block.lang)
    assert check is not None, f"{block.id}: no check for ```{block.lang} blocks"
    check(block, tmp_path)


def check_python(block: Block, tmp_path: Path) -> None:
    if block.kind == "signal":
        check_signalled(block, tmp_path)
        return
    port = free_port()
    (tmp_path / "app.py").write_text(localise(block.code, port))
    result = subprocess.run(
        run_app_pinned(port),  # should an example serve, it serves on 127.0.0.1 only
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def check_signalled(block: Block, tmp_path: Path) -> None:
    sig = signal.Signals[block.positional[0]]
    shown = next(b for b in BLOCKS if b.page == block.page and b.line > block.line)
    assert shown.lang == "text", f"{block.id}: a signal example is followed by its output"
    lines = shown.code.splitlines()
    status = int(lines[lines.index("$ echo $?") + 1])
    printed = sorted(
        line.removeprefix("^C")
        for line in lines
        if not line.startswith("$")
        and line != str(status)
        and "graceful_web:" not in line
        and line.removeprefix("^C")
    )
    script = tmp_path / "example.py"
    script.write_text(block.code)
    log_path = tmp_path / "example.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = spawn([sys.executable, str(script)], log_path, cwd=tmp_path, env=env)
    try:
        first = next(line for line in lines if not line.startswith("$"))
        wait_until(lambda: first in log_path.read_text(), START_TIMEOUT, repr(first))
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=40) == status
    finally:
        stop(proc)
    output = log_path.read_text().splitlines()
    assert sorted(line for line in output if "graceful_web:" not in line) == printed
    assert any(f"drain started ({sig.name})" in line for line in output), output
    assert_log_shapes("\n".join(output))


def check_bash(block: Block, tmp_path: Path) -> None:
    result = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for line in block.code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True  # words as the shell splits them; comments dropped
        command: list[str] = []
        for word in [*lexer, ";"]:
            if word in ("&&", "||", ";", "&", "|"):
                if command:
                    check_command(command, block)
                command = []
            else:
                command.append(word)


def check_command(words: list[str], block: Block) -> None:
    while words and (
        re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0], re.S) or words[0] in SHELL_WORDS
    ):
        words = words[1:]  # VAR=value before the command, or the keyword of a loop
    if not words or words[0] == "in" or (len(words) > 1 and words[1] == "in"):
        return  # a keyword alone, or the list a for loop runs over
    name = words[0]
    assert name in KNOWN_COMMANDS, f"{block.id}: unknown command {' '.join(words)!r}"
    if name == "pip":
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        for word in words[2:]:
            if extras := re.fullmatch(r"graceful-web\[([\w,-]+)\]", word):
                for extra in extras[1].split(","):
                    assert extra in project["optional-dependencies"], f"{block.id}: [{extra}]"
    elif name == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
        for word in words[1:]:
            assert word in targets, f"{block.id}: make {word}"
    elif "python" in name and "-m" in words:
        module = words[words.index("-m") + 1]
        sys.path.insert(0, str(ROOT))
        try:
            assert importlib.util.find_spec(module) is not None, f"{block.id}: {module}"
        finally:
            sys.path.remove(str(ROOT))
    elif name == "curl":
        urls = [w for w in words[1:] if re.match(r"(\w+://)?[\w.-]+(:\d+)?/", w)]
        assert urls and all(re.match(r"(https?://)?(localhost|127\.0\.0\.1)[:/]", u) for u in urls)
    elif name == "docker" and words[1:2] == ["compose"]:
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        profiles = {p for s in compose["services"].values() for p in s.get("profiles", [])}
        for before, word in itertools.pairwise(words):
            if before == "--profile":
                assert word in profiles, f"{block.id}: profile {word}"
            if before in ("stop", "start") and not word.startswith("-"):
                assert word in compose["services"], f"{block.id}: service {word}"
    elif name == "cat":
        assert all(not w.startswith("/") for w in words[1:]), "only files of the project"


def check_text(block: Block, tmp_path: Path) -> None:
    assert block.code.strip(), f"{block.id}: empty"
    assert_log_shapes(block.code)


def check_yaml(block: Block, tmp_path: Path) -> None:
    assert [doc for doc in yaml.safe_load_all(block.code) if doc], block.id


def check_json(block: Block, tmp_path: Path) -> None:
    json.loads(block.code)


def check_mermaid(block: Block, tmp_path: Path) -> None:
    assert block.code.split(None, 1)[0] in DIAGRAMS, block.id


def check_included(block: Block, tmp_path: Path) -> None:
    snippet = SNIPPET.match(block.code.strip())
    assert snippet is not None, f"{block.id}: only an included file is expected here"
    assert included(snippet).strip()


CHECKS = {
    "python": check_python,
    "bash": check_bash,
    "text": check_text,
    "": check_text,
    "yaml": check_yaml,
    "json": check_json,
    "mermaid": check_mermaid,
    "nginx": check_included,
    "ini": check_included,
}


def test_a_line_of_another_shape_is_caught() -> None:
    """The shapes are the library's own (every served example's real drain lines must match
    them); a line the library does not log is not taken for one."""
    assert_log_shapes("INFO:     graceful_web: drain started (SIGTERM): 1 requests and 0 jobs in "
                      "flight, deadline in 25.0 s")  # fmt: skip
    with pytest.raises(AssertionError):
        assert_log_shapes("INFO:     graceful_web: drain began (SIGTERM)")


def test_the_served_examples_stay_few() -> None:
    """Each served example costs a real server start and drain: keep the suite small."""
    assert len(SERVED) <= 20, [run[0] for run in SERVED]
