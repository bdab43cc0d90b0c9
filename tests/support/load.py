"""Load from client threads: each sends one request after another, paced or back to back, until
the test stops it or a bound (a number of requests, a time) is reached."""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import httpx


@dataclass(kw_only=True)
class ThreadedLoad:
    """``clients`` threads, each with its own httpx client, calling ``send(client, n)`` for
    n = 0, 1, 2... (shared between them) every ``pause`` s (0: back to back)."""

    clients: int
    pause: float = 0.0
    max_requests: int | None = None
    max_seconds: float
    request_timeout: float
    name: str = "load"
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: itertools.count[int] = field(default_factory=itertools.count)
    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    hit_bound: bool = False
    started: float = 0.0
    finished: float = 0.0

    def send(self, client: httpx.Client, n: int) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.started = time.monotonic()
        for n in range(self.clients):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(self.request_timeout + 10)
        assert not any(thread.is_alive() for thread in self.threads), "load threads hang"
        self.finished = time.monotonic()

    def _work(self) -> None:
        deadline = self.started + self.max_seconds
        with httpx.Client(base_url=self.base_url, timeout=self.request_timeout) as client:
            while not self.stop_event.wait(self.pause):
                n = next(self.counter)
                if time.monotonic() > deadline or (
                    self.max_requests is not None and n >= self.max_requests
                ):
                    self.hit_bound = True
                    return
                self.send(client, n)


Kind = Literal["job", "slow", "fast"]


@dataclass(kw_only=True)
class MixedLoad(ThreadedLoad):
    """Jobs, slow and quick requests of a demo service through nginx, which names the upstream
    that answered (and the ones it tried first) in ``X-Upstream``. ``mix(n)`` says what request
    n is: its kind, its ms and, for a job, its id."""

    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    accepted_jobs: list[str] = field(default_factory=list)
    served_by: collections.Counter[str] = field(default_factory=collections.Counter)
    retried: int = 0

    def mix(self, n: int) -> tuple[Kind, int, str | None]:
        raise NotImplementedError

    def count(self) -> int:
        with self.lock:
            return sum(self.sent.values())

    def served(self, port: int) -> int:
        with self.lock:
            return self.served_by[f"127.0.0.1:{port}"]

    def send(self, client: httpx.Client, n: int) -> None:
        kind, ms, job_id = self.mix(n)
        try:
            if kind == "job":
                response = client.post("/jobs", params={"ms": ms, "id": job_id})
                ok = response.status_code == 202 and response.json().get("id") == job_id
            elif kind == "slow":
                response = client.get("/slow", params={"ms": ms})
                ok = response.status_code == 200 and response.text == f"slept {ms} ms\n"
            else:
                response = client.get("/fast")
                ok = response.status_code == 200 and response.text == "ok\n"
        except httpx.HTTPError as exc:
            with self.lock:
                self.sent["failed"] += 1
                self.failures.append(f"request {n}: {exc!r}")
            return
        upstreams = response.headers.get("X-Upstream", "")
        with self.lock:
            self.sent[kind] += 1
            # "a, b": nginx tried a first and b answered.
            self.served_by[upstreams.split(",")[-1].strip()] += 1
            self.retried += "," in upstreams
            if not ok:
                self.failures.append(
                    f"request {n} ({kind}): {response.status_code} {response.text[:80]!r}"
                )
            elif job_id is not None:
                self.accepted_jobs.append(job_id)
