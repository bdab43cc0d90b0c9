"""The Docker engine the docker and swarm tests need: there, or the test fails saying what to
run."""

from __future__ import annotations

import subprocess

import pytest


def require_docker_engine(target: str = "test-docker") -> None:
    """Fail, saying to run ``make <target>``, unless a Docker engine answers."""
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.fail(f"no docker command: run these tests through `make {target}`")
    if info.returncode != 0:
        pytest.fail(f"no Docker engine answers: run `make {target}`\n{info.stderr}")
