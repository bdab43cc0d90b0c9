"""make release-check: the package as it would be published, built, checked, installed and run.

1. ``python -m build``: the sdist and the wheel, into dist/.
2. ``twine check --strict`` on both; every classifier is a known one; the version in the file
   names is ``graceful_web.__version__``; the wheel holds the package and py.typed, no tests.
3. A clean virtualenv gets the wheel (not editable) with its ``aiohttp`` extra, and runs the
   aiohttp quickstart of docs/quickstart-aiohttp.md from it, outside the source tree, as a real
   server on 127.0.0.1: a POST starts a receipt job, SIGTERM, and the process must exit 0 after
   logging (with no logging configured) that the drain finished with the job done.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
QUICKSTART = ROOT / "docs" / "quickstart-aiohttp.md"


def say(message: str) -> None:
    print(f"release-check: {message}", flush=True)


def run(*command: str | Path, cwd: Path = ROOT) -> None:
    subprocess.run([str(part) for part in command], cwd=cwd, check=True)


def version() -> str:
    tree = ast.parse((ROOT / "graceful_web" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            return str(ast.literal_eval(node.value))
    raise SystemExit("graceful_web/__init__.py has no __version__")


def build_and_check() -> Path:
    shutil.rmtree(DIST, ignore_errors=True)
    run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", DIST, ".")
    files = sorted(DIST.iterdir())
    run(sys.executable, "-m", "twine", "check", "--strict", *files)
    expected = version()
    wheels = [f for f in files if f.suffix == ".whl"]
    sdists = [f for f in files if f.name.endswith(".tar.gz")]
    assert len(wheels) == 1 and len(sdists) == 1, files
    assert wheels[0].name.startswith(f"graceful_web-{expected}-"), (wheels[0].name, expected)
    assert sdists[0].name == f"graceful_web-{expected}.tar.gz", (sdists[0].name, expected)
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(wheel.read(meta_name).decode())
    assert "graceful_web/py.typed" in names and "graceful_web/__init__.py" in names, names
    assert not [n for n in names if n.startswith(("tests/", "demo_services/", "bench/"))], names
    from trove_classifiers import classifiers as known

    unknown = [c for c in metadata.get_all("Classifier") or [] if c not in known]
    assert not unknown, f"unknown classifiers: {unknown}"
    assert metadata["Version"] == expected, metadata["Version"]
    assert metadata.get_all("Project-URL"), "no project URLs"
    say(f"built and checked {', '.join(f.name for f in files)}")
    return wheels[0]


def quickstart_app() -> str:
    page = QUICKSTART.read_text()
    match = re.search(r"<!-- docs-test: app [^>]*-->\n```python\n(.*?)```", page, re.S)
    assert match, f"no app block in {QUICKSTART}"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"release-check: timed out waiting for {what}")
        time.sleep(0.05)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def install_and_run(wheel: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="graceful-release-") as tmp:
        work = Path(tmp)
        venv = work / "venv"
        run(sys.executable, "-m", "venv", venv)
        python = venv / "bin" / "python"
        run(python, "-m", "pip", "install", "--quiet", f"{wheel}[aiohttp]")
        where = subprocess.run(
            [
                python,
                "-c",
                "import graceful_web; print(graceful_web.__file__, graceful_web.__version__)",
            ],
            cwd=work,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert where[0].startswith(str(venv)), f"graceful_web imported from {where[0]}"
        assert where[1] == version(), where
        say(f"installed {wheel.name} in a clean virtualenv: {where[0]}")

        port = free_port()
        (work / "app.py").write_text(quickstart_app())
        pinned = (
            "import runpy, aiohttp.web as web\n"
            "run_app = web.run_app\n"
            "web.run_app = lambda app, **kw: run_app(app, **{**kw, 'host': '127.0.0.1', "
            f"'port': {port}}})\n"
            "runpy.run_path('app.py', run_name='__main__')\n"
        )
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        log_path = work / "server.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [python, "-c", pinned],
                cwd=work,
                env={**env, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(lambda: server.poll() is not None or listening(port), 30, "the server")
            request = urllib.request.Request(f"http://127.0.0.1:{port}/orders/42", method="POST")
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 202, response.status
            os.kill(server.pid, signal.SIGTERM)
            status = server.wait(timeout=40)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
        output = log_path.read_text(errors="replace")
        print(output, end="", flush=True)
        assert status == 0, f"exit status {status}"
        assert re.search(
            r"drain finished in \d+ ms: drained \d+ requests and 1 jobs \(0 failed\), "
            r"refused 0 jobs, abandoned 0",
            output,
        ), "no drain finished line"
        say("the quickstart, run from the installed wheel, drained its job and exited 0")


def main() -> None:
    wheel = build_and_check()
    install_and_run(wheel)


if __name__ == "__main__":
    main()
