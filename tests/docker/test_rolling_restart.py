"""A rolling restart behind nginx under load: no client sees an error, no job is lost.

nginx (docker/nginx/nginx.conf, rendered for host networking) balances two replicas of the
aiohttp demo service (compose services web-a and web-b, with a pre-stop delay). While a bounded
load of requests and jobs runs through nginx, each replica in turn is stopped with
`docker compose stop`, started again, and waited for until docker reports it healthy (its
readiness check) and nginx sends it traffic again.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.load import Kind, MixedLoad
from tests.support.polling import wait_until

from .conftest import ROOT, Compose

REPLICAS = ("web-a", "web-b")
WORKERS = 12
MAX_REQUESTS = 60_000  # bounds: the load stops by itself at either
MAX_SECONDS = 240.0
REQUEST_TIMEOUT = 30.0


def render_nginx_conf(compose: Compose) -> str:
    """docker/nginx/nginx.conf with the replicas and the listener on this test's ports."""
    text = (ROOT / "docker" / "nginx" / "nginx.conf").read_text()
    for old, new in (
        ("server web-a:8080 ", f"server 127.0.0.1:{compose.ports['web-a']} "),
        ("server web-b:8080 ", f"server 127.0.0.1:{compose.ports['web-b']} "),
        ("listen 8080;", f"listen 127.0.0.1:{compose.ports['nginx']};"),
    ):
        assert text.count(old) == 1, f"docker/nginx/nginx.conf no longer has {old!r} once"
        text = text.replace(old, new)
    return text


@dataclass(kw_only=True)
class Load(MixedLoad):
    """Requests and jobs through nginx from WORKERS threads, until stopped or a bound is hit.

    One request in ten is a job, two are slow requests, the rest are quick ones."""

    def mix(self, n: int) -> tuple[Kind, int, str | None]:
        kind = n % 10
        if kind == 0:
            return "job", 100 + (n // 10) % 8 * 100, f"job{n}"
        if kind in (1, 2):
            return "slow", 50 + n % 4 * 100, None
        return "fast", 0, None


@dataclass
class ReplicaStop:
    replica: str
    stop_seconds: float
    exit_code: int
    drain_line: str | None
    requests_while_away: int  # answered through nginx from the stop until it was back


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def records(jobs_dir: Path) -> list[str]:
    found: list[str] = []
    for replica in REPLICAS:
        path = jobs_dir / f"{replica}-jobs.log"
        if path.exists():
            found += path.read_text().splitlines()
    return found


def test_rolling_restart_behind_nginx_loses_nothing(compose: Compose, tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(compose))
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    compose = compose.with_env(NGINX_CONF=str(conf), JOBS_DIR=str(jobs_dir))
    ports = {replica: compose.ports[replica] for replica in REPLICAS}
    stops: list[ReplicaStop] = []
    log_tails: dict[str, list[str]] = {}
    compose.up(*REPLICAS, "nginx")  # nginx starts once both replicas are healthy
    load = Load(
        base_url=compose.url("nginx"),
        clients=WORKERS,
        max_requests=MAX_REQUESTS,
        max_seconds=MAX_SECONDS,
        request_timeout=REQUEST_TIMEOUT,
    )
    try:
        for replica in REPLICAS:
            compose.wait_ready(replica)
        wait_until(lambda: answers(f"{compose.url('nginx')}/fast"), 30, "nginx to answer")
        load.start()
        wait_until(
            lambda: all(load.served(port) > 0 for port in ports.values()),
            30,
            "nginx to send load to both replicas",
        )
        for replica in REPLICAS:
            before = load.count()
            stop_seconds = compose.stop(replica)
            state = compose.state(replica)
            drain_line = compose.drain_line(replica)
            if state.exit_code != 0:
                log_tails[replica] = compose.logs(replica).splitlines()[-30:]
            served_before_restart = load.served(ports[replica])
            compose.start(replica)
            compose.wait_healthy(replica)
            # Back in rotation: nginx retries a failed replica after fail_timeout.
            wait_until(
                lambda replica=replica, seen=served_before_restart: (
                    load.served(ports[replica]) > seen
                ),
                30,
                f"nginx to send load to {replica} again",
            )
            stops.append(
                ReplicaStop(
                    replica, stop_seconds, state.exit_code, drain_line, load.count() - before
                )
            )
    finally:
        load.stop()
    wait_until(
        lambda: set(load.accepted_jobs) <= set(records(jobs_dir)),
        30,
        "every accepted job to be recorded",
    )
    final_stop = compose.stop("nginx", *REPLICAS)
    final_states = {replica: compose.state(replica) for replica in REPLICAS}
    recorded = records(jobs_dir)
    lost = sorted(set(load.accepted_jobs) - set(recorded))
    duplicates = sorted(job for job, n in collections.Counter(recorded).items() if n > 1)
    compose.remove("nginx", *REPLICAS)

    total = load.count()
    seconds = load.finished - load.started
    lines = [
        "",
        f"rolling restart behind nginx: {total} requests in {seconds:.1f} s "
        f"({total / seconds:.0f}/s, {WORKERS} clients): "
        f"{load.sent['fast']} fast, {load.sent['slow']} slow, {load.sent['job']} jobs",
        f"  failed {len(load.failures)}, retried by nginx on the other replica {load.retried}",
        f"  jobs accepted {len(load.accepted_jobs)}, recorded {len(recorded)}, "
        f"lost {len(lost)}, recorded twice {len(duplicates)}",
        "  served by "
        + ", ".join(f"{replica} {load.served(port)}" for replica, port in ports.items()),
    ]
    for stop in stops:
        lines.append(
            f"  {stop.replica}: compose stop {stop.stop_seconds:.2f} s, exit {stop.exit_code}, "
            f"{stop.requests_while_away} requests answered until it was back; {stop.drain_line}"
        )
    lines.append(f"  final compose stop of nginx and both replicas {final_stop:.2f} s")
    print("\n".join(lines))
    for failure in load.failures[:20]:
        print("  failure:", failure)
    for replica, tail in log_tails.items():
        print(f"  {replica} log, last lines:", *tail, sep="\n    ")

    assert not load.hit_bound, "the load hit its bound before the rolling restart was over"
    assert total >= 1000, f"only {total} requests: not a load"
    assert load.failures == [], f"{len(load.failures)} requests failed"
    assert lost == [], f"{len(lost)} accepted jobs never recorded: {lost[:10]}"
    assert duplicates == [], f"jobs recorded twice: {duplicates[:10]}"
    assert len(load.accepted_jobs) > 0
    for stop in stops:
        assert stop.exit_code == 0, f"{stop.replica} exited {stop.exit_code}"
        assert stop.drain_line is not None and "abandoned 0" in stop.drain_line
        assert stop.requests_while_away > 0, f"no load while {stop.replica} was away"
    for replica, state in final_states.items():
        assert state.exit_code == 0, f"{replica} exited {state.exit_code} at the final stop"
