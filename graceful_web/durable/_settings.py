"""The durable store's settings: ``configure()`` wins, else the environment, else the default;
each is checked with a message that says what to do."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

URL_ENV = "GRACEFUL_DURABLE_URL"
LEASE_ENV = "GRACEFUL_DURABLE_LEASE"
POLL_ENV = "GRACEFUL_DURABLE_POLL"
MAX_ATTEMPTS_ENV = "GRACEFUL_DURABLE_MAX_ATTEMPTS"
RETRY_DELAY_ENV = "GRACEFUL_DURABLE_RETRY_DELAY"
RETENTION_ENV = "GRACEFUL_DURABLE_RETENTION"

DEFAULT_URL = "sqlite:///graceful-jobs.sqlite3"


@dataclass(frozen=True)
class Settings:
    """Where durable jobs are recorded and how their owners are watched."""

    url: str = DEFAULT_URL
    #: A process's records are its own while it renews this lease (every third of it); the
    #: records of a process whose lease ran out are run again by another.
    lease: float = 30.0
    #: How often a serving process looks for records to run (handed over, or left behind).
    poll_interval: float = 1.0
    #: Failures (the job raised, or its process ended while running it) before it is dead.
    max_attempts: int = 5
    #: The wait before the first retry of a failed job; it doubles with each failure, up to
    #: a minute.
    retry_delay: float = 1.0
    #: How long a finished job (succeeded or cancelled) stays in the store, for ``status``
    #: and its idempotency key, before it is purged.
    retention: float = 86400.0


_configured: dict[str, object] = {}


def configure(
    *,
    url: str | None = None,
    lease: float | None = None,
    poll_interval: float | None = None,
    max_attempts: int | None = None,
    retry_delay: float | None = None,
    retention: float | None = None,
) -> None:
    """Set durable jobs' settings in code; what is not passed comes from the environment
    (``GRACEFUL_DURABLE_URL``, ``_LEASE``, ``_POLL``, ``_MAX_ATTEMPTS``, ``_RETRY_DELAY``,
    ``_RETENTION``).
    Call it before the server starts; a process that already opened its store keeps it."""
    given = {
        "url": url,
        "lease": lease,
        "poll_interval": poll_interval,
        "max_attempts": max_attempts,
        "retry_delay": retry_delay,
        "retention": retention,
    }
    candidate = {**_configured, **{k: v for k, v in given.items() if v is not None}}
    _check(Settings(**candidate))  # type: ignore[arg-type]
    _configured.clear()
    _configured.update(candidate)


def current_settings() -> Settings:
    settings = Settings()
    env: dict[str, object] = {}
    raw_url = os.environ.get(URL_ENV, "").strip()
    if raw_url:
        env["url"] = raw_url
    for field, name, kind in (
        ("lease", LEASE_ENV, float),
        ("poll_interval", POLL_ENV, float),
        ("max_attempts", MAX_ATTEMPTS_ENV, int),
        ("retry_delay", RETRY_DELAY_ENV, float),
        ("retention", RETENTION_ENV, float),
    ):
        raw = os.environ.get(name, "").strip()
        if raw:
            try:
                env[field] = kind(raw)
            except ValueError:
                raise ValueError(
                    f"{name}={raw!r} is not a {'whole number' if kind is int else 'number'}; "
                    f"unset it or set it to e.g. {name}={getattr(settings, field)}"
                ) from None
    settings = replace(settings, **{**env, **_configured})  # type: ignore[arg-type]
    return _check(settings)


def _check(settings: Settings) -> Settings:
    if not isinstance(settings.url, str) or not settings.url.startswith(
        ("sqlite:///", "postgresql://", "postgres://")
    ):
        raise ValueError(
            f"durable store URL {settings.url!r} is not one graceful_web knows: use "
            f"sqlite:///relative/path.sqlite3, sqlite:////absolute/path.sqlite3 or "
            f"postgresql://user:password@host:port/database (set {URL_ENV} or "
            f"graceful_web.durable.configure(url=...))"
        )
    for name in ("lease", "poll_interval", "retry_delay", "retention"):
        value = getattr(settings, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or math.isnan(value)
            or math.isinf(value)
            or value <= 0
        ):
            raise ValueError(
                f"durable {name} must be a number of seconds above zero, got {value!r}"
            )
    if settings.poll_interval > settings.lease:
        raise ValueError(
            f"durable poll_interval ({settings.poll_interval:g} s) must not be longer than the "
            f"lease ({settings.lease:g} s)"
        )
    attempts = settings.max_attempts
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(
            f"durable max_attempts must be a whole number of 1 or more, got {attempts!r}"
        )
    return settings
